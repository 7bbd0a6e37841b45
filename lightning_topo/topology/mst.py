"""Dense Prim minimum spanning tree on a torch distance matrix (CPU and CUDA)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lightning_topo.topology._checks import check_distance_matrix


def _prim_numpy(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prim from vertex 0 on a dense matrix; CPU inner loop in NumPy (a view, no copy)."""
    n = weights.shape[0]
    best = weights[0].copy()
    parent = np.zeros(n, dtype=np.int64)
    blocked = np.zeros(n, dtype=weights.dtype)  # +inf once a vertex is in the tree
    blocked[0] = np.inf
    best[0] = np.inf
    closer = np.empty(n, dtype=bool)
    new = np.empty(n - 1, dtype=np.int64)
    par = np.empty(n - 1, dtype=np.int64)
    for k in range(n - 1):
        j = int(best.argmin())  # lowest index among ties
        new[k] = j
        par[k] = parent[j]
        blocked[j] = np.inf
        row = weights[j]
        np.less(row, best, out=closer)  # strict: an earlier tree vertex keeps a tie
        np.putmask(parent, closer, j)
        np.minimum(best, row, out=best)
        np.maximum(best, blocked, out=best)
    return par, new


def _prim_torch(weights: Tensor) -> tuple[Tensor, Tensor]:
    """Same algorithm as :func:`_prim_numpy` with torch ops only (no host sync in the loop)."""
    n = weights.shape[0]
    device = weights.device
    inf = torch.tensor(float("inf"), dtype=weights.dtype, device=device)
    best = weights[0].clone()
    best[0] = inf
    parent = torch.zeros(n, dtype=torch.long, device=device)
    blocked = torch.zeros(n, dtype=weights.dtype, device=device)
    blocked[0] = inf
    new = torch.empty(n - 1, dtype=torch.long, device=device)
    par = torch.empty(n - 1, dtype=torch.long, device=device)
    for k in range(n - 1):
        j = best.argmin().view(1)
        new[k : k + 1] = j
        par[k : k + 1] = parent.index_select(0, j)
        blocked.index_fill_(0, j, float("inf"))
        row = weights.index_select(0, j).squeeze(0)
        closer = row < best
        parent = torch.where(closer, j, parent)
        torch.minimum(best, row, out=best)
        torch.maximum(best, blocked, out=best)
    return par, new


def mst_edges(weights: Tensor, *, force_torch: bool = False) -> Tensor:
    """MST edges ``(n-1, 2)`` int64 (parent, new vertex) in Prim order, on ``weights.device``.

    Any matrix that orders the edges like the distances will do (e.g. squared distances);
    it is read detached. CPU tensors use a NumPy inner loop, other devices torch ops
    (``force_torch=True`` runs the torch loop on CPU, to test that path without a GPU).
    """
    weights = weights.detach()
    if weights.device.type == "cpu" and not force_torch:
        par, new = _prim_numpy(weights.contiguous().numpy())
        return torch.from_numpy(np.stack([par, new], axis=1))
    par, new = _prim_torch(weights.contiguous())
    return torch.stack([par, new], dim=1)


def minimum_spanning_tree(distances: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum spanning tree of a complete graph by dense Prim, on the matrix's own device.

    Args:
        distances: ``(n, n)`` symmetric, non-negative, finite float32/float64 tensor,
            ``n >= 2``. Only the order of the entries decides the tree; the diagonal is ignored.

    Returns:
        ``(edges, lengths)``: ``edges`` is ``(n-1, 2)`` int64, row ``k`` = ``(parent_vertex,
        new_vertex)`` for the ``k``-th vertex Prim adds, starting from vertex 0; ``lengths`` is
        ``(n-1,)`` = ``distances[edges[:, 0], edges[:, 1]]`` (gathered, so gradients flow to
        ``distances``). Both on ``distances.device``; CUDA input never leaves the GPU.

    Tie-breaking (deterministic): the next vertex is the lowest-index vertex among those at
    minimal distance to the tree; its parent is the earliest-added tree vertex at that
    distance (the first vertex that reached it).

    Raises:
        TypeError: ``distances`` is not a floating-point tensor.
        ValueError: not square 2-D, fewer than 2 points, NaN/inf or negative entries.
    """
    distances = check_distance_matrix(distances, "distances")
    edges = mst_edges(distances)
    lengths = distances[edges[:, 0], edges[:, 1]]
    return edges, lengths
