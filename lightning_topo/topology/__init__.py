"""Persistent-homology engine: distances, MST (H0), giotto-ph diagrams (H1), vectorisations.

Everything returns torch tensors in the input's dtype and on its device, differentiable with
respect to the input points (or distance matrix). See ``docs/topology.md``.

Public API::

    pairwise_distances(points) -> (n, n)
    minimum_spanning_tree(distances) -> (edges (n-1, 2), lengths (n-1,))
    h0_diagram(points, *, distance_matrix=False) -> (m, 2)
    h1_diagram(points, *, distance_matrix=False) -> (m, 2)
    persistence_diagrams(points, max_dim=1, *, distance_matrix=False, backend="torch") -> list
    total_persistence, persistence_entropy, betti_curve, persistence_landscape
    check_points(points, name="points") -> points (the validation every function here applies)
"""

from lightning_topo.topology._checks import check_points
from lightning_topo.topology.diagrams import h0_diagram, h1_diagram, persistence_diagrams
from lightning_topo.topology.distances import pairwise_distances
from lightning_topo.topology.mst import minimum_spanning_tree
from lightning_topo.topology.vectorize import (
    betti_curve,
    persistence_entropy,
    persistence_landscape,
    total_persistence,
)

__all__ = [
    "pairwise_distances",
    "minimum_spanning_tree",
    "h0_diagram",
    "h1_diagram",
    "persistence_diagrams",
    "total_persistence",
    "persistence_entropy",
    "betti_curve",
    "persistence_landscape",
    "check_points",
]
