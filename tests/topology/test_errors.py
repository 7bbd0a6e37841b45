"""Every documented bad input raises the documented error, naming the argument."""

from __future__ import annotations

import pytest
import torch

from lightning_topo.topology import (
    betti_curve,
    h0_diagram,
    h1_diagram,
    minimum_spanning_tree,
    pairwise_distances,
    persistence_diagrams,
    persistence_entropy,
    persistence_landscape,
    total_persistence,
)

GOOD = torch.randn(6, 3)
FUNCS = [pairwise_distances, h0_diagram, h1_diagram, persistence_diagrams]


def _nan_cloud() -> torch.Tensor:
    x = torch.randn(5, 2)
    x[2, 1] = float("nan")
    return x


def _inf_cloud() -> torch.Tensor:
    x = torch.randn(5, 2)
    x[0, 0] = float("inf")
    return x


@pytest.mark.parametrize("fn", FUNCS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "bad,exc,match",
    [
        (torch.empty(0, 3), ValueError, "at least 2 points"),
        (torch.randn(1, 3), ValueError, "at least 2 points"),
        (_nan_cloud(), ValueError, "finite"),
        (_inf_cloud(), ValueError, "finite"),
        (torch.randn(5), ValueError, "2-D"),
        (torch.randn(2, 5, 3), ValueError, "2-D"),
        (torch.randint(0, 5, (5, 2)), TypeError, "floating-point"),
        (torch.ones(5, 2, dtype=torch.bool), TypeError, "floating-point"),
        ([[0.0, 1.0], [1.0, 0.0]], TypeError, "torch.Tensor"),
        (torch.randn(5, 2).half(), TypeError, "float32 or float64"),
        (torch.randn(5, 2).bfloat16(), TypeError, "float32 or float64"),
    ],
    ids=["empty", "one-point", "nan", "inf", "1-D", "3-D", "int", "bool", "list", "half", "bfloat16"],
)
def test_bad_points(fn, bad, exc, match) -> None:
    with pytest.raises(exc, match=match) as info:
        fn(bad)
    assert "points" in str(info.value)


@pytest.mark.parametrize("fn", [h0_diagram, h1_diagram, persistence_diagrams], ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "bad,exc,match",
    [
        (torch.rand(4, 5), ValueError, "square"),
        (torch.rand(4), ValueError, "square"),
        (torch.zeros(1, 1), ValueError, "at least 2 points"),
        (-torch.ones(3, 3), ValueError, "non-negative"),
        (torch.full((3, 3), float("nan")), ValueError, "finite"),
        (torch.ones(3, 3, dtype=torch.int64), TypeError, "floating-point"),
    ],
    ids=["non-square", "1-D", "1x1", "negative", "nan", "int"],
)
def test_bad_distance_matrix(fn, bad, exc, match) -> None:
    with pytest.raises(exc, match=match):
        fn(bad, distance_matrix=True)


@pytest.mark.parametrize(
    "bad,exc,match",
    [
        (torch.rand(4, 5), ValueError, "square"),
        (torch.zeros(1, 1), ValueError, "at least 2 points"),
        (torch.ones(3, 3, dtype=torch.int32), TypeError, "floating-point"),
    ],
)
def test_bad_mst_input(bad, exc, match) -> None:
    with pytest.raises(exc, match=f"distances.*{match}|{match}.*distances"):
        minimum_spanning_tree(bad)


@pytest.mark.parametrize("max_dim", [-1, 2, 3])
def test_bad_max_dim(max_dim: int) -> None:
    with pytest.raises(ValueError, match="max_dim"):
        persistence_diagrams(GOOD, max_dim=max_dim)


@pytest.mark.parametrize("max_dim", [1.0, "1", True])
def test_max_dim_wrong_type(max_dim) -> None:
    with pytest.raises(TypeError, match="max_dim"):
        persistence_diagrams(GOOD, max_dim=max_dim)


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="backend"):
        persistence_diagrams(GOOD, backend="gudhi")


def test_bad_diagrams_for_vectorisations() -> None:
    grid = torch.linspace(0, 1, 5)
    for fn in (total_persistence, persistence_entropy):
        with pytest.raises(ValueError, match="diagram"):
            fn(torch.rand(4, 3))
        with pytest.raises(TypeError, match="diagram"):
            fn(torch.ones(4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="finite"):
        total_persistence(torch.tensor([[0.0, float("inf")]]))
    with pytest.raises(ValueError, match="grid"):
        betti_curve(torch.rand(3, 2), grid.reshape(1, 5))
    with pytest.raises(ValueError, match="num_landscapes"):
        persistence_landscape(torch.rand(3, 2), grid, num_landscapes=0)
    with pytest.raises(ValueError, match="p must"):
        total_persistence(torch.rand(3, 2), p=0.0)


def test_huge_finite_values_are_accepted() -> None:
    # the sum overflows to inf in float32, but every entry is finite: must not raise
    x = torch.tensor([[3e38, 3e38], [3e38, -3e38], [0.0, 1.0]])
    pairwise_distances(x)
