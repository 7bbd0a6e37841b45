"""Gradients: gradcheck of total persistence (H0, H1), safe gradient at zero distance."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from lightning_topo.topology import (
    h0_diagram,
    h1_diagram,
    pairwise_distances,
    persistence_diagrams,
    total_persistence,
)


def _cloud(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_(True)


def test_gradcheck_h0_total_persistence() -> None:
    x = _cloud(10, 3, 0)
    assert gradcheck(lambda p: total_persistence(h0_diagram(p)), (x,), eps=1e-6, atol=1e-5)
    assert gradcheck(lambda p: total_persistence(h0_diagram(p), p=2.0), (x,), eps=1e-6, atol=1e-5)


def test_gradcheck_h1_total_persistence() -> None:
    x = _cloud(14, 2, 3)
    assert h1_diagram(x).shape[0] > 0, "test cloud must have loops"
    assert gradcheck(lambda p: total_persistence(h1_diagram(p)), (x,), eps=1e-6, atol=1e-5)


def test_gradcheck_distance_matrix_input() -> None:
    x = _cloud(12, 2, 3)
    assert gradcheck(
        lambda p: sum(
            total_persistence(d) for d in persistence_diagrams(pairwise_distances(p), 1, distance_matrix=True)
        ),
        (x,),
        eps=1e-6,
        atol=1e-5,
    )


def test_gradcheck_pairwise_distances() -> None:
    x = _cloud(6, 3, 1)
    assert gradcheck(pairwise_distances, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pairwise_distances_exact_symmetric_accurate(dtype: torch.dtype) -> None:
    x = (torch.randn(200, 30, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3 + 1).to(
        dtype
    )
    dist = pairwise_distances(x)
    assert dist.dtype == dtype
    assert torch.equal(dist, dist.T) and torch.all(dist.diagonal() == 0)
    exact = (x.double()[:, None] - x.double()[None]).norm(dim=-1)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(dist.double(), exact, atol=tol, rtol=0)


def test_safe_gradient_at_coincident_points() -> None:
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    dist = pairwise_distances(x)
    assert torch.all(dist.diagonal() == 0) and dist[0, 1] == 0
    dist.sum().backward()
    assert torch.isfinite(x.grad).all()
    y = x.detach().clone().requires_grad_(True)
    (total_persistence(h0_diagram(y)) + total_persistence(h1_diagram(y))).backward()
    assert torch.isfinite(y.grad).all()


def test_float32_backward() -> None:
    x = torch.randn(30, 4, requires_grad=True)
    loss = sum(total_persistence(d) for d in persistence_diagrams(x))
    loss.backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
