"""PruningConfig: one place for every pruning default, each field checked at construction."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lightning_topo.pruning import collect_unit_outputs, compute_importance, plan_keep_masks, prune_model
from lightning_topo.pruning.config import DEFAULTS, METHODS, UNIT_KINDS, PruningConfig


def test_defaults_are_the_documented_ones():
    assert DEFAULTS.method == "topological" and DEFAULTS.ratio == 0.6 and DEFAULTS.quantile is None
    assert DEFAULTS.units == UNIT_KINDS and DEFAULTS.ffn_multiple == 8 and DEFAULTS.max_positions == 2048
    assert (DEFAULTS.min_heads, DEFAULTS.min_ffn, DEFAULTS.stat, DEFAULTS.seed) == (1, 1, None, 0)
    with pytest.raises(AttributeError):
        DEFAULTS.ratio = 0.5  # type: ignore[misc]


def test_units_string_is_one_kind_not_characters():
    assert PruningConfig(units="ffn").units == ("ffn",)
    assert PruningConfig(units=["heads", "ffn", "heads"]).units == ("heads", "ffn")
    for bad in ("f", ("ffn", "mlp"), ()):
        with pytest.raises(ValueError, match="units"):
            PruningConfig(units=bad)


@pytest.mark.parametrize(
    "field, bad, error",
    [
        ("ratio", None, TypeError),
        ("ratio", math.nan, ValueError),
        ("ratio", math.inf, ValueError),
        ("ratio", True, TypeError),
        ("ratio", 0.0, ValueError),
        ("ratio", 1.01, ValueError),
        ("ratio", "0.5", TypeError),
        ("quantile", 1.0, ValueError),
        ("quantile", -0.1, ValueError),
        ("quantile", math.nan, ValueError),
        ("quantile", "0.5", TypeError),
        ("min_heads", 0, ValueError),
        ("min_heads", 1.5, TypeError),
        ("min_ffn", True, TypeError),
        ("ffn_multiple", 2.5, TypeError),
        ("ffn_multiple", 0, ValueError),
        ("max_positions", 1, ValueError),
        ("max_positions", 2048.0, TypeError),
        ("max_batches", 0, ValueError),
        ("calibration_batches", 0, ValueError),
        ("stat", "mean", ValueError),
        ("seed", None, TypeError),
        ("seed", -1, ValueError),
        ("method", "nope", ValueError),
        ("method", None, TypeError),
        ("units", 3, TypeError),
    ],
)
def test_every_field_is_checked_with_its_name(field, bad, error):
    """TypeError for a wrong type, ValueError for a wrong value (the package's one policy)."""
    with pytest.raises(error, match=field) as info:
        PruningConfig(**{field: bad})
    assert type(info.value) is error


def test_quantile_mode_allows_no_ratio_and_numbers_are_normalised():
    cfg = PruningConfig(ratio=None, quantile=0.25)
    assert cfg.ratio is None and cfg.quantile == 0.25
    assert type(PruningConfig(ratio=1).ratio) is float
    assert PruningConfig(max_batches=None).max_batches is None


def test_callable_method_and_replace_revalidates():
    def mine(model, data, kind, layer_index):  # pragma: no cover - never called here
        raise AssertionError

    cfg = PruningConfig(method=mine)
    assert cfg.method is mine
    assert set(METHODS) >= {"topological", "magnitude"}
    with pytest.raises(ValueError, match="ratio"):
        cfg.replace(ratio=2.0)
    kwargs = cfg.prune_kwargs()
    assert "calibration_batches" not in kwargs and kwargs["method"] is mine


@pytest.mark.parametrize(
    "call, match, error",
    [
        (lambda m, b: prune_model(m, [b], units="f"), "units", ValueError),
        (lambda m, b: prune_model(m, [b], stat="mean"), "stat", ValueError),
        (lambda m, b: prune_model(m, [b], max_positions=2.5), "max_positions", TypeError),
        (lambda m, b: prune_model(m, [b], min_heads=1.5), "min_heads", TypeError),
        (lambda m, b: prune_model(m, [b], ratio=math.nan), "ratio", ValueError),
        (lambda m, b: prune_model(m, [b], seed=None), "seed", TypeError),
        (lambda m, b: prune_model(m, [b], method=42), "method", TypeError),
        (lambda m, b: compute_importance(m, [b], max_batches=0), "max_batches", ValueError),
        (lambda m, b: collect_unit_outputs(m, [b], max_positions=1), "max_positions", ValueError),
        (lambda m, b: collect_unit_outputs(m, [b], seed=1.5), "seed", TypeError),
        (lambda m, b: plan_keep_masks(m, compute_importance(m, method="random"), quantile=1.0), "quantile", ValueError),
    ],
)
def test_entry_points_refuse_bad_settings_before_touching_the_model(call, match, error, tiny_classifier, tiny_batch):
    before = {k: v.clone() for k, v in tiny_classifier.state_dict().items()}
    with pytest.raises(error, match=match):
        call(tiny_classifier, tiny_batch)
    after = tiny_classifier.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


def test_units_string_prunes_only_that_kind(tiny_classifier, tiny_batch):
    model = prune_model(
        copy.deepcopy(tiny_classifier), [tiny_batch], units="ffn", ratio=0.8, method="magnitude"
    )
    assert [layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer] == [4, 4]
    assert all(layer.intermediate.dense.out_features < 64 for layer in model.bert.encoder.layer)
