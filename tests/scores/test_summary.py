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
from lightning_topo.scores.sampling import draw_seeds


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
            torch.testing.assert_close(got.values[f"{name}/std"], vals.std() / math.sqrt(3))
    assert float(got.values["psf/std"]) > 0


def test_resamples_without_a_class_above_the_cap_has_zero_std():
    points, labels = _layers(n=40)  # 20 per class, cap 512
    got = persistence_metrics(points, labels, resamples=5)
    assert float(got.values["psf/std"]) == 0.0
    assert got.values["psf"].item() == persistence_metrics(points, labels).values["psf"].item()


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
