"""persistence_metrics / metric_names (what a lens logs) and correlation_metrics."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

from lightning_topo.scores import (
    correlation_metrics,
    get_preset,
    metric_names,
    pearson_spearman,
    persistence_metrics,
    persistence_summary,
)
from lightning_topo.scores.sampling import draw_seeds, half_sample_pairs
from lightning_topo.scores.summary import examples_stderr


def _layers(seed: int = 0, n: int = 40):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    points = {
        layer: torch.randn(n, 4, generator=g, dtype=torch.float64) + labels[:, None] * layer
        for layer in (0, 2, 1)
    }
    return points, labels


def test_metrics_match_summary_of_each_layer():
    points, labels = _layers()
    got = persistence_metrics(points, labels, preset="default", seed=3)
    assert got.layer == 2  # the deepest layer is the primary one, whatever the order
    assert list(got.values) == metric_names([0, 2, 1], [0, 1])
    for layer, cloud in points.items():
        ref = persistence_summary(cloud, labels, seed=3)
        torch.testing.assert_close(got.values[f"psf/layer_{layer}"], ref.psf)
    primary = persistence_summary(points[2], labels, seed=3)
    torch.testing.assert_close(got.values["psf"], primary.psf)
    torch.testing.assert_close(got.values["psf/class_1"], primary.psf_per_class[1])
    torch.testing.assert_close(got.values["h1/entropy"], primary.entropy[1])
    torch.testing.assert_close(got.values["h0/total_persistence"], primary.total_persistence[0])
    assert got.num_points == {0: 20, 1: 20} and set(got.diagrams) == {0, 1}


def test_metric_names_follow_scores_and_dims():
    names = metric_names([3], [0, 5], scores=("entropy",), homology_dims=(1,))
    assert names == ["h1/entropy"]
    assert metric_names([1, 3], [7], scores=("psf",), homology_dims=(0,)) == [
        "psf",
        "psf/layer_1",
        "psf/layer_3",
        "psf/class_7",
    ]
    points, labels = _layers()
    got = persistence_metrics(points, labels, scores=("total_persistence",), homology_dims=(0,))
    assert list(got.values) == ["h0/total_persistence"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scores": ("psf", "landscape")}, "scores must be a non-empty subset"),
        ({"scores": ()}, "scores"),
        ({"homology_dims": (0, 2)}, "homology_dims"),
        ({"homology_dims": (0.5,)}, "homology_dims"),
        ({"homology_dims": ()}, "homology_dims"),
    ],
)
def test_metrics_bad_arguments(kwargs, match):
    points, labels = _layers()
    with pytest.raises(ValueError, match=match):
        persistence_metrics(points, labels, **kwargs)


def test_metrics_need_a_layer():
    with pytest.raises(ValueError, match="at least one layer"):
        persistence_metrics({}, torch.zeros(3, dtype=torch.long))


def test_correlations_equal_torchmetrics_and_skip_short_series():
    acc = [0.5, 0.6, 0.7, 0.65, 0.8]
    series = {"topo/psf": [0.05, 0.04, 0.045, 0.03, 0.02], "topo/h0/entropy": [1.0, math.nan, 2.0, 2.5, 2.0]}
    out = correlation_metrics(series, acc, target_name="val/acc")
    x = torch.tensor(series["topo/psf"], dtype=torch.float64)
    y = torch.tensor(acc, dtype=torch.float64)
    assert float(out["topo/psf/pearson_val_acc"]) == pytest.approx(float(pearson_corrcoef(x, y)))
    assert float(out["topo/psf/spearman_val_acc"]) == pytest.approx(float(spearman_corrcoef(x, y)))
    assert float(out["topo/psf/pearson_val_acc"]) < -0.7  # falling score, rising accuracy
    # the NaN measurement is left out: 4 finite pairs
    keep = [0, 2, 3, 4]
    expected = pearson_corrcoef(
        torch.tensor([series["topo/h0/entropy"][i] for i in keep], dtype=torch.float64),
        torch.tensor([acc[i] for i in keep], dtype=torch.float64),
    )
    assert float(out["topo/h0/entropy/pearson_val_acc"]) == pytest.approx(float(expected))
    # entropy keeps only 2 finite pairs here (< min_points=3): no value rather than a noisy one
    sparse = correlation_metrics(series, [math.nan, 0.1, math.nan, 0.2, 0.3], target_name="m")
    assert set(sparse) == {"topo/psf/pearson_m", "topo/psf/spearman_m"}


def test_constant_series_is_nan_and_lengths_must_match():
    p, s = pearson_spearman([1.0, 1.0, 1.0], [0.1, 0.2, 0.3])
    assert math.isnan(float(p)) and math.isnan(float(s))
    with pytest.raises(ValueError, match="same length"):
        pearson_spearman([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="has 2 values but target has 3"):
        correlation_metrics({"a": [1.0, 2.0]}, [1.0, 2.0, 3.0], target_name="m")


def test_resamples_one_gives_todays_values_and_names():
    points, labels = _layers(n=60)
    preset = get_preset("default").override(max_points_per_class=20)
    today = persistence_metrics(points, labels, preset=preset, seed=2)
    one = persistence_metrics(points, labels, preset=preset, seed=2, resamples=1)
    assert list(one.values) == list(today.values) == metric_names([0, 2, 1], [0, 1])
    assert all(one.values[n].item() == today.values[n].item() for n in today.values)


def test_resamples_logs_means_and_standard_errors():
    points, labels = _layers(n=80)
    preset = get_preset("default").override(max_points_per_class=25)
    got = persistence_metrics(points, labels, preset=preset, seed=1, resamples=3)
    assert list(got.values) == metric_names([0, 2, 1], [0, 1], resamples=3)
    assert {"psf/std", "h0/total_persistence/std", "h1/total_persistence/std", "h1/entropy/std"} <= set(
        got.values
    )
    draws = [persistence_metrics(points, labels, preset=preset, seed=s) for s in draw_seeds(1, 3)]
    for name in ("psf", "psf/layer_0", "psf/class_1", "h1/total_persistence"):
        vals = torch.stack([d.values[name] for d in draws])
        torch.testing.assert_close(got.values[name], vals.mean())
        if name in ("psf", "h1/total_persistence"):
            torch.testing.assert_close(got.redraw_std[name], vals.std() / math.sqrt(3))
            expected = torch.hypot(got.examples_std[name], got.redraw_std[name])
            torch.testing.assert_close(got.values[f"{name}/std"], expected)
    assert float(got.values["psf/std"]) > float(got.redraw_std["psf"]) > 0


def test_resamples_without_a_class_above_the_cap_has_zero_redraw_std_but_a_std_from_the_examples():
    points, labels = _layers(n=40)  # 20 per class, cap 512: every re-draw is the whole set
    got = persistence_metrics(points, labels, resamples=5)
    assert got.values["psf"].item() == persistence_metrics(points, labels).values["psf"].item()
    assert float(got.redraw_std["psf"]) == 0.0
    assert float(got.values["psf/std"]) > 0  # issue 26: was exactly 0 here
    assert got.values["psf/std"].item() == pytest.approx(got.examples_std["psf"].item())
    old = persistence_metrics(points, labels, resamples=5, std_splits=0)  # the re-draw part only
    assert float(old.values["psf/std"]) == 0.0 and not old.examples_std


def test_std_is_positive_on_a_60_sentence_validation_set():
    # 60 examples, 30 per class, like a 60-sentence validation split: the re-draw spread is 0
    g = torch.Generator().manual_seed(5)
    labels = torch.arange(60) % 2
    points = {6: torch.randn(60, 16, generator=g) + 0.5 * labels[:, None]}
    got = persistence_metrics(points, labels, resamples=5)
    for name in ("psf", "h0/total_persistence", "h0/entropy", "h1/total_persistence", "h1/entropy"):
        assert float(got.values[f"{name}/std"]) > 0, name
        assert float(got.redraw_std[name]) == 0.0, name


def test_std_combines_examples_and_redraws_in_quadrature():
    points, labels = _layers(n=80)
    preset = get_preset("default").override(max_points_per_class=25)  # re-draws differ
    got = persistence_metrics(points, labels, preset=preset, seed=1, resamples=3, std_splits=4)
    for name in ("psf", "h1/entropy"):
        ex, rd = float(got.examples_std[name]), float(got.redraw_std[name])
        assert ex > 0 and rd > 0
        assert float(got.values[f"{name}/std"]) == pytest.approx(math.hypot(ex, rd))
    # the examples part is examples_stderr of the primary layer (layer 2)
    ref = examples_stderr(points[2], labels, preset=preset, seed=1, splits=4)
    assert float(got.examples_std["psf"]) == pytest.approx(float(ref["psf"]))


def test_examples_stderr_matches_the_spread_between_independent_data_sets():
    # truth: SD of PSF over 40 independent data sets of 48 points per class from one distribution
    g = torch.Generator().manual_seed(11)
    centres = torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]], dtype=torch.float64)
    scales = torch.tensor([1.0, 0.6], dtype=torch.float64)[:, None]
    labels = torch.arange(96) % 2
    values, estimates = [], []
    for _ in range(40):
        x = centres[labels] + scales[labels] * torch.randn(96, 3, generator=g, dtype=torch.float64)
        values.append(float(persistence_summary(x, labels).psf))
        estimates.append(float(examples_stderr(x, labels, splits=4)["psf"]))
    truth = float(torch.tensor(values).std())
    ratio = sum(estimates) / len(estimates) / truth
    # issue 26's criterion, within 1.5x; PSF's SD falls faster than 1/sqrt(n) here, so the
    # sqrt(m/n) extrapolation from halves overestimates a little (measured 1.1-1.2 at this n);
    # a lost sqrt(m/n) factor (x 1.41 more) would fail
    assert 1 / 1.5 < ratio < 1.5, (ratio, truth)


def test_examples_stderr_does_not_depend_on_the_row_order_and_small_classes_are_used_whole():
    g = torch.Generator().manual_seed(3)
    labels = torch.cat([torch.zeros(30, dtype=torch.long), torch.ones(3, dtype=torch.long)])
    x = torch.randn(33, 5, generator=g, dtype=torch.float64)
    perm = torch.randperm(33, generator=g)
    a = examples_stderr(x, labels, splits=3, seed=2)
    b = examples_stderr(x[perm], labels[perm], splits=3, seed=2)
    assert all(float(a[n]) == pytest.approx(float(b[n]), rel=1e-12) for n in a)
    assert float(a["psf"]) > 0  # class 0 (30 points) is split; class 1 (3 points) is used whole
    pairs, sizes = half_sample_pairs(labels, x, 512, 2, 2)
    assert sizes == {0: (15, 30), 1: (3, 3)}
    for rows_a, rows_b in pairs:
        ones_a, ones_b = (r[labels[r] == 1] for r in (rows_a, rows_b))
        assert sorted(ones_a.tolist()) == sorted(ones_b.tolist()) == [30, 31, 32]
        zeros_a, zeros_b = (set(r[labels[r] == 0].tolist()) for r in (rows_a, rows_b))
        assert len(zeros_a) == len(zeros_b) == 15 and not zeros_a & zeros_b  # disjoint halves
    capped, sizes = half_sample_pairs(labels, x, 4, 2, 1)
    assert sizes[0] == (4, 30)  # halves never exceed the cap


@pytest.mark.parametrize(("value", "error"), [(-1, ValueError), (2.5, TypeError), ("10", TypeError)])
def test_bad_std_splits(value, error):
    points, labels = _layers()
    with pytest.raises(error, match="std_splits"):
        persistence_metrics(points, labels, resamples=2, std_splits=value)


def test_metric_names_with_resamples():
    assert metric_names([1], [0], scores=("psf", "total_persistence"), homology_dims=(1,), resamples=2) == [
        "psf",
        "psf/std",
        "psf/layer_1",
        "psf/class_0",
        "h1/total_persistence",
        "h1/total_persistence/std",
    ]
    with pytest.raises(ValueError, match="resamples"):
        metric_names([1], [0], resamples=0)
