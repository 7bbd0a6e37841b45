"""RankMe (Garrido et al. 2023): the effective rank of embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_topo.scores.rankme import rankme


def _reference(z: np.ndarray, eps: float = 1e-7) -> float:
    """The paper's formula written independently with NumPy."""
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def test_matches_an_independent_numpy_implementation():
    g = torch.Generator().manual_seed(0)
    for n, d in ((50, 8), (7, 30), (200, 64)):
        z = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(
            d, d, generator=g, dtype=torch.float64
        )
        assert float(rankme(z)) == pytest.approx(_reference(z.numpy()), rel=1e-9)


def test_extremes_one_direction_and_equal_singular_values():
    line = torch.outer(
        torch.arange(1.0, 11.0, dtype=torch.float64), torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    )
    assert float(rankme(line)) == pytest.approx(1.0, abs=1e-4)  # rank 1
    eye = torch.eye(6, dtype=torch.float64)
    assert float(rankme(eye)) == pytest.approx(6.0, rel=1e-5)  # 6 equal singular values
    # rank k inside a higher dimension: effective rank ~k when the k directions are balanced
    q, _ = torch.linalg.qr(
        torch.randn(20, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    )
    assert float(rankme(q[:, :4] * 3.0)) == pytest.approx(4.0, rel=1e-4)


def test_invariant_to_scale_and_rotation_and_differentiable():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(40, 5, generator=g, dtype=torch.float64) * torch.tensor(
        [5.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64
    )
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    assert float(rankme(3.7 * z @ q)) == pytest.approx(float(rankme(z)), rel=1e-9)
    assert 1.0 < float(rankme(z)) < 5.0  # unequal spectrum: between 1 and min(n, d)
    x = z.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: rankme(t), (x,))


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (np.zeros((3, 2)), TypeError, "float torch.Tensor"),
        (torch.ones(3, 2, dtype=torch.long), TypeError, "float"),
        (torch.ones(3), ValueError, "2-D"),
        (torch.zeros(3, 2), ValueError, "all zero"),
        (torch.tensor([[1.0, math.nan]]), ValueError, "finite"),
    ],
)
def test_bad_input(value, error, match):
    with pytest.raises(error, match=match):
        rankme(value)


@pytest.mark.parametrize("eps", [0.0, -1.0, math.nan])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        rankme(torch.eye(3), eps=eps)
