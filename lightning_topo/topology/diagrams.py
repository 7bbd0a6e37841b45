"""Persistence diagrams of Vietoris–Rips filtrations: H0 by MST, H1 by giotto-ph generators.

Conventions (all functions here):

* A diagram of dimension k is a ``(m, 2)`` tensor of finite ``(birth, death)`` pairs, in the
  dtype and on the device of the input, differentiable with respect to the input.
* Zero-length bars (``death == birth``) are dropped in every dimension, as ripser, ripser.py,
  giotto-ph and gudhi (``min_persistence=0``) do. In H0 this means one bar less per duplicate
  point; :func:`~lightning_topo.topology.minimum_spanning_tree` still returns all ``n - 1``
  edges including zero-length ones.
* The one infinite H0 bar (the component that never dies) is not included.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lightning_topo.topology._checks import check_distance_matrix, check_finite, check_input, check_points
from lightning_topo.topology.distances import edge_lengths, ranking_matrix
from lightning_topo.topology.mst import mst_edges

__all__ = ["h0_diagram", "h1_diagram", "persistence_diagrams", "BACKENDS"]

BACKENDS = ("auto", "torch", "torchph")


class _Prepared:
    """Validated input plus the detached matrix that ranks its edges (computed once)."""

    def __init__(self, points: object, distance_matrix: bool) -> None:
        self.distance_matrix = distance_matrix
        if distance_matrix:
            self.x = check_distance_matrix(points, "points")
            self.ranking = self.x.detach()
            return
        self.x = check_points(points, "points", finite=False)
        self.ranking, sq = ranking_matrix(self.x)
        if not bool(torch.isfinite(sq).all()):  # NaN/inf in x propagate to |x - x_0|^2
            check_finite(self.x, "points")  # raises unless it was only an overflow

    def lengths(self, edges: Tensor) -> Tensor:
        """Differentiable lengths ``(m,)`` of the edges ``(m, 2)``."""
        edges = edges.to(self.x.device)
        if self.distance_matrix:
            return self.x[edges[:, 0], edges[:, 1]]
        return edge_lengths(self.x, edges)

    def h0_deaths(self) -> Tensor:
        """All ``n - 1`` H0 deaths (MST edge lengths in Prim order, zeros kept)."""
        return self.lengths(mst_edges(self.ranking))

    def giotto_matrix(self) -> Tensor:
        """A detached matrix with the distances' order for giotto-ph; modifies ``ranking``.

        Point input: squared distances (the VR pairs are invariant under the increasing map
        t -> t^2, and values are recomputed from the generators), clamped at 0, diagonal 0.
        """
        if self.distance_matrix:
            return self.ranking
        return self.ranking.clamp_(min=0.0).fill_diagonal_(0.0)


def _as_diagram(births: Tensor, deaths: Tensor) -> Tensor:
    keep = deaths > births
    return torch.stack([births[keep], deaths[keep]], dim=1)


def h0_diagram(points: Tensor, *, distance_matrix: bool = False) -> Tensor:
    """Finite H0 persistence diagram of the Vietoris–Rips filtration.

    Births are 0; deaths are the lengths of the minimum-spanning-tree edges (dense Prim on
    the input's device). The MST is found on a detached squared-distance matrix (one GEMM);
    each death is then recomputed as ``||x_i - x_j||`` for its edge, so the backward pass is
    O(n d) and exact even where the GEMM rounds.

    Args:
        points: ``(n, d)`` point cloud (float32/float64, ``n >= 2``), or an ``(n, n)``
            distance matrix when ``distance_matrix=True``.
        distance_matrix: treat ``points`` as a precomputed symmetric distance matrix;
            deaths are then gathered from it (gradients flow to the matrix).

    Returns:
        ``(m, 2)`` tensor, ``m <= n - 1`` (zero-length bars from duplicate points dropped),
        column 0 all zeros, column 1 the deaths sorted ascending; same dtype/device as input.

    Raises:
        TypeError: integer/bool dtype or not a tensor.
        ValueError: wrong shape, fewer than 2 points, NaN/inf (or negative distances).
    """
    prep = _Prepared(points, distance_matrix)
    return _h0_from_deaths(prep.h0_deaths())


def _h0_from_deaths(deaths: Tensor) -> Tensor:
    deaths = torch.sort(deaths, stable=True).values
    return _as_diagram(torch.zeros_like(deaths), deaths)


def _giotto_h1_generators(dm: Tensor, n_threads: int) -> Tensor:
    """(m, 4) int64 vertex indices (birth edge a-b, death edge c-d) of finite H1 pairs.

    ``dm`` is a detached distance matrix; giotto-ph works in float32 on the CPU, so it is
    handed a float32 CPU copy (a view when it already is one).
    """
    from gph import ripser_parallel

    dm_np = dm.detach().to("cpu", torch.float32).contiguous().numpy()
    res = ripser_parallel(dm_np, maxdim=1, metric="precomputed", n_threads=n_threads, return_generators=True)
    gens = res["gens"][1]
    if len(gens) == 0 or len(gens[0]) == 0:
        return torch.zeros((0, 4), dtype=torch.long)
    return torch.from_numpy(np.ascontiguousarray(gens[0], dtype=np.int64).reshape(-1, 4))


def _h1(prep: _Prepared, n_threads: int | None) -> Tensor:
    if n_threads is None:
        n_threads = torch.get_num_threads()
    gens = _giotto_h1_generators(prep.giotto_matrix(), int(n_threads))
    # rows of edges: birth edge of pair 0, death edge of pair 0, birth edge of pair 1, ...
    lengths = prep.lengths(gens.reshape(-1, 2)).reshape(-1, 2)
    return _sort_pairs(_as_diagram(lengths[:, 0], lengths[:, 1]))


def h1_diagram(points: Tensor, *, distance_matrix: bool = False, n_threads: int | None = None) -> Tensor:
    """Finite H1 persistence diagram of the Vietoris–Rips filtration (loops).

    giotto-ph (``ripser_parallel(maxdim=1, return_generators=True)``) finds, for every finite
    H1 pair, the edge that creates the loop and the edge whose triangle fills it; birth and
    death are then recomputed in torch as the lengths of those two edges, so they carry
    gradients to the input (and have the input's precision, not giotto-ph's float32).

    Args:
        points: ``(n, d)`` point cloud (float32/float64, ``n >= 2``), or an ``(n, n)``
            distance matrix when ``distance_matrix=True``.
        distance_matrix: treat ``points`` as a precomputed symmetric distance matrix.
        n_threads: giotto-ph threads; default ``torch.get_num_threads()``.

    Returns:
        ``(m, 2)`` tensor of ``(birth, death)`` with ``death > birth``, sorted by birth then
        death; same dtype/device as the input. ``m`` may be 0.

    Raises:
        TypeError: integer/bool dtype or not a tensor.
        ValueError: wrong shape, fewer than 2 points, NaN/inf (or negative distances).
    """
    return _h1(_Prepared(points, distance_matrix), n_threads)


def _sort_pairs(diagram: Tensor) -> Tensor:
    """Sort rows by birth, then death (lexicographic, stable)."""
    if diagram.shape[0] == 0:
        return diagram
    idx = torch.sort(diagram[:, 1], stable=True).indices
    diagram = diagram[idx]
    idx = torch.sort(diagram[:, 0], stable=True).indices
    return diagram[idx]


def persistence_diagrams(
    points: Tensor,
    max_dim: int = 1,
    *,
    distance_matrix: bool = False,
    backend: str = "auto",
) -> list[Tensor]:
    """Finite persistence diagrams of dimensions ``0..max_dim`` of the Vietoris–Rips filtration.

    Args:
        points: ``(n, d)`` point cloud (float32/float64, ``n >= 2``), or an ``(n, n)``
            distance matrix when ``distance_matrix=True``.
        max_dim: highest homology dimension, 0 or 1.
        distance_matrix: treat ``points`` as a precomputed symmetric distance matrix.
        backend: ``"auto"`` or ``"torch"`` (this engine: MST for H0, giotto-ph generators for
            H1), or ``"torchph"`` (optional adapter; raises ``ImportError``/``RuntimeError``
            when torchph is missing or not working).

    Returns:
        List of length ``max_dim + 1``; element ``k`` is the ``(m_k, 2)`` diagram of
        dimension ``k`` (see :func:`h0_diagram`, :func:`h1_diagram`).

    Raises:
        TypeError: integer/bool dtype, not a tensor, or ``max_dim`` not an int.
        ValueError: bad shape/values, ``max_dim`` not in {0, 1}, or unknown ``backend``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if isinstance(max_dim, bool) or not isinstance(max_dim, int):
        raise TypeError(f"max_dim must be an int (0 or 1); got {type(max_dim).__name__}")
    if max_dim not in (0, 1):
        raise ValueError(f"max_dim must be 0 or 1 (H0 and H1 are supported); got {max_dim}")
    if backend == "torchph":
        from lightning_topo.topology.torchph_adapter import torchph_persistence_diagrams

        x = check_input(points, distance_matrix, "points")
        return torchph_persistence_diagrams(x, max_dim, distance_matrix=distance_matrix)
    # one detached distance computation serves both the MST (H0) and giotto-ph (H1)
    prep = _Prepared(points, distance_matrix)
    diagrams = [_h0_from_deaths(prep.h0_deaths())]
    if max_dim >= 1:
        diagrams.append(_h1(prep, None))
    return diagrams
