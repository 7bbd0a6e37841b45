"""PSF against an independent NumPy + ripser.py implementation of the BERTops formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_topo.scores import PRESETS, PSFLoss, get_preset, persistence_summary, psf, psf_per_class

ripser = pytest.importorskip("ripser")


def reference_psf(points: np.ndarray, labels: np.ndarray) -> tuple[float, list[float]]:
    """BERTops PSF with ripser.py (methods.md §2), written independently of the package."""
    per_class = []
    for c in np.unique(labels):
        dgms = ripser.ripser(points[labels == c], maxdim=1)["dgms"]
        pairs = np.concatenate([d[np.isfinite(d).all(axis=1)] for d in dgms[:2]]).astype(np.float64)
        pairs = pairs / pairs.max()
        b, d = pairs[:, 0], pairs[:, 1]

        def s(p, q, b=b, d=d):
            return float(np.sum(np.abs(d - b) ** p * np.abs((d + b) / 2) ** q))

        per_class.append(((s(3, 2) + s(2, 2)) / 2) / len(pairs))
    return float(np.mean(per_class)), per_class


def _cloud(seed: int, n: int, d: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    centres = torch.randn(k, d, generator=g, dtype=torch.float64) * 2
    points = centres[labels] + torch.randn(n, d, generator=g, dtype=torch.float64)
    return points, labels


@pytest.mark.parametrize("seed", range(12))
def test_matches_ripser_reference(seed):
    k = 2 + seed % 3
    n = 30 + 7 * seed
    d = 2 + seed % 5
    points, labels = _cloud(seed, n, d, k)
    expected, expected_per_class = reference_psf(points.numpy(), labels.numpy())
    got = psf(points, labels, sampling="none")
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    np.testing.assert_allclose(
        psf_per_class(points, labels, sampling="none").numpy(), expected_per_class, rtol=1e-5
    )


def test_noncontiguous_labels_and_float32():
    points, labels = _cloud(3, 50, 4, 2)
    labels = torch.where(labels == 0, 7, 3)
    expected, _ = reference_psf(points.numpy(), labels.numpy())
    np.testing.assert_allclose(float(psf(points.float(), labels)), expected, rtol=1e-4)


def test_gradcheck():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(14, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(14) % 2
    assert torch.autograd.gradcheck(lambda x: psf(x, labels, sampling="none"), (points,), eps=1e-6, atol=1e-5)


def test_gradient_flows_through_subsample():
    points, labels = _cloud(1, 80, 3, 2)
    points.requires_grad_(True)
    psf(points, labels, max_points_per_class=20).backward()
    assert torch.isfinite(points.grad).all()
    assert (points.grad.abs().sum(dim=1) > 0).sum() <= 40  # only sampled points get gradient


def test_permutation_invariant():
    points, labels = _cloud(5, 60, 4, 3)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(1))
    a = psf(points, labels, sampling="none")
    b = psf(points[perm], labels[perm], sampling="none")
    torch.testing.assert_close(a, b, rtol=1e-10, atol=0)
    # with subsampling too: sampling uses a canonical order of the points
    a = psf(points, labels, max_points_per_class=12, seed=3)
    b = psf(points[perm], labels[perm], max_points_per_class=12, seed=3)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=0)


@pytest.mark.parametrize("c", [1e-3, 0.5, 3.0, 250.0])
def test_scale_invariant(c):
    # every pair is divided by the largest coordinate, so scaling by c > 0 cancels
    points, labels = _cloud(2, 50, 3, 2)
    torch.testing.assert_close(psf(points * c, labels), psf(points, labels), rtol=1e-9, atol=0)


def test_translation_invariant():
    points, labels = _cloud(2, 50, 3, 2)
    torch.testing.assert_close(psf(points + 10.0, labels), psf(points, labels), rtol=1e-7, atol=0)


def test_seeded_sampling_is_deterministic():
    points, labels = _cloud(4, 200, 5, 2)
    a = psf(points, labels, max_points_per_class=30, seed=1)
    assert float(a) == float(psf(points, labels, max_points_per_class=30, seed=1))
    assert float(a) != float(psf(points, labels, max_points_per_class=30, seed=2))


def test_bertops_preset_kde_resample():
    preset = get_preset("bertops")
    assert preset.sampling == "kde" and preset.max_points_per_class == 5000 and preset.bandwidth == 1.0
    assert preset.layer == -1 and preset.pooling == "cls"
    points, labels = _cloud(4, 120, 5, 2)
    # classes at or below the cap are used as they are: same as no sampling
    torch.testing.assert_close(psf(points, labels, preset="bertops"), psf(points, labels, sampling="none"))
    # above the cap: resample with N(0, 1) noise (KDE, bandwidth 1), seeded
    a = psf(points, labels, preset="bertops", max_points_per_class=40, seed=0)
    b = psf(points, labels, preset="bertops", max_points_per_class=40, seed=0)
    assert float(a) == float(b)
    assert float(a) != float(psf(points, labels, max_points_per_class=40, seed=0))
    assert set(PRESETS) >= {"default", "bertops"}


def test_summary_consistent_with_psf():
    points, labels = _cloud(6, 60, 3, 2)
    s = persistence_summary(points, labels, sampling="none")
    torch.testing.assert_close(s.psf, psf(points, labels, sampling="none"))
    assert set(s.total_persistence) == {0, 1} and set(s.entropy) == {0, 1}
    h0_total = np.mean(
        [ripser.ripser(points[labels == c].numpy(), maxdim=0)["dgms"][0][:-1, 1].sum() for c in (0, 1)]
    )
    np.testing.assert_allclose(float(s.total_persistence[0]), h0_total, rtol=1e-5)
    assert s.num_points == {0: 30, 1: 30}


def test_psf_loss_sign_and_weight():
    points, labels = _cloud(7, 40, 3, 2)
    value = psf(points, labels)
    torch.testing.assert_close(PSFLoss(weight=2.0, mode="max")(points, labels), -2 * value)
    torch.testing.assert_close(PSFLoss(weight=0.5, mode="min")(points, labels), 0.5 * value)
    x = points.clone().requires_grad_(True)
    PSFLoss(mode="min")(x, labels).backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="mode"):
        PSFLoss(mode="up")
    with pytest.raises(ValueError, match="weight"):
        PSFLoss(weight=-1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"weight": float("nan")}, ValueError, "weight must be a finite number >= 0.0; got nan"),
        ({"weight": float("inf")}, ValueError, "weight must be a finite number"),
        ({"weight": "0.1"}, TypeError, "weight must be a finite number >= 0.0; got '0.1' \\(str\\)"),
        ({"weight": None}, TypeError, "weight"),
        ({"weight": True}, TypeError, "weight"),
        ({"bandwidth": float("nan")}, ValueError, "bandwidth must be a finite number > 0.0; got nan"),
        ({"bandwidth": 0.0}, ValueError, "bandwidth"),
        ({"seed": None}, TypeError, "seed must be an int >= 0; got None"),
        ({"seed": 1.5}, TypeError, "seed"),
        (
            {"max_points_per_class": 2.5},
            TypeError,
            "max_points_per_class must be an int >= 2 or None; got 2.5",
        ),
        ({"sampling": "fps"}, ValueError, "sampling must be one of"),
        ({"preset": "paper"}, ValueError, "preset must be one of"),
        ({"backend": "gpu"}, ValueError, "backend must be one of"),
        ({"mode": "up"}, ValueError, "mode must be one of"),
    ],
)
def test_psf_loss_refuses_bad_arguments_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        PSFLoss(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"max_points_per_class": 2.5},
            TypeError,
            "max_points_per_class must be an int >= 2 or None; got 2.5",
        ),
        ({"max_points_per_class": 2.0}, TypeError, "max_points_per_class"),
        (
            {"bandwidth": float("nan"), "sampling": "kde"},
            ValueError,
            "bandwidth must be a finite number > 0.0",
        ),
        ({"bandwidth": "1"}, TypeError, "bandwidth"),
        ({"seed": None}, TypeError, "seed must be an int >= 0; got None"),
        ({"seed": -1}, ValueError, "seed must be an int >= 0; got -1"),
    ],
)
def test_psf_refuses_bad_arguments(kwargs, error, match):
    points, labels = _cloud(8, 20, 3, 2)
    with pytest.raises(error, match=match):
        psf(points, labels, **kwargs)


def test_preset_fields_are_validated():
    from lightning_topo.scores import PSFPreset

    with pytest.raises(ValueError, match="pooling"):
        PSFPreset(pooling="max")
    with pytest.raises(TypeError, match="layer must be an int"):
        PSFPreset(layer=1.7)
    with pytest.raises(ValueError, match="bandwidth"):
        get_preset("bertops").override(bandwidth=float("nan"))
    with pytest.raises(ValueError, match="split"):
        PSFPreset(split="test")
    assert not hasattr(PSFPreset(), "max_dim")  # PSF always uses H0 and H1


def test_bad_inputs():
    points, labels = _cloud(8, 20, 3, 2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        psf(points, torch.zeros(20, dtype=torch.long))
    with pytest.raises(ValueError, match="labels has 19 entries"):
        psf(points, labels[:19])
    one = labels.clone()
    one[:] = 0
    one[0] = 1
    with pytest.raises(ValueError, match="at least 2 points"):
        psf(points, one)
    bad = points.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="points must be finite"):
        psf(bad, labels)
    with pytest.raises(TypeError, match="integer dtype"):
        psf(points, labels.double())
    with pytest.raises(ValueError, match="preset"):
        psf(points, labels, preset="fast")
    with pytest.raises(ValueError, match="sampling must be one of"):
        psf(points, labels, sampling="stratified", max_points_per_class=4)
    with pytest.raises(ValueError, match="max_points_per_class"):
        psf(points, labels, max_points_per_class=1)
    with pytest.raises(ValueError, match="homology_dims"):
        persistence_summary(points, labels, homology_dims=(2,))
    same = torch.ones(20, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="identical"):
        psf(same, labels)


# ---------------------------------------------------------------- resamples (issue 18)


def test_resamples_one_is_the_single_draw_exactly():
    points, labels = _cloud(2, 120, 4, 2)
    for seed in (0, 7):
        single = psf(points, labels, max_points_per_class=30, seed=seed)
        mean, stderr = psf(points, labels, max_points_per_class=30, seed=seed, resamples=1, return_std=True)
        assert mean.item() == single.item()
        assert stderr.item() == 0.0


def test_resamples_is_the_mean_of_independent_draws_with_its_standard_error():
    points, labels = _cloud(3, 160, 4, 2)
    mean, stderr = psf(points, labels, max_points_per_class=30, seed=4, resamples=5, return_std=True)
    from lightning_topo.scores.sampling import draw_seeds

    draws = np.array([float(psf(points, labels, max_points_per_class=30, seed=s)) for s in draw_seeds(4, 5)])
    assert len(set(draws.tolist())) == 5  # the draws really differ
    np.testing.assert_allclose(float(mean), draws.mean(), rtol=1e-12)
    np.testing.assert_allclose(float(stderr), draws.std(ddof=1) / np.sqrt(5), rtol=1e-10)
    assert draws[0] == float(psf(points, labels, max_points_per_class=30, seed=4))  # draw 0 = seed


def test_resamples_changes_nothing_when_no_class_exceeds_the_cap():
    points, labels = _cloud(4, 60, 3, 2)  # 30 per class
    mean, stderr = psf(points, labels, max_points_per_class=30, resamples=4, return_std=True)
    assert mean.item() == psf(points, labels, max_points_per_class=30).item()
    assert stderr.item() == 0.0


def test_resamples_gradcheck_through_the_mean():
    g = torch.Generator().manual_seed(1)
    points = torch.randn(16, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(16) % 2  # 8 per class, cap 6: two different draws

    def fn(x):
        return psf(x, labels, max_points_per_class=6, resamples=2)

    assert torch.autograd.gradcheck(fn, (points,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"resamples": 0}, ValueError, "resamples"),
        ({"resamples": 2.0}, TypeError, "resamples"),
        ({"return_std": "yes"}, TypeError, "return_std"),
    ],
)
def test_resamples_refuses_bad_values(kwargs, error, match):
    points, labels = _cloud(0, 20, 3, 2)
    with pytest.raises(error, match=match):
        psf(points, labels, **kwargs)
