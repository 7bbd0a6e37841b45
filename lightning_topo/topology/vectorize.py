"""Differentiable vectorisations of a persistence diagram ``(m, 2)`` of finite pairs.

Empty diagrams (``m == 0``) give well-defined values: total persistence 0, entropy 0,
Betti curve all zeros, landscapes all zeros. Every function returns a tensor in the
diagram's dtype and on its device, with gradients to the diagram's births and deaths.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_topo.topology._checks import check_float_tensor

__all__ = ["total_persistence", "persistence_entropy", "betti_curve", "persistence_landscape"]


def _check_diagram(diagram: object, name: str = "diagram") -> Tensor:
    diagram = check_float_tensor(diagram, name)
    if diagram.dim() != 2 or diagram.shape[1] != 2:
        raise ValueError(f"{name} must have shape (m, 2) of (birth, death) pairs; got {tuple(diagram.shape)}")
    if not bool(torch.isfinite(diagram).all()):
        raise ValueError(f"{name} must contain finite pairs only (drop infinite bars first)")
    reversed_ = diagram[:, 1] < diagram[:, 0]
    if bool(reversed_.any()):
        row = int(reversed_.nonzero()[0, 0])
        raise ValueError(
            f"{name} has {int(reversed_.sum())} pair(s) with death < birth, e.g. row {row}: "
            f"{tuple(float(v) for v in diagram[row].detach())}; a persistence pair has death >= birth "
            "(it is refused, not clamped to length 0)"
        )
    return diagram


def _check_grid(grid: object, diagram: Tensor) -> Tensor:
    grid = check_float_tensor(grid, "grid")
    if grid.dim() != 1:
        raise ValueError(f"grid must be a 1-D tensor of filtration values; got shape {tuple(grid.shape)}")
    return grid.to(device=diagram.device, dtype=diagram.dtype)


def total_persistence(diagram: Tensor, p: float = 1.0) -> Tensor:
    """Total persistence ``sum_i (d_i - b_i)^p`` (a 0-d tensor; 0 for an empty diagram).

    Args:
        diagram: ``(m, 2)`` finite ``(birth, death)`` pairs.
        p: exponent, ``p > 0`` (default 1: the sum of bar lengths; for H0 of a point
            cloud that is the MST length).
    """
    diagram = _check_diagram(diagram)
    if not p > 0:
        raise ValueError(f"p must be > 0; got {p}")
    lengths = (diagram[:, 1] - diagram[:, 0]).clamp_min(0.0)
    if p == 1.0:
        return lengths.sum()
    return lengths.pow(p).sum()


def persistence_entropy(diagram: Tensor) -> Tensor:
    """Persistence entropy ``-sum_i q_i log q_i`` with ``q_i = l_i / sum_j l_j`` (nats).

    ``l_i = d_i - b_i``. Returns a 0-d tensor; 0 for an empty diagram or one whose bars all
    have zero length (terms with ``l_i = 0`` contribute 0, with a zero gradient).
    """
    diagram = _check_diagram(diagram)
    lengths = (diagram[:, 1] - diagram[:, 0]).clamp_min(0.0)
    total = lengths.sum()
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    q = lengths / safe_total
    positive = q > 0
    safe_q = torch.where(positive, q, torch.ones_like(q))
    return -(torch.where(positive, q * torch.log(safe_q), torch.zeros_like(q))).sum()


def betti_curve(diagram: Tensor, grid: Tensor, *, smoothing: float = 0.0) -> Tensor:
    """Betti curve: number of bars alive at each grid value, ``#{i : b_i <= t < d_i}``.

    Args:
        diagram: ``(m, 2)`` finite ``(birth, death)`` pairs.
        grid: ``(g,)`` filtration values ``t`` (same units as the diagram).
        smoothing: 0 (default) gives the exact step function, whose gradient is 0 almost
            everywhere; ``s > 0`` replaces each step by a sigmoid of width ``s``,
            ``sigmoid((t - b)/s) * sigmoid((d - t)/s)``, which has useful gradients.

    Returns:
        ``(g,)`` tensor in the diagram's dtype; all zeros for an empty diagram.
    """
    diagram = _check_diagram(diagram)
    grid = _check_grid(grid, diagram)
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0; got {smoothing}")
    b = diagram[:, 0].unsqueeze(0)  # (1, m)
    d = diagram[:, 1].unsqueeze(0)
    t = grid.unsqueeze(1)  # (g, 1)
    if smoothing == 0:
        alive = ((b <= t) & (t < d)).to(diagram.dtype)
        # keep the graph connected (zero gradient) so callers can always backpropagate
        alive = alive + 0.0 * diagram.sum()
    else:
        alive = torch.sigmoid((t - b) / smoothing) * torch.sigmoid((d - t) / smoothing)
    return alive.sum(dim=1)


def persistence_landscape(diagram: Tensor, grid: Tensor, num_landscapes: int = 5) -> Tensor:
    """Persistence landscapes ``lambda_k(t)``, ``k = 1..num_landscapes``, sampled on ``grid``.

    ``lambda_k(t)`` is the k-th largest value of the tent functions
    ``max(0, min(t - b_i, d_i - t))``; it is piecewise linear in the births and deaths.

    Args:
        diagram: ``(m, 2)`` finite ``(birth, death)`` pairs.
        grid: ``(g,)`` filtration values.
        num_landscapes: number of landscapes ``K >= 1`` (default 5).

    Returns:
        ``(K, g)`` tensor; rows beyond the number of bars (and everything for an empty
        diagram) are 0.
    """
    diagram = _check_diagram(diagram)
    grid = _check_grid(grid, diagram)
    if isinstance(num_landscapes, bool) or not isinstance(num_landscapes, int) or num_landscapes < 1:
        raise ValueError(f"num_landscapes must be a positive int; got {num_landscapes!r}")
    t = grid.unsqueeze(0)  # (1, g)
    b = diagram[:, 0].unsqueeze(1)  # (m, 1)
    d = diagram[:, 1].unsqueeze(1)
    tents = torch.minimum(t - b, d - t).clamp_min(0.0)  # (m, g)
    m = tents.shape[0]
    if m < num_landscapes:
        pad = torch.zeros(num_landscapes - m, grid.shape[0], dtype=diagram.dtype, device=diagram.device)
        tents = torch.cat([tents, pad + 0.0 * diagram.sum()], dim=0)
    return torch.topk(tents, num_landscapes, dim=0).values
