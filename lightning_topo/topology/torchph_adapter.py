"""Optional adapter to torchph's Vietoris–Rips persistence (``torchph.pershom.vr_persistence``).

torchph is *not* a dependency of lightning-topo. It is used only when a caller asks for
``backend="torchph"``; then this module imports it, checks that it works, and converts its
output to our diagram convention (finite pairs only, zero-length bars dropped, H0 sorted by
death, H1 sorted by birth then death). Known limitation: the PyPI wheel torchph 0.1.1 ships
no compiled extension, and torchph's VR code needs CUDA tensors, so on most installs this
adapter raises a clear ``ImportError``/``RuntimeError`` and our own engine is the one to use.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_topo.topology.distances import pairwise_distances

_INSTALL_HINT = (
    "torchph is optional and not installed with lightning-topo; it needs a source build with "
    "its CUDA extension (the PyPI wheel torchph 0.1.1 ships none). Use backend='torch' "
    "(lightning-topo's own engine) instead"
)


def load_torchph_vr_persistence() -> Any:
    """Return ``torchph.pershom.vr_persistence``, or raise ``ImportError`` saying why not."""
    try:
        from torchph.pershom import vr_persistence  # type: ignore[import-not-found]
    except Exception as exc:  # ModuleNotFoundError, missing compiled extension, API drift
        raise ImportError(
            f"backend='torchph' is unavailable: {type(exc).__name__}: {exc}. {_INSTALL_HINT}"
        ) from exc
    return vr_persistence


def _finite_sorted(pairs: Tensor, dim: int, like: Tensor) -> Tensor:
    pairs = pairs.to(device=like.device, dtype=like.dtype).reshape(-1, 2)
    pairs = pairs[torch.isfinite(pairs).all(dim=1) & (pairs[:, 1] > pairs[:, 0])]
    if pairs.shape[0] == 0:
        return pairs
    if dim == 0:
        return pairs[torch.sort(pairs[:, 1], stable=True).indices]
    pairs = pairs[torch.sort(pairs[:, 1], stable=True).indices]
    return pairs[torch.sort(pairs[:, 0], stable=True).indices]


def torchph_persistence_diagrams(x: Tensor, max_dim: int, *, distance_matrix: bool = False) -> list[Tensor]:
    """Diagrams ``[H0, ..., H_max_dim]`` computed by torchph (already validated input).

    Raises:
        ImportError: torchph (or its compiled extension) is not importable.
        RuntimeError: torchph imported but failed (e.g. CPU tensor, unsupported torch).
    """
    vr_persistence = load_torchph_vr_persistence()
    dm = x if distance_matrix else pairwise_distances(x)
    if dm.device.type != "cuda":
        raise RuntimeError(
            "backend='torchph' needs a CUDA tensor (torchph's Vietoris–Rips code is CUDA-only); "
            f"got a tensor on {dm.device}. Use backend='torch' on CPU"
        )
    try:
        non_essential, _essential = vr_persistence(dm.contiguous(), max_dim, 0.0)
    except Exception as exc:
        raise RuntimeError(f"backend='torchph' failed: {type(exc).__name__}: {exc}. {_INSTALL_HINT}") from exc
    return [_finite_sorted(non_essential[k], k, x) for k in range(max_dim + 1)]
