"""Euclidean distance matrices with a safe gradient."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_topo.topology import _memory
from lightning_topo.topology._checks import check_points, max_abs

# points whose largest |coordinate| lies in [2^-32, 2^32] are used as they are: their squared
# distances (at most 16 * 2^64 * d) and the float32 copy handed to giotto-ph cannot overflow,
# and the GEMM's rounding (~eps |x|^2) stays above float32's smallest normal number
_SAFE_LOW, _SAFE_HIGH = 2.0**-32, 2.0**32


def safe_sqrt(x: Tensor) -> Tensor:
    """Elementwise ``sqrt(max(x, 0))`` whose gradient is 0 (not inf/NaN) where ``x <= 0``."""
    positive = x > 0
    ones = torch.ones_like(x)
    return torch.where(positive, torch.sqrt(torch.where(positive, x, ones)), torch.zeros_like(x))


def squared_distances(points: Tensor) -> Tensor:
    """Squared Euclidean distances ``(n, n)`` via one GEMM, ``|x|^2 + |y|^2 - 2 x y^T``.

    The points are centred first (distances do not change, cancellation shrinks); the result
    is symmetrised, negative round-off is clamped to 0 and the diagonal set to exactly 0. Differentiable through
    autograd; internal callers use it under ``torch.no_grad()`` to rank edges only.
    """
    x = points - points.mean(dim=0, keepdim=True)
    sq = (x * x).sum(dim=1)
    d2 = torch.addmm(sq.unsqueeze(0), x, x.T, beta=1.0, alpha=-2.0)
    d2 = d2 + sq.unsqueeze(1)
    d2 = 0.5 * (d2 + d2.T)  # exactly symmetric (the GEMM rounds (i, j) and (j, i) apart)
    d2 = d2.clamp_min(0.0)
    n = d2.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=d2.device)
    return d2.masked_fill(eye, 0.0)


def range_scale(largest: float, low: float = _SAFE_LOW, high: float = _SAFE_HIGH) -> float:
    """Power of two ``s`` that brings ``largest * s`` into ``[1, 2)`` when ``largest`` lies
    outside ``[low, high]``, else 1.

    Multiplying by a power of two is exact in floating point (barring underflow of entries far
    below the largest one), so a computation on ``x * s`` divided by ``s`` gives the bits the
    unscaled computation would give if it did not overflow or underflow.
    """
    if largest == 0.0 or low <= largest <= high:
        return 1.0
    return 2.0 ** -math.floor(math.log2(largest))


def ranking_matrix(points: Tensor) -> Tensor:
    """Detached squared distances ``(n, n)`` (internal, no autograd).

    ``y = x - x_0`` (a shift leaves distances unchanged and limits cancellation in the GEMM),
    ``sq = |y|^2`` and ``D2 = sq[:, None] + sq[None, :] - 2 y y^T``, built as one outer sum
    and one in-place ``addmm_``. Round-off may leave tiny negatives and a non-zero diagonal:
    fine for ranking edges (Prim never reads the diagonal). ``points`` must be in the safe
    range of :func:`range_scale` (callers scale them first).
    """
    with torch.no_grad():
        x = points.detach()
        y = x - x[:1]
        sq = torch.linalg.vector_norm(y, dim=1).square_()
        d2 = sq.unsqueeze(1) + sq.unsqueeze(0)
        d2.addmm_(y, y.T, beta=1.0, alpha=-2.0)
    return d2


def check_representable(values: Tensor, name: str) -> None:
    """Raise ``ValueError`` if distances computed in a safe range overflow the output dtype."""
    if not bool(torch.isfinite(values).all()):
        raise ValueError(
            f"distances between the {name} exceed the largest {values.dtype} value "
            f"({torch.finfo(values.dtype).max:.3g}); convert {name} to float64 "
            f"({name}.double()) or rescale them"
        )


def pairwise_distances(points: Tensor) -> Tensor:
    """Euclidean distance matrix of a point cloud, differentiable.

    Args:
        points: ``(n, d)`` float32 or float64 tensor on any device; ``n >= 2``.

    Returns:
        ``(n, n)`` tensor of the same dtype/device, ``D[i, j] = ||x_i - x_j||_2`` (same
        units as the coordinates). Symmetric, the diagonal is exactly 0, and the gradient
        is 0 (never NaN) where two points coincide.

    Points with huge or tiny coordinates (e.g. float32 of size 1e19, whose squares overflow)
    are computed on a copy scaled by a power of two and the result scaled back (exact).

    Raises:
        TypeError: ``points`` is not a floating-point tensor.
        ValueError: ``points`` is not 2-D, has fewer than 2 rows, has NaN/inf entries, or
            distances that exceed the dtype's range.
        MemoryError: the ``(n, n)`` matrix and its intermediates do not fit in memory.
    """
    points = check_points(points, "points", finite=False)
    scale = range_scale(max_abs(points, "points"))
    n = points.shape[0]
    bytes_per_entry = _memory.PAIRWISE_COPIES * points.element_size()
    _memory.ensure_fits(n, bytes_per_entry, points.device, "pairwise_distances")
    if scale == 1.0:
        return safe_sqrt(squared_distances(points))
    distances = safe_sqrt(squared_distances(points * scale)) / scale
    check_representable(distances.detach(), "points")
    return distances


class _EdgeLengths(torch.autograd.Function):
    """``||x_a - x_b||`` per edge with a hand-written O(m d) backward (0 for zero-length edges).

    Backward is one sparse-dense product ``grad_x = B^T (c * diff)`` with the signed incidence
    matrix ``B`` (``+1`` at ``a``, ``-1`` at ``b``), which avoids ``index_add_`` (slow with
    several threads on CPU) and never forms an n x n matrix.
    """

    @staticmethod
    def forward(ctx, points: Tensor, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        m = a.shape[0]
        both = torch.cat([a, b])
        rows = points.index_select(0, both)
        diff = rows[:m] - rows[m:]
        lengths = torch.linalg.vector_norm(diff, dim=1)
        ctx.save_for_backward(diff, lengths, both)
        ctx.num_points = points.shape[0]
        return lengths

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        diff, lengths, both = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        m = lengths.shape[0]
        coef = torch.where(lengths > 0, grad / lengths, torch.zeros_like(lengths))
        cols = torch.arange(m, device=both.device).repeat(2)
        incidence = torch.sparse_coo_tensor(
            torch.stack([both, cols]),
            torch.cat([coef, -coef]),
            (ctx.num_points, m),
            check_invariants=False,
        )
        return torch.sparse.mm(incidence, diff), None, None


def edge_lengths(points: Tensor, edges: Tensor) -> Tensor:
    """Lengths ``(m,)`` of the edges ``(m, 2)`` computed directly as ``||x_i - x_j||``.

    O(m d) forward and backward (not the O(n^2 d) backward of a distance matrix); the
    gradient is 0 for zero-length edges. First-order gradients only.
    """
    edges = edges.to(device=points.device, dtype=torch.long)
    return _EdgeLengths.apply(points, edges[:, 0].contiguous(), edges[:, 1].contiguous())
