"""PSF's documented answers for duplicates, collapsed classes and reversed pairs (issue 25.7;
docs/psf.md, "Duplicates, collapsed classes and reversed pairs")."""

from __future__ import annotations

import warnings

import pytest
import torch

from lightning_topo.scores import psf
from lightning_topo.scores.psf import ZERO_LENGTH_RTOL, psf_from_diagrams
from lightning_topo.topology import persistence_entropy, total_persistence


def _cloud(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(40, 8, generator=g, dtype=dtype), torch.arange(40) % 2


def _twice(x, y, shift):
    return torch.cat([x, x + shift]), torch.cat([y, y])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_near_duplicates_score_like_exact_duplicates(dtype):
    x, y = _cloud(dtype)
    base = psf(x, y, seed=0)
    exact = psf(*_twice(x, y, 0.0), seed=0)
    near = psf(*_twice(x, y, 1e-7), seed=0)
    assert torch.allclose(exact, base, rtol=1e-6)
    assert torch.allclose(near, exact, rtol=1e-5), (float(near), float(exact))  # was about half


def test_duplicates_above_the_tolerance_are_distinct_points():
    """Points 1e-3 apart (relative to a cloud of scale ~3) are distinct: each adds a short H0 bar,
    and PSF (a mean over the bars) drops to about half, as its definition says."""
    x, y = _cloud()
    base = psf(x, y, seed=0)
    far = psf(*_twice(x, y, 1e-3), seed=0)
    assert 0.4 < float(far / base) < 0.7


def test_the_tolerance_is_relative_so_psf_stays_scale_invariant():
    x, y = _cloud()
    near = psf(*_twice(x, y, 1e-7), seed=0)
    tiny = psf(*_twice(x * 1e-6, y, 1e-13), seed=0)  # the same cloud and gap, scaled down
    assert torch.allclose(near, tiny, rtol=1e-5)


def test_bar_at_the_tolerance_is_dropped_and_just_above_is_kept():
    long = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    short = torch.tensor([[0.0, 0.5 * ZERO_LENGTH_RTOL], [0.0, 2.0 * ZERO_LENGTH_RTOL]], dtype=torch.float64)
    other = torch.tensor([[0.0, 0.5]], dtype=torch.float64)
    kept = psf_from_diagrams([torch.cat([long, other]), short[1:]])
    dropped = psf_from_diagrams([torch.cat([long, other]), short[:1]])
    plain = psf_from_diagrams([torch.cat([long, other])])
    assert torch.equal(dropped, plain)
    assert float(kept) < float(plain)  # one more (short) bar in the mean


def test_collapsed_class_warns_that_psf_is_constant():
    """19 identical points and one other: one bar, PSF 0.25 wherever the odd point is."""
    values = []
    for where in (1.0, 7.5):
        points = torch.zeros(40, 3, dtype=torch.float64)
        points[19] = where
        points[20:] += 10.0
        points[39] = 10.0 + 2 * where
        with pytest.warns(UserWarning, match="single persistence pair .* 0.25 whatever the points"):
            values.append(float(psf(points, torch.tensor([0] * 20 + [1] * 20), seed=0)))
    assert values == [0.25, 0.25]


def test_a_normal_cloud_does_not_warn():
    x, y = _cloud()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score = float(psf(x, y, seed=0))
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []
    assert 0.0 < score < 0.25  # a real cloud, not the single-pair constant


def test_gradients_flow_through_the_kept_bars():
    x, y = _cloud()
    x = torch.cat([x, x + 1e-9]).requires_grad_(True)
    psf(x, torch.cat([y, y]), seed=0).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "fn",
    [total_persistence, persistence_entropy, lambda d: psf_from_diagrams([d])],
    ids=["tp", "entropy", "psf"],
)
def test_death_before_birth_is_refused_not_clamped(fn):
    diagram = torch.tensor([[0.0, 1.0], [0.8, 0.3]])
    with pytest.raises(ValueError, match=r"death < birth, e.g. row 1"):
        fn(diagram)
