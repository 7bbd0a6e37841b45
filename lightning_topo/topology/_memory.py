"""Memory check before an ``(n, n)`` allocation, so that a too-large cloud fails with the
numbers and the remedy instead of a raw allocator error (private).

:func:`available_bytes` is looked up at call time, so tests can monkeypatch it.
"""

from __future__ import annotations

import math

import torch

# bytes per (i, j) entry, as a multiple of the matrix dtype's size, measured in docs/topology.md
PAIRWISE_COPIES = 6  # the differentiable distance matrix and its saved intermediates
GIOTTO_H1_BYTES = 32  # giotto-ph's peak working memory for H1: ~6-9x the float32 matrix


def available_bytes(device: torch.device) -> int | None:
    """Memory that a new allocation on ``device`` can use, or ``None`` when unknown.

    CPU: psutil's ``available`` if psutil is installed, else ``MemAvailable`` of
    ``/proc/meminfo``. CUDA: the driver's free memory plus what torch's caching allocator holds
    unused.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type != "cpu":
        return None
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
