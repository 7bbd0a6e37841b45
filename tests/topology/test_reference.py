"""Our diagrams equal gudhi's and ripser.py's (finite pairs, zero-length bars dropped)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_topo.topology import h0_diagram, h1_diagram, pairwise_distances, persistence_diagrams

from ._clouds import reference_clouds

gudhi = pytest.importorskip("gudhi")
ripser = pytest.importorskip("ripser")

CLOUDS = reference_clouds()
TOL = 1e-5


def _finite_sorted(pairs: np.ndarray) -> np.ndarray:
    pairs = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    pairs = pairs[np.isfinite(pairs).all(axis=1) & (pairs[:, 1] > pairs[:, 0])]
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _gudhi(points: np.ndarray) -> list[np.ndarray]:
    st = gudhi.RipsComplex(points=points).create_simplex_tree(max_dimension=2)
    st.compute_persistence()  # min_persistence=0: zero-length bars are not reported
    return [_finite_sorted(st.persistence_intervals_in_dimension(k)) for k in (0, 1)]


def _ripser(points: np.ndarray) -> list[np.ndarray]:
    # exact distances: ripser.py's own point-cloud path (a GEMM) turns duplicates into ~1e-8 bars
    dm = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    return [_finite_sorted(dgm) for dgm in ripser.ripser(dm, maxdim=1, distance_matrix=True)["dgms"]]


def _ours(x: torch.Tensor, distance_matrix: bool = False) -> list[np.ndarray]:
    return [
        _finite_sorted(d.detach().numpy())
        for d in persistence_diagrams(x, 1, distance_matrix=distance_matrix)
    ]


def _assert_same(ours: list[np.ndarray], ref: list[np.ndarray], who: str) -> None:
    for k in (0, 1):
        assert ours[k].shape == ref[k].shape, f"H{k}: {ours[k].shape} vs {who} {ref[k].shape}"
        np.testing.assert_allclose(ours[k], ref[k], atol=TOL, rtol=0, err_msg=f"H{k} vs {who}")


@pytest.mark.parametrize("name,x", CLOUDS, ids=[c[0] for c in CLOUDS])
def test_matches_gudhi_and_ripser(name: str, x: torch.Tensor) -> None:
    ours = _ours(x)
    pts = x.numpy()
    _assert_same(ours, _gudhi(pts), "gudhi")
    _assert_same(ours, _ripser(pts), "ripser.py")


@pytest.mark.parametrize("name,x", CLOUDS[::4], ids=[c[0] for c in CLOUDS[::4]])
def test_distance_matrix_input_matches(name: str, x: torch.Tensor) -> None:
    ours_dm = _ours(pairwise_distances(x), distance_matrix=True)
    _assert_same(ours_dm, _ripser(x.numpy()), "ripser.py")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_layout(dtype: torch.dtype) -> None:
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
    h0 = h0_diagram(x)
    h1 = h1_diagram(x)
    for dgm in (h0, h1):
        assert dgm.dtype == dtype and dgm.device == x.device and dgm.shape[1] == 2
    assert torch.all(h0[:, 0] == 0)
    assert h0.shape[0] == 29
    assert torch.all(h0[1:, 1] >= h0[:-1, 1]), "H0 deaths sorted ascending"
    assert torch.all(h1[:, 1] > h1[:, 0])


def test_float32_close_to_float64() -> None:
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d64 = persistence_diagrams(x)
    d32 = persistence_diagrams(x.float())
    for a, b in zip(d64, d32, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b.double(), a, atol=1e-5, rtol=0)


def test_duplicates_drop_zero_bars() -> None:
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [5.0, 0.0]], dtype=torch.float64)
    h0 = h0_diagram(x)
    torch.testing.assert_close(h0, torch.tensor([[0.0, 1.0], [0.0, 4.0]], dtype=torch.float64))
    assert h1_diagram(x).shape == (0, 2)
