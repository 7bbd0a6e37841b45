"""Surgery: physically removing units equals zeroing them; budgets; bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_topo.pruning import (
    KeepMasks,
    apply_keep_masks,
    compute_importance,
    count_encoder_parameters,
    mask_units,
    plan_keep_masks,
    prune_model,
)


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _masks(kind_ffn, kind_heads):
    g = torch.Generator().manual_seed(0)
    ffn = heads = None
    if kind_ffn == "uniform":
        ffn = [torch.arange(64) % 3 != 0 for _ in range(2)]
    elif kind_ffn == "per-layer":
        ffn = [torch.rand(64, generator=g) < 0.7, torch.rand(64, generator=g) < 0.3]
    if kind_heads == "uniform":
        heads = [torch.tensor([True, False, True, False])] * 2
    elif kind_heads == "per-layer":
        heads = [torch.tensor([False, True, True, True]), torch.tensor([False, False, True, False])]
    return KeepMasks(ffn=ffn, heads=heads)


@pytest.mark.parametrize(
    "ffn,heads",
    [
        ("uniform", None),
        ("per-layer", None),
        (None, "uniform"),
        (None, "per-layer"),
        ("per-layer", "per-layer"),
        ("uniform", "uniform"),
    ],
)
def test_removing_equals_zeroing(tiny_classifier, tiny_batch, ffn, heads):
    masks = _masks(ffn, heads)
    zeroed = mask_units(copy.deepcopy(tiny_classifier), masks)
    pruned = apply_keep_masks(copy.deepcopy(tiny_classifier), masks)
    torch.testing.assert_close(_logits(pruned, tiny_batch), _logits(zeroed, tiny_batch), atol=1e-5, rtol=0)
    assert count_encoder_parameters(pruned) < count_encoder_parameters(tiny_classifier)
    for i, layer in enumerate(pruned.bert.encoder.layer):
        if masks.ffn is not None:
            assert layer.intermediate.dense.out_features == int(masks.ffn[i].sum())
            assert layer.output.dense.in_features == int(masks.ffn[i].sum())
        if masks.heads is not None:
            k = int(masks.heads[i].sum())
            assert layer.attention.self.num_attention_heads == k
            assert layer.attention.self.query.out_features == 8 * k
            assert layer.attention.output.dense.in_features == 8 * k
    assert pruned.config.num_heads_per_layer == [
        layer.attention.self.num_attention_heads for layer in pruned.bert.encoder.layer
    ]


def test_pruned_model_trains(tiny_classifier, tiny_batch):
    pruned = apply_keep_masks(copy.deepcopy(tiny_classifier), _masks("per-layer", "per-layer")).train()
    opt = torch.optim.SGD(pruned.parameters(), lr=0.1)
    before = {name: p.detach().clone() for name, p in pruned.named_parameters()}
    loss = pruned(**tiny_batch).loss
    loss.backward()
    opt.step()
    shrunk = [
        name
        for name, _ in pruned.named_parameters()
        if ".encoder.layer." in name
        and any(k in name for k in ("query", "value", "intermediate.dense", "output.dense"))
    ]
    assert (
        len(shrunk) == 2 * 2 * 5
    )  # 2 layers x weight/bias x query, value, attention.output, intermediate, output
    params = dict(pruned.named_parameters())
    for name in shrunk:  # the new, smaller tensors are trained: finite gradients of their own shape, moved
        grad = params[name].grad
        assert grad is not None and grad.shape == params[name].shape and torch.isfinite(grad).all(), name
        assert not torch.equal(params[name].detach(), before[name]), name


@pytest.mark.parametrize("ratio", [0.9, 0.6, 0.35])
@pytest.mark.parametrize("units", [("ffn", "heads"), ("ffn",)])
def test_ratio_budget(tiny_classifier, tiny_batch, ratio, units):
    before = count_encoder_parameters(tiny_classifier)
    if units == ("ffn",) and ratio < 0.52:  # attention alone is ~48% of this encoder
        with pytest.raises(ValueError, match="floors"):
            prune_model(
                copy.deepcopy(tiny_classifier), [tiny_batch], method="magnitude", ratio=ratio, units=units
            )
        return
    model = prune_model(
        copy.deepcopy(tiny_classifier),
        [tiny_batch],
        method="magnitude",
        ratio=ratio,
        units=units,
        ffn_multiple=1,
    )
    kept = count_encoder_parameters(model) / before
    assert kept <= ratio + 1e-9
    assert kept > ratio - 0.05  # the FFN width fills the budget after heads are rounded
    widths = {layer.intermediate.dense.out_features for layer in model.bert.encoder.layer}
    assert len(widths) == 1  # uniform allocation


@pytest.mark.parametrize("multiple", [8, 16])
@pytest.mark.parametrize("ratio", [0.9, 0.6, 0.35])
def test_ffn_widths_rounded_to_multiple(tiny_classifier, tiny_batch, ratio, multiple):
    before = count_encoder_parameters(tiny_classifier)
    exact = prune_model(
        copy.deepcopy(tiny_classifier), [tiny_batch], method="magnitude", ratio=ratio, ffn_multiple=1
    )
    model = prune_model(
        copy.deepcopy(tiny_classifier), [tiny_batch], method="magnitude", ratio=ratio, ffn_multiple=multiple
    )
    kept = count_encoder_parameters(model) / before
    assert kept <= ratio + 1e-9
    for layer, exact_layer in zip(model.bert.encoder.layer, exact.bert.encoder.layer, strict=True):
        width = layer.intermediate.dense.out_features
        exact_width = exact_layer.intermediate.dense.out_features
        assert width % multiple == 0
        if layer.attention.self.num_attention_heads == exact_layer.attention.self.num_attention_heads:
            assert exact_width - multiple < width <= exact_width  # rounded down, not further


def test_ffn_multiple_leaves_unpruned_and_narrow_layers(tiny_classifier, tiny_batch):
    table = compute_importance(tiny_classifier, [tiny_batch], method="magnitude")
    full = plan_keep_masks(tiny_classifier, table, ratio=1.0, ffn_multiple=48)
    assert [int(m.sum()) for m in full.ffn] == [64, 64]  # not pruned: width kept as is
    narrow = plan_keep_masks(tiny_classifier, table, ratio=0.2, units=("ffn", "heads"), ffn_multiple=48)
    assert all(0 < int(m.sum()) < 48 for m in narrow.ffn)  # below the multiple: not rounded to 0
    for bad, error in ((0, ValueError), (-8, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="ffn_multiple"):
            plan_keep_masks(tiny_classifier, table, ratio=0.6, ffn_multiple=bad)


def test_quantile_mode(tiny_classifier, tiny_batch):
    table = compute_importance(tiny_classifier, [tiny_batch], method="topological")
    masks = plan_keep_masks(tiny_classifier, table, quantile=0.25)
    assert masks.kept() == {"ffn": [48, 48], "heads": [3, 3]}
    masks = plan_keep_masks(tiny_classifier, table, quantile=0.75, units=("ffn",))
    assert masks.kept() == {"ffn": [16, 16], "heads": None}


def test_keeps_the_highest_scores(tiny_classifier, tiny_batch):
    table = compute_importance(tiny_classifier, [tiny_batch], method="random", seed=1)
    masks = plan_keep_masks(tiny_classifier, table, quantile=0.5, units=("ffn",))
    for s, m in zip(table.ffn, masks.ffn, strict=True):
        assert s[m].min() >= s[~m].max()


def test_bad_input(tiny_classifier, tiny_batch):
    original = {k: v.clone() for k, v in tiny_classifier.state_dict().items()}
    for bad, error in ((0.0, ValueError), (-0.1, ValueError), (1.5, ValueError), (None, TypeError)):
        with pytest.raises(error, match="ratio"):
            prune_model(tiny_classifier, [tiny_batch], ratio=bad)
    with pytest.raises(ValueError, match="floors"):
        prune_model(tiny_classifier, [tiny_batch], ratio=0.01)
    with pytest.raises(ValueError, match="no token"):
        empty = dict(tiny_batch, attention_mask=torch.zeros_like(tiny_batch["attention_mask"]))
        prune_model(tiny_classifier, [empty], ratio=0.5)
    with pytest.raises(TypeError, match="BERT-family"):
        prune_model(torch.nn.Sequential(torch.nn.Linear(2, 2)), [tiny_batch], ratio=0.5)
    with pytest.raises(ValueError, match="every unit"):
        apply_keep_masks(
            tiny_classifier,
            KeepMasks(heads=[torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)]),
        )
    with pytest.raises(ValueError, match=">= 1"):
        prune_model(tiny_classifier, [tiny_batch], ratio=0.5, min_heads=0)
    # nothing was modified by the failed calls
    after = tiny_classifier.state_dict()
    assert set(after) == set(original)
    assert all(torch.equal(original[k], after[k]) for k in original)


def test_ratio_one_is_noop(tiny_classifier, tiny_batch):
    model = prune_model(copy.deepcopy(tiny_classifier), [tiny_batch], ratio=1.0)
    assert count_encoder_parameters(model) == count_encoder_parameters(tiny_classifier)
