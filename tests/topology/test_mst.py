"""minimum_spanning_tree: scipy total weight, tree structure, tie-breaking, CPU loop == torch loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_topo.topology import minimum_spanning_tree, pairwise_distances
from lightning_topo.topology.mst import mst_edges

from ._clouds import reference_clouds

scipy_csgraph = pytest.importorskip("scipy.sparse.csgraph")

CLOUDS = [c for c in reference_clouds() if "dups" not in c[0] and c[0] != "all-duplicates"]


def _is_spanning_tree(edges: torch.Tensor, n: int) -> bool:
    seen = {0}
    for parent, new in edges.tolist():
        if parent not in seen or new in seen:
            return False
        seen.add(new)
    return len(seen) == n


@pytest.mark.parametrize("name,x", CLOUDS, ids=[c[0] for c in CLOUDS])
def test_total_weight_matches_scipy(name: str, x: torch.Tensor) -> None:
    dist = pairwise_distances(x)
    edges, lengths = minimum_spanning_tree(dist)
    n = x.shape[0]
    assert edges.shape == (n - 1, 2) and edges.dtype == torch.int64
    assert lengths.shape == (n - 1,) and lengths.dtype == x.dtype
    assert _is_spanning_tree(edges, n)
    torch.testing.assert_close(lengths, dist[edges[:, 0], edges[:, 1]])
    ref = scipy_csgraph.minimum_spanning_tree(dist.numpy()).sum()
    np.testing.assert_allclose(float(lengths.sum()), ref, rtol=1e-10, atol=1e-12)


def test_lengths_carry_gradient() -> None:
    x = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    _, lengths = minimum_spanning_tree(pairwise_distances(x))
    lengths.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_tie_breaking_square() -> None:
    # unit square: 0=(0,0) 1=(1,0) 2=(0,1) 3=(1,1); every side has length 1
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    edges, lengths = minimum_spanning_tree(pairwise_distances(x))
    assert edges.tolist() == [[0, 1], [0, 2], [1, 3]]
    assert lengths.tolist() == [1.0, 1.0, 1.0]


def test_duplicates_give_zero_edges() -> None:
    x = torch.tensor([[0.0], [0.0], [2.0], [2.0]], dtype=torch.float64)
    edges, lengths = minimum_spanning_tree(pairwise_distances(x))
    assert edges.tolist() == [[0, 1], [0, 2], [2, 3]]
    assert lengths.tolist() == [0.0, 2.0, 0.0]


@pytest.mark.parametrize("name,x", reference_clouds()[::3], ids=[c[0] for c in reference_clouds()[::3]])
def test_numpy_loop_equals_torch_loop(name: str, x: torch.Tensor) -> None:
    # the CUDA code path (torch ops, no host sync) run on CPU must give the very same tree
    dist = pairwise_distances(x)
    assert torch.equal(mst_edges(dist), mst_edges(dist, force_torch=True))


def test_float32_supported() -> None:
    x = torch.randn(50, 4)
    edges, lengths = minimum_spanning_tree(pairwise_distances(x))
    assert lengths.dtype == torch.float32
    ref = scipy_csgraph.minimum_spanning_tree(pairwise_distances(x.double()).numpy()).sum()
    np.testing.assert_allclose(float(lengths.sum()), ref, rtol=1e-5)


@pytest.mark.parametrize("name,x", CLOUDS[::3], ids=[c[0] for c in CLOUDS[::3]])
def test_ranking_matrix_gives_same_tree(name: str, x: torch.Tensor) -> None:
    # the internal H0 path ranks edges by GEMM squared distances (both code paths)
    from lightning_topo.topology.distances import ranking_matrix

    d2 = ranking_matrix(x)
    exact = mst_edges(pairwise_distances(x))
    assert torch.equal(mst_edges(d2), exact)
    assert torch.equal(mst_edges(d2, force_torch=True), exact)
