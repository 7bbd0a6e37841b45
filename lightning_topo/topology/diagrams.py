"""Persistence diagrams of Vietoris–Rips filtrations: H0 by MST, H1 by giotto-ph's diagram.

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

import torch
from torch import Tensor

from lightning_topo.topology import _memory
from lightning_topo.topology._checks import check_distance_matrix, check_input, check_points, max_abs
from lightning_topo.topology._giotto import h1_pairs
from lightning_topo.topology.distances import check_representable, edge_lengths, range_scale, ranking_matrix
from lightning_topo.topology.mst import mst_edges

__all__ = ["h0_diagram", "h1_diagram", "persistence_diagrams", "BACKENDS"]

BACKENDS = ("torch", "torchph")

_H1_HINT = ", or compute H0 only (max_dim=0), which needs no giotto-ph working memory"


class _Prepared:
    """Validated input plus the detached matrix that ranks its edges (computed once).

    Point clouds outside the safe range of :func:`range_scale` (e.g. float32 coordinates of
    1e19, whose squares overflow) are handled as ``x * scale``, an exact power-of-two scaling;
    bar lengths are divided by ``scale`` again, so the output is in the input's units.
    """

    def __init__(self, points: object, distance_matrix: bool, max_dim: int) -> None:
        self.distance_matrix = distance_matrix
        if distance_matrix:
            self.x = check_distance_matrix(points, "points")
            self.scale = 1.0
            _check_memory(self.x, max_dim, ranking_bytes=0)
            self.ranking = self.x.detach()
            return
        self.x = check_points(points, "points", finite=False)
        self.scale = range_scale(max_abs(self.x, "points"))
        self.scaled = self.x if self.scale == 1.0 else self.x * self.scale
        _check_memory(self.x, max_dim, ranking_bytes=self.x.element_size())
        self.ranking = ranking_matrix(self.scaled)

    def lengths(self, edges: Tensor) -> Tensor:
        """Differentiable lengths ``(m,)`` of the edges ``(m, 2)``, in the input's units."""
        edges = edges.to(self.x.device)
        if self.distance_matrix:
            return self.x[edges[:, 0], edges[:, 1]]
        lengths = edge_lengths(self.scaled, edges)
        if self.scale != 1.0:
            lengths = lengths / self.scale
            check_representable(lengths.detach(), "points")
        return lengths

    def h0_deaths(self) -> Tensor:
        """All ``n - 1`` H0 deaths (MST edge lengths in Prim order, zeros kept)."""
        return self.lengths(mst_edges(self.ranking))

    def giotto_matrix(self) -> Tensor:
        """The detached float32 CPU matrix handed to giotto-ph, with the distances' order.

        Point input: the (scaled) squared distances, clamped at 0, diagonal 0 (VR pairs are
        invariant under the increasing map t -> t^2; values are taken from the points), in
        place in ``ranking``. Distance matrix: a float32 copy where needed, brought into
        float32's range by a power of two and with its diagonal set to 0 (giotto-ph would
        read a non-zero diagonal as vertex birth times).
        """
        if not self.distance_matrix:
            return self.ranking.clamp_(min=0.0).fill_diagonal_(0.0).to("cpu", torch.float32)
        scale = range_scale(float(self.ranking.max()), 2.0**-64, 2.0**64)
        matrix = self.ranking if scale == 1.0 else self.ranking * scale
        matrix = matrix.to("cpu", torch.float32)
        if bool((matrix.diagonal() != 0).any()):
            matrix = matrix.clone() if matrix.data_ptr() == self.ranking.data_ptr() else matrix
            matrix.fill_diagonal_(0.0)
        return matrix


def _check_memory(x: Tensor, max_dim: int, ranking_bytes: int) -> None:
    """Raise ``MemoryError`` before allocating what the diagrams need for ``x``.

    H0: the ranking matrix (``ranking_bytes`` per entry, 0 for distance-matrix input). H1
    adds, on the CPU, the float32 copy handed to giotto-ph (unless the matrix already is a
    float32 CPU tensor) and giotto-ph's working memory (``_memory.GIOTTO_H1_BYTES``).
    """
    n = x.shape[0]
    on_cpu = x.device.type == "cpu"
    if ranking_bytes and (max_dim < 1 or not on_cpu):
        _memory.ensure_fits(n, ranking_bytes, x.device, "persistence (one distance matrix)")
    if max_dim < 1:
        return
    copy = 0 if (on_cpu and x.dtype == torch.float32) else 4
    host_bytes = copy + _memory.GIOTTO_H1_BYTES + (ranking_bytes if on_cpu else 0)
    what = "H1 persistence (distance matrix, float32 copy and giotto-ph's working memory)"
    _memory.ensure_fits(n, host_bytes, torch.device("cpu"), what, _H1_HINT)


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
        distance_matrix: treat ``points`` as a precomputed distance matrix (symmetric, zero
            diagonal); deaths are then gathered from it (gradients flow to the matrix).

    Returns:
        ``(m, 2)`` tensor, ``m <= n - 1`` (zero-length bars from duplicate points dropped),
        column 0 all zeros, column 1 the deaths sorted ascending; same dtype/device as input.

    Raises:
        TypeError: integer/bool dtype or not a tensor.
        ValueError: wrong shape, fewer than 2 points, NaN/inf, distances beyond the dtype's
            range, or a distance matrix that is negative, asymmetric or has a non-zero diagonal.
        MemoryError: the ``(n, n)`` matrix does not fit in the memory available.
    """
    prep = _Prepared(points, distance_matrix, max_dim=0)
    return _h0_from_deaths(prep.h0_deaths())


def _h0_from_deaths(deaths: Tensor) -> Tensor:
    deaths = torch.sort(deaths, stable=True).values
    return _as_diagram(torch.zeros_like(deaths), deaths)


def _check_threads(n_threads: object) -> int:
    if n_threads is None:
        return torch.get_num_threads()
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise ValueError(
            f"n_threads must be a positive int or None (torch's thread count); got {n_threads!r}"
        )
    return n_threads


def _h1(prep: _Prepared, n_threads: int) -> Tensor:
    matrix = prep.giotto_matrix().contiguous().numpy()
    pairs = torch.from_numpy(h1_pairs(matrix, n_threads))
    # rows of edges: birth edge of pair 0, death edge of pair 0, birth edge of pair 1, ...
    lengths = prep.lengths(pairs.reshape(-1, 2)).reshape(-1, 2)
    return _sort_pairs(_as_diagram(lengths[:, 0], lengths[:, 1]))


def h1_diagram(points: Tensor, *, distance_matrix: bool = False, n_threads: int | None = None) -> Tensor:
    """Finite H1 persistence diagram of the Vietoris–Rips filtration (loops).

    giotto-ph (``ripser_parallel(maxdim=1)``, multi-threaded) computes the diagram on a
    float32 matrix; each birth and death is then mapped to an edge of exactly that length in
    the same matrix, and recomputed in torch as that edge's length, so the bars carry
    gradients to the input (and have the input's precision). giotto-ph's own generators are
    not used: with more than one thread they can be wrong (docs/topology.md).

    Args:
        points: ``(n, d)`` point cloud (float32/float64, ``n >= 2``), or an ``(n, n)``
            distance matrix when ``distance_matrix=True``.
        distance_matrix: treat ``points`` as a precomputed distance matrix (symmetric, zero
            diagonal).
        n_threads: giotto-ph threads, a positive int; default ``torch.get_num_threads()``.

    Returns:
        ``(m, 2)`` tensor of ``(birth, death)`` with ``death > birth``, sorted by birth then
        death; same dtype/device as the input. ``m`` may be 0.

    Raises:
        TypeError: integer/bool dtype or not a tensor.
        ValueError: as :func:`h0_diagram`, or a bad ``n_threads``.
        MemoryError: the ``(n, n)`` matrix and giotto-ph's working memory do not fit.
    """
    n_threads = _check_threads(n_threads)
    return _h1(_Prepared(points, distance_matrix, max_dim=1), n_threads)


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
    backend: str = "torch",
) -> list[Tensor]:
    """Finite persistence diagrams of dimensions ``0..max_dim`` of the Vietoris–Rips filtration.

    Args:
        points: ``(n, d)`` point cloud (float32/float64, ``n >= 2``), or an ``(n, n)``
            distance matrix when ``distance_matrix=True``.
        max_dim: highest homology dimension, 0 or 1.
        distance_matrix: treat ``points`` as a precomputed distance matrix (symmetric, zero
            diagonal).
        backend: ``"torch"`` (this engine: MST for H0, giotto-ph's diagram mapped to edges
            for H1) or ``"torchph"`` (optional adapter; raises ``ImportError``/``RuntimeError``
            when torchph is missing or not working).

    Returns:
        List of length ``max_dim + 1``; element ``k`` is the ``(m_k, 2)`` diagram of
        dimension ``k`` (see :func:`h0_diagram`, :func:`h1_diagram`).

    Raises:
        TypeError: integer/bool dtype, not a tensor, or ``max_dim`` not an int.
        ValueError: bad shape/values (see :func:`h0_diagram`), ``max_dim`` not in {0, 1}, or
            unknown ``backend``.
        MemoryError: the ``(n, n)`` matrix (and, for H1, giotto-ph's memory) does not fit.
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
    prep = _Prepared(points, distance_matrix, max_dim)
    diagrams = [_h0_from_deaths(prep.h0_deaths())]
    if max_dim >= 1:
        diagrams.append(_h1(prep, torch.get_num_threads()))
    return diagrams
