"""Peak memory of giotto-ph's H1 (``ripser_parallel(maxdim=1, metric="precomputed")``) as the
number of points grows, to size the memory guard of ``lightning_topo.topology`` (issue 25.5).

Each size runs in a fresh subprocess: the child builds the float32 ``(n, n)`` matrix of squared
distances of ``n`` Gaussian points in R^d (what the engine hands to giotto-ph), records its peak
RSS and peak virtual size (``VmHWM``/``VmPeak`` of /proc/self/status), calls giotto-ph with one
thread, and records them again. The table gives giotto-ph's own extra memory per matrix entry
(bytes / n^2), resident and virtual. Prints a table and writes
benchmarks/results/giotto_memory.json.

    nice -n 10 .venv/bin/python benchmarks/giotto_memory.py --sizes 500 1000 2000 4000 --dims 768 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
import numpy as np
n, d, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmPeak", "VmRSS", "VmSize"):
            out[key] = int(value.split()[0]) * 1024
    return out

from gph import ripser_parallel
rng = np.random.default_rng(seed)
x = rng.standard_normal((n, d)).astype(np.float32)
sq = (x * x).sum(1)
m = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0).astype(np.float32)
np.fill_diagonal(m, 0.0)
m = np.ascontiguousarray(m)
del x
before = status()
t = time.perf_counter()
result = ripser_parallel(m, maxdim=1, metric="precomputed", n_threads=1)
seconds = time.perf_counter() - t
after = status()
print(json.dumps({"before": before, "after": after, "seconds": seconds, "h1_pairs": len(result["dgms"][1])}))
"""


def measure(n: int, d: int, seed: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), str(d), str(seed)], capture_output=True, text=True, check=True
    )
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    b, a = raw["before"], raw["after"]
    entries = float(n) * n
    return {
        "n": n,
        "d": d,
        "seed": seed,
        "seconds": raw["seconds"],
        "h1_pairs": raw["h1_pairs"],
        "matrix_bytes": 4 * entries,
        "rss_before": b["VmRSS"],
        "peak_rss_extra": a["VmHWM"] - b["VmRSS"],
        "peak_virtual_extra": a["VmPeak"] - b["VmSize"],
        "rss_extra_per_entry": (a["VmHWM"] - b["VmRSS"]) / entries,
        "virtual_extra_per_entry": (a["VmPeak"] - b["VmSize"]) / entries,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    parser.add_argument("--dims", type=int, nargs="+", default=[768, 32])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "giotto_memory.json"))
    args = parser.parse_args()
    rows = []
    print(f"{'d':>5} {'n':>6} {'s':>7} {'H1':>6} {'RSS+ MB':>9} {'B/entry':>8} {'VM+ MB':>9} {'VB/entry':>8}")
    for d in args.dims:
        for n in args.sizes:
            row = measure(n, d, args.seed)
            rows.append(row)
            print(
                f"{d:>5} {n:>6} {row['seconds']:>7.1f} {row['h1_pairs']:>6} {row['peak_rss_extra'] / 1e6:>9.1f} "
                f"{row['rss_extra_per_entry']:>8.2f} {row['peak_virtual_extra'] / 1e6:>9.1f} "
                f"{row['virtual_extra_per_entry']:>8.2f}",
                flush=True,
            )
    load = os.getloadavg()
    result = {
        "rows": rows,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": load},
        "note": "giotto-ph 0.2.4, n_threads=1; extra = peak during ripser_parallel minus the state before it "
        "(the float32 matrix is already allocated)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average {load[0]:.1f} (shared machine); wrote {args.out}")


if __name__ == "__main__":
    main()
