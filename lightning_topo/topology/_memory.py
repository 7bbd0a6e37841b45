"""Memory check before an ``(n, n)`` allocation, so that a too-large cloud fails with the
numbers and the remedy instead of a raw allocator error (private).

:func:`available_bytes` is looked up at call time, so tests can monkeypatch it.
"""

from __future__ import annotations

import math
import os

import torch

# bytes per (i, j) entry, as a multiple of the matrix dtype's size, measured in docs/topology.md
PAIRWISE_COPIES = 6  # the differentiable distance matrix and its saved intermediates
#: giotto-ph's peak working memory for H1, bytes per entry of the (n, n) matrix: measured 19-31
#: resident and up to 38 virtual (n = 500-4000 Gaussian points in R^768, 1 thread,
#: benchmarks/giotto_memory.py; 24-36 resident in docs/topology.md's earlier runs), counted as 64
#: (a 1.7x margin over the largest).
GIOTTO_H1_BYTES = 64
#: Address space kept free under RLIMIT_AS / RLIMIT_DATA for what is not per-entry: giotto-ph's
#: threads' stacks and malloc arenas (about 150 MB of virtual memory measured at n = 500).
RLIMIT_RESERVE_BYTES = 256 << 20


_CGROUP_ROOT = "/sys/fs/cgroup"
_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a huge page-aligned number


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # v2's "max" (no limit) -> None


def _inactive_file(path: str, key: str) -> int:
    """Reclaimable page cache of a cgroup (``memory.stat``), counted as free."""
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_dirs(controller_root: str, relative: str) -> list[str]:
    """The cgroup folder of this process and each of its parents up to the controller root
    (a limit anywhere up the tree applies), as far as they exist."""
    parts = [p for p in relative.strip("/").split("/") if p]
    dirs = [os.path.join(controller_root, *parts[:k]) for k in range(len(parts), -1, -1)]
    return [d for d in dirs if os.path.isdir(d)]


def cgroup_available_bytes(proc_cgroup: str = "/proc/self/cgroup", root: str = _CGROUP_ROOT) -> int | None:
    """Memory left under this process's cgroup limits: the smallest ``limit - usage`` (reclaimable
    page cache counted as free) over its cgroup and the cgroups above it, for cgroup v2
    (``memory.max`` / ``memory.current``) and v1 (``memory.limit_in_bytes`` /
    ``memory.usage_in_bytes``); ``None`` when no limit is set or nothing can be read."""
    try:
        with open(proc_cgroup, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    best: int | None = None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, relative = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2 (unified); hybrid setups mount it at unified/
            candidates = [
                (d, "memory.max", "memory.current", "inactive_file")
                for base in (root, os.path.join(root, "unified"))
                for d in _cgroup_dirs(base, relative)
            ]
        elif "memory" in controllers.split(","):
            candidates = [
                (d, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
                for d in _cgroup_dirs(os.path.join(root, "memory"), relative)
            ]
        else:
            continue
        for folder, limit_file, usage_file, cache_key in candidates:
            limit = _read_int(os.path.join(folder, limit_file))
            if limit is None or limit >= _UNLIMITED:
                continue
            usage = _read_int(os.path.join(folder, usage_file)) or 0
            usage -= _inactive_file(os.path.join(folder, "memory.stat"), cache_key)
            free = max(limit - max(usage, 0), 0)
            best = free if best is None else min(best, free)
    return best


def _status_bytes(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmSize``, ``VmData``) in bytes."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def rlimit_available_bytes() -> int | None:
    """Address space left under this process's soft ``RLIMIT_AS`` (minus the current ``VmSize``)
    and ``RLIMIT_DATA`` (minus ``VmData``), the smaller of the two, less
    :data:`RLIMIT_RESERVE_BYTES`; ``None`` when neither is set.
    A process over such a limit gets a failed allocation, which giotto-ph turns into a segfault."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    best: int | None = None
    for limit_name, usage_key in (("RLIMIT_AS", "VmSize"), ("RLIMIT_DATA", "VmData")):
        which = getattr(resource, limit_name, None)
        if which is None:
            continue
        soft, _hard = resource.getrlimit(which)
        if soft == resource.RLIM_INFINITY or soft < 0:
            continue
        used = _status_bytes(usage_key) or 0
        free = max(int(soft) - used - RLIMIT_RESERVE_BYTES, 0)
        best = free if best is None else min(best, free)
    return best


def meminfo_available_bytes() -> int | None:
    """The machine's ``MemAvailable`` (psutil's ``available`` when installed)."""
    try:
        import psutil  # type: ignore[import-untyped]

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_bytes(device: torch.device) -> int | None:
    """Memory that a new allocation on ``device`` can use, or ``None`` when unknown.

    CPU: the smallest of the machine's ``MemAvailable``, what this process's cgroup limits leave
    (v2 ``memory.max``, v1 ``memory.limit_in_bytes``, the process's cgroup and those above it) and
    what its ``RLIMIT_AS`` / ``RLIMIT_DATA`` leave of its address space. CUDA: the driver's free
    memory plus what torch's caching allocator holds unused.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type != "cpu":
        return None
    known = [
        v
        for v in (meminfo_available_bytes(), cgroup_available_bytes(), rlimit_available_bytes())
        if v is not None
    ]
    return min(known) if known else None


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e8 else f"{num_bytes / 1e6:.2f} MB"


def ensure_fits(n: int, bytes_per_entry: float, device: torch.device, what: str, hint: str = "") -> None:
    """Raise ``MemoryError`` if ``n * n * bytes_per_entry`` bytes exceed the memory available.

    Args:
        n: number of points (the matrix is ``(n, n)``).
        bytes_per_entry: bytes needed per matrix entry, all copies together.
        device: where the memory is allocated.
        what: the computation, for the message (e.g. ``"H0 and H1 persistence"``).
        hint: an extra remedy appended to the message.
    """
    needed = float(n) * float(n) * bytes_per_entry
    available = available_bytes(device)
    if available is None or needed <= available:
        return
    fits = max(int(math.isqrt(int(available / bytes_per_entry))), 0)
    raise MemoryError(
        f"{what} of {n} points needs about {_size(needed)} on {device.type} (an ({n}, {n}) matrix, "
        f"{bytes_per_entry:g} bytes per entry) but only {_size(available)} is available. Use fewer "
        f"points: about {fits} fit (memory grows with n^2); subsample the cloud, e.g. lower "
        f"max_points_per_class in the PSF scores{hint}"
    )
