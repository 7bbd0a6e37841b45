"""The memory guard honours process limits (issue 25.5): the smallest of MemAvailable, the cgroup
limit (v1 and v2) and RLIMIT_AS / RLIMIT_DATA; H1 under RLIMIT_AS refuses with one line instead of
crashing inside giotto-ph."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lightning_topo.topology import _memory

# ----------------------------------------------------------------------------- cgroup files


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_minus_usage_and_page_cache(tmp_path):
    (tmp_path / "proc").write_text("0::/job/task\n")
    root = tmp_path / "cg"
    _write(root / "job" / "task" / "memory.max", "max\n")  # no limit on the process's own group
    _write(root / "job" / "task" / "memory.current", "100\n")
    _write(root / "job" / "memory.max", str(8 << 30) + "\n")  # the parent's limit applies
    _write(root / "job" / "memory.current", str(3 << 30) + "\n")
    _write(root / "job" / "memory.stat", f"anon 5\ninactive_file {1 << 30}\n")
    got = _memory.cgroup_available_bytes(str(tmp_path / "proc"), str(root))
    assert got == (8 << 30) - (3 << 30) + (1 << 30)


def test_cgroup_v1_memory_controller(tmp_path):
    (tmp_path / "proc").write_text("5:devices:/\n4:memory:/pod/ctr\n0::/\n")
    root = tmp_path / "cg"
    _write(root / "memory" / "pod" / "ctr" / "memory.limit_in_bytes", str(2 << 30))
    _write(root / "memory" / "pod" / "ctr" / "memory.usage_in_bytes", str(1 << 30))
    _write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712")  # v1's "no limit"
    _write(root / "memory" / "memory.usage_in_bytes", str(5 << 30))
    assert _memory.cgroup_available_bytes(str(tmp_path / "proc"), str(root)) == 1 << 30


def test_cgroup_without_limits_is_none(tmp_path):
    (tmp_path / "proc").write_text("0::/\n")
    root = tmp_path / "cg"
    _write(root / "memory.max", "max\n")
    assert _memory.cgroup_available_bytes(str(tmp_path / "proc"), str(root)) is None
    assert _memory.cgroup_available_bytes(str(tmp_path / "missing"), str(root)) is None


def test_available_is_the_smallest_source(monkeypatch):
    monkeypatch.setattr(_memory, "meminfo_available_bytes", lambda: 20 << 30)
    monkeypatch.setattr(_memory, "cgroup_available_bytes", lambda: 6 << 30)
    monkeypatch.setattr(_memory, "rlimit_available_bytes", lambda: 9 << 30)
    assert _memory.available_bytes(torch.device("cpu")) == 6 << 30
    monkeypatch.setattr(_memory, "rlimit_available_bytes", lambda: 1 << 30)
    assert _memory.available_bytes(torch.device("cpu")) == 1 << 30
    monkeypatch.setattr(_memory, "cgroup_available_bytes", lambda: None)
    monkeypatch.setattr(_memory, "rlimit_available_bytes", lambda: None)
    assert _memory.available_bytes(torch.device("cpu")) == 20 << 30


# ----------------------------------------------------------------------------- RLIMIT in a child

CHILD = """
import resource, sys
import numpy as np
import torch
from lightning_topo.topology import _memory, persistence_diagrams

n, d, budget = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
which = getattr(resource, sys.argv[4])
used = _memory._status_bytes("VmSize" if sys.argv[4] == "RLIMIT_AS" else "VmData")
resource.setrlimit(which, (used + budget, resource.RLIM_INFINITY))
seen = _memory.available_bytes(torch.device("cpu"))
assert seen is not None and seen <= budget + (64 << 20), (seen, budget)
points = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
try:
    diagrams = persistence_diagrams(points, max_dim=1)
except MemoryError as err:
    print("REFUSED:", " ".join(str(err).split()), flush=True)
    # control: the limit is live, so without the refusal the work could not have run
    try:
        np.ones(budget + (512 << 20), dtype=np.uint8)
        print("CONTROL: allocation above the limit succeeded", flush=True)
    except MemoryError:
        print("CONTROL: allocation above the limit failed", flush=True)
    raise SystemExit(3)
print("COMPUTED:", [tuple(x.shape) for x in diagrams], flush=True)
"""


def _child(n: int, d: int, budget: int, limit: str = "RLIMIT_AS") -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(n), str(d), str(budget), limit],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.mark.parametrize(
    ("n", "d", "budget", "limit"),
    [
        (20_000, 768, 8 << 30, "RLIMIT_AS"),  # the case: segfaulted with exit 139
        (8_192, 768, 1 << 30, "RLIMIT_AS"),  # the case: raw allocator errors or a hang
        (8_192, 64, 1 << 30, "RLIMIT_DATA"),
    ],
    ids=["20000-points-8GB-AS", "8192-points-1GB-AS", "8192-points-1GB-DATA"],
)
def test_h1_under_a_process_limit_refuses_with_one_line(n, d, budget, limit):
    proc = _child(n, d, budget, limit)
    assert proc.returncode == 3, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    lines = proc.stdout.splitlines()
    refused = [line for line in lines if line.startswith("REFUSED:")]
    assert len(refused) == 1, proc.stdout
    assert (
        f"H1 persistence (distance matrix, float32 copy and giotto-ph's working memory) of {n} points"
        in refused[0]
    )
    assert "Use fewer points" in refused[0] and "max_points_per_class" in refused[0]
    assert "CONTROL: allocation above the limit failed" in lines, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_h1_of_a_small_cloud_still_runs_under_the_limit():
    proc = _child(300, 32, 1 << 30)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "COMPUTED:" in proc.stdout
