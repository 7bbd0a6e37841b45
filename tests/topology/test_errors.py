"""Every documented bad input raises the documented error, naming the argument."""

from __future__ import annotations

import math

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
    pairs = torch.rand(3, 2).sort(dim=1).values  # a valid diagram (death >= birth) for the other checks
    with pytest.raises(ValueError, match="death < birth"):
        total_persistence(torch.tensor([[0.5, 0.2]]))
    for fn in (total_persistence, persistence_entropy):
        with pytest.raises(ValueError, match="diagram"):
            fn(torch.rand(4, 3))
        with pytest.raises(TypeError, match="diagram"):
            fn(torch.ones(4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="finite"):
        total_persistence(torch.tensor([[0.0, float("inf")]]))
    with pytest.raises(ValueError, match="grid"):
        betti_curve(pairs, grid.reshape(1, 5))
    with pytest.raises(ValueError, match="num_landscapes"):
        persistence_landscape(pairs, grid, num_landscapes=0)
    with pytest.raises(ValueError, match="p must"):
        total_persistence(pairs, p=0.0)


@pytest.mark.parametrize(
    "dtype,size",
    [(torch.float32, 1e19), (torch.float64, 1e160), (torch.float32, 1e-25), (torch.float64, 1e-170)],
    ids=["float32-1e19", "float64-1e160", "float32-1e-25", "float64-1e-170"],
)
def test_huge_and_tiny_points_give_scaled_diagrams(dtype: torch.dtype, size: float) -> None:
    # squared distances overflow (or underflow) the dtype; the engine works on an exactly
    # scaled copy, so the diagrams are those of the unit-size cloud times the size
    unit = torch.randn(40, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    scale = 2.0 ** round(math.log2(size))  # a power of two: unit * scale is exact
    x = (unit * scale).to(dtype)
    ref = [d * scale for d in persistence_diagrams(unit.to(dtype), 1)]
    ours = persistence_diagrams(x, 1)
    assert ours[0].shape[0] == 39 and ours[1].shape[0] > 0
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        pairwise_distances(x), pairwise_distances(unit.to(dtype)) * scale, rtol=1e-5, atol=0
    )


@pytest.mark.parametrize("fn", FUNCS, ids=lambda f: f.__name__)
def test_distances_beyond_the_dtype_raise(fn) -> None:
    # every entry is finite, but the square's sides (4e38) exceed float32's 3.4e38
    x = torch.tensor([[2e38, 2e38], [2e38, -2e38], [-2e38, -2e38], [-2e38, 2e38]])
    with pytest.raises(ValueError, match=r"exceed the largest torch.float32.*points.double\(\)"):
        fn(x)
    assert fn(x.double()) is not None


@pytest.mark.parametrize("fn", [h0_diagram, h1_diagram, persistence_diagrams], ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "fix,match",
    [("asym", "must be symmetric"), ("diag", "zero diagonal")],
    ids=["asymmetric", "non-zero-diagonal"],
)
def test_distance_matrix_must_be_symmetric_with_zero_diagonal(fn, fix: str, match: str) -> None:
    dm = pairwise_distances(torch.randn(12, 3, generator=torch.Generator().manual_seed(5)))
    bad = dm.clone()
    if fix == "asym":
        bad[2, 7] += 0.5
    else:
        bad[3, 3] = 0.5
    with pytest.raises(ValueError, match=match) as info:
        fn(bad, distance_matrix=True)
    assert "points" in str(info.value)
    fn(dm, distance_matrix=True)  # the matrix it came from is accepted


def test_cdist_output_is_accepted() -> None:
    # torch.cdist's GEMM leaves a diagonal of ~sqrt(eps)|x|: rounding, not a wrong matrix
    import gph

    x = torch.randn(300, 768, generator=torch.Generator().manual_seed(6)) + 3.0
    dm = torch.cdist(x, x)
    assert float(dm.diagonal().max()) > 0
    h0, h1 = persistence_diagrams(dm, distance_matrix=True)
    assert h0.shape[0] == 299
    ref = gph.ripser_parallel(dm.fill_diagonal_(0).numpy(), maxdim=1, metric="precomputed")["dgms"][1]
    ref = torch.from_numpy(ref[torch.from_numpy(ref[:, 1] > ref[:, 0]).numpy()])
    ref = ref[torch.argsort(ref[:, 1], stable=True)]
    ref = ref[torch.argsort(ref[:, 0], stable=True)]
    torch.testing.assert_close(h1, ref, atol=0, rtol=0)


def test_minimum_spanning_tree_refuses_asymmetric() -> None:
    dm = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [5.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match="distances must be symmetric"):
        minimum_spanning_tree(dm)


@pytest.mark.parametrize("n_threads", [0, -2, 1.5, "2", True])
def test_bad_n_threads(n_threads) -> None:
    with pytest.raises(ValueError, match="n_threads"):
        h1_diagram(GOOD, n_threads=n_threads)


@pytest.mark.parametrize(
    "call,what",
    [
        (lambda x: persistence_diagrams(x, 1), "H1 persistence"),
        (lambda x: persistence_diagrams(x, 0), "persistence"),
        (h0_diagram, "persistence"),
        (pairwise_distances, "pairwise_distances"),
    ],
    ids=["h0-h1", "h0-only", "h0_diagram", "pairwise"],
)
def test_matrix_too_large_for_memory(monkeypatch, call, what: str) -> None:
    from lightning_topo.topology import _memory

    x = torch.randn(100, 3)
    monkeypatch.setattr(_memory, "available_bytes", lambda device: 10_000)
    with pytest.raises(MemoryError, match=what) as info:
        call(x)
    message = str(info.value)
    assert "100 points" in message and "0.01 MB is available" in message
    assert "max_points_per_class" in message
    fits = int(message.split("about ")[2].split(" fit")[0])
    assert 1 <= fits < 100
    monkeypatch.setattr(_memory, "available_bytes", lambda device: None)  # unknown: no check
    call(x)


def test_available_memory_is_read() -> None:
    from lightning_topo.topology import _memory

    available = _memory.available_bytes(torch.device("cpu"))
    assert available is None or 0 < available < 2**50
