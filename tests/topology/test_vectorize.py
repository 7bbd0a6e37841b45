"""Vectorisations: values on hand-made diagrams, empty diagrams, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_topo.topology import betti_curve, persistence_entropy, persistence_landscape, total_persistence

DGM = torch.tensor([[0.0, 1.0], [0.5, 2.5], [1.0, 1.5]], dtype=torch.float64)
EMPTY = torch.zeros(0, 2, dtype=torch.float64)
GRID = torch.tensor([0.0, 0.5, 1.0, 1.25, 2.0, 3.0], dtype=torch.float64)


def test_total_persistence() -> None:
    assert total_persistence(DGM).item() == pytest.approx(3.5)
    assert total_persistence(DGM, p=2.0).item() == pytest.approx(1 + 4 + 0.25)
    assert total_persistence(EMPTY).item() == 0.0


def test_entropy() -> None:
    q = torch.tensor([1.0, 2.0, 0.5]) / 3.5
    assert persistence_entropy(DGM).item() == pytest.approx(float(-(q * q.log()).sum()))
    assert persistence_entropy(EMPTY).item() == 0.0
    assert persistence_entropy(torch.tensor([[1.0, 1.0]])).item() == 0.0
    two = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert persistence_entropy(two).item() == pytest.approx(math.log(2))


def test_betti_curve() -> None:
    assert betti_curve(DGM, GRID).tolist() == [1.0, 2.0, 2.0, 2.0, 1.0, 0.0]
    assert betti_curve(EMPTY, GRID).tolist() == [0.0] * 6
    smooth = betti_curve(DGM, GRID, smoothing=1e-3)
    torch.testing.assert_close(
        smooth[[1, 3, 5]], torch.tensor([1.5, 2.0, 0.0], dtype=torch.float64), atol=1e-3, rtol=0
    )


def test_landscape() -> None:
    lam = persistence_landscape(DGM, GRID, num_landscapes=4)
    assert lam.shape == (4, 6)
    # t=1.25: tents = [0, min(0.75, 1.25)=0.75, min(0.25, 0.25)=0.25]
    assert lam[:, 3].tolist() == [0.75, 0.25, 0.0, 0.0]
    assert torch.all(lam[0] >= lam[1])
    assert persistence_landscape(EMPTY, GRID, num_landscapes=2).abs().sum() == 0


def test_gradients_flow() -> None:
    d = DGM.clone().requires_grad_(True)
    out = (
        total_persistence(d)
        + persistence_entropy(d)
        + betti_curve(d, GRID, smoothing=0.1).sum()
        + persistence_landscape(d, GRID, 3).sum()
        + betti_curve(d, GRID).sum()
    )
    out.backward()
    assert torch.isfinite(d.grad).all() and d.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(persistence_entropy, (DGM.clone().requires_grad_(True),))
    e = EMPTY.clone().requires_grad_(True)
    (total_persistence(e) + persistence_entropy(e) + persistence_landscape(e, GRID, 2).sum()).backward()
    assert e.grad.shape == (0, 2)


def test_dtype_preserved() -> None:
    d32 = DGM.float()
    for out in (
        total_persistence(d32),
        persistence_entropy(d32),
        betti_curve(d32, GRID),
        persistence_landscape(d32, GRID),
    ):
        assert out.dtype == torch.float32
