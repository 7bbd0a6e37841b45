"""Importance scores: reading A (redundancy, elder rule), reading B (1-D H0), baselines."""

from __future__ import annotations

import copy
import csv
import json
import math

import numpy as np
import pytest
import torch

from lightning_topo.pruning import layout, prune_model
from lightning_topo.pruning.importance import (
    _REGISTRY,
    DEFAULT_TOPOLOGICAL,
    METHODS,
    ImportanceTable,
    builtin_method,
    cloud_h0_scores,
    collect_unit_outputs,
    compute_importance,
    distribution_scores,
    redundancy_scores,
)

gudhi = pytest.importorskip("gudhi")


def _points_of(values: np.ndarray) -> np.ndarray:
    """(N, n) unit outputs -> (n, N) centred, unit-norm points and energies (as reading A defines)."""
    x = values.T - values.T.mean(axis=1, keepdims=True)
    energy = np.linalg.norm(x, axis=1)
    return x / energy[:, None], energy


def _slow_elder(values: np.ndarray) -> np.ndarray:
    """Reference: Kruskal over all pairs with a plain union-find and the elder rule."""
    y, energy = _points_of(values)
    n = y.shape[0]
    d = np.linalg.norm(y[:, None, :] - y[None, :, :], axis=2)
    edges = sorted((d[i, j], i, j) for i in range(n) for j in range(i + 1, n))
    parent = list(range(n))
    rep = list(range(n))  # representative unit of the component rooted at a vertex

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def beats(a, b):
        return energy[a] > energy[b] or (energy[a] == energy[b] and a < b)

    death = np.full(n, math.inf)
    for r, i, j in edges:
        a, b = find(i), find(j)
        if a == b:
            continue
        ra, rb = rep[a], rep[b]
        winner, loser = (ra, rb) if beats(ra, rb) else (rb, ra)
        death[loser] = r
        parent[b] = a
        rep[a] = winner
    return death


def _gudhi_h0_deaths(points: np.ndarray) -> np.ndarray:
    st = gudhi.RipsComplex(points=points).create_simplex_tree(max_dimension=1)
    st.compute_persistence()
    pairs = st.persistence_intervals_in_dimension(0)
    return np.sort(pairs[np.isfinite(pairs[:, 1]), 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_redundancy_matches_slow_reference_and_gudhi(seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(40, 25)) * rng.uniform(0.5, 2.0, size=25)  # (N positions, n units)
    ours = redundancy_scores(torch.from_numpy(values).T).numpy()
    ref = _slow_elder(values)
    assert np.isinf(ours).sum() == 1 and np.isinf(ref).sum() == 1
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-9, atol=1e-9)
    # the multiset of finite r_f values is exactly gudhi's H0 diagram of the unit cloud
    y, _ = _points_of(values)
    np.testing.assert_allclose(np.sort(ours[finite]), _gudhi_h0_deaths(y), rtol=1e-6, atol=1e-6)
    # the survivor is the highest-energy unit
    _, energy = _points_of(values)
    assert np.argmax(ours) == np.argmax(energy)


def test_redundancy_marks_exactly_one_duplicate():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(50, 12))
    values[:, 7] = 3.0 * values[:, 2] + 1.0  # same unit up to scale and shift -> same point
    s = redundancy_scores(torch.from_numpy(values).T).numpy()
    assert s[2] == pytest.approx(0.0, abs=1e-7)  # the lower-energy copy dies at once
    assert s[7] > 0.1
    assert (s < 1e-6).sum() == 1


def test_redundancy_heads_flatten_context():
    rng = np.random.default_rng(0)
    ctx = rng.normal(size=(4, 30, 5))  # (heads, N, head_size)
    ctx[3] = 2 * ctx[1]
    s = redundancy_scores(torch.from_numpy(ctx)).numpy()
    assert s[1] == pytest.approx(0.0, abs=1e-7) and s[3] > 0


@pytest.mark.parametrize("stat", ["max", "total"])
def test_distribution_scores_equal_gudhi_per_unit(stat):
    rng = np.random.default_rng(3)
    values = rng.normal(size=(30, 6)) ** 3
    ours = distribution_scores(torch.from_numpy(values), stat=stat).numpy()
    for u in range(values.shape[1]):
        deaths = _gudhi_h0_deaths(values[:, u : u + 1])
        expected = deaths.max() if stat == "max" else deaths.sum()
        assert ours[u] == pytest.approx(expected, rel=1e-6)


def test_cloud_h0_scores_equal_gudhi():
    rng = np.random.default_rng(4)
    clouds = rng.normal(size=(25, 3, 4))
    ours = cloud_h0_scores(torch.from_numpy(clouds), stat="max").numpy()
    for h in range(3):
        assert ours[h] == pytest.approx(_gudhi_h0_deaths(clouds[:, h]).max(), rel=1e-6)


@pytest.mark.parametrize("stat", ["max", "total"])
def test_contribution_scores_equal_gudhi_in_the_residual_stream(stat, tiny_classifier, tiny_batch):
    """Reading C: bars of the cloud each unit writes into the hidden space, built there explicitly."""
    outputs = collect_unit_outputs(tiny_classifier, [tiny_batch], units=("ffn", "heads"))
    table = compute_importance(tiny_classifier, outputs=outputs, method="topological-contribution", stat=stat)
    layer = layout.encoder_layers(tiny_classifier)[1]
    pick = max if stat == "max" else sum
    w_ffn = layout.ffn_output(layer).weight.detach().double().numpy()  # (hidden, ffn)
    acts = outputs.ffn[1].double().numpy()  # (N, ffn)
    for u in (0, 7, 33):
        cloud = acts[:, u : u + 1] * w_ffn[:, u][None, :]
        assert float(table.ffn[1][u]) == pytest.approx(pick(_gudhi_h0_deaths(cloud)), rel=1e-6)
    h, d = layout.num_heads(layer), layout.head_size(layer)
    w_out = layout.attention_output(layer).weight.detach().double().numpy()  # (hidden, h*d)
    ctx = outputs.heads[1].double().numpy()  # (N, h, d)
    for head in range(h):
        cloud = ctx[:, head] @ w_out[:, head * d : (head + 1) * d].T
        assert float(table.heads[1][head]) == pytest.approx(pick(_gudhi_h0_deaths(cloud)), rel=1e-6)


def test_contribution_scales_with_outgoing_weights(tiny_classifier, tiny_batch):
    """Scaling a unit's outgoing column scales its contribution score, not its 1-D score."""
    model = copy.deepcopy(tiny_classifier)
    before = compute_importance(model, [tiny_batch], method="topological-contribution")
    one_d = compute_importance(model, [tiny_batch], method="topological-1d")
    with torch.no_grad():
        layout.ffn_output(layout.encoder_layers(model)[0]).weight[:, 5] *= 0.25
    after = compute_importance(model, [tiny_batch], method="topological-contribution")
    assert float(after.ffn[0][5]) == pytest.approx(0.25 * float(before.ffn[0][5]), rel=1e-9)
    assert torch.equal(after.ffn[0][:5], before.ffn[0][:5])
    assert float(before.ffn[0][5]) != pytest.approx(float(one_d.ffn[0][5]))


def test_constant_unit_scores_lowest_in_both_readings():
    rng = np.random.default_rng(5)
    values = rng.normal(size=(40, 10))
    values[:, 4] = 0.7  # dead unit
    a = redundancy_scores(torch.from_numpy(values).T).numpy()
    assert a[4] == 0.0 and np.all(np.delete(a, 4) > 0)
    for stat in ("max", "total"):
        b = distribution_scores(torch.from_numpy(values), stat=stat).numpy()
        assert b[4] == 0.0 and np.all(np.delete(b, 4) > 0)


def test_elder_rule_is_vectorised_and_fast():
    import time

    values = torch.randn(256, 1536, dtype=torch.float64)
    t = time.perf_counter()
    s = redundancy_scores(values.T)
    assert time.perf_counter() - t < 30
    assert torch.isinf(s).sum() == 1


def _matches_as_rows(got: torch.Tensor, expected: torch.Tensor) -> None:
    """``got`` holds the rows of ``expected`` in some order (the position sample is unordered)."""
    d = torch.cdist(got.double(), expected.double())
    assert d.min(dim=1).values.max() < 1e-5
    assert sorted(d.argmin(dim=1).tolist()) == list(range(expected.shape[0]))


def test_collect_unit_outputs_hooks_and_mask(tiny_classifier, tiny_batch):
    out = collect_unit_outputs(tiny_classifier, [tiny_batch], max_positions=1000)
    n_tokens = int(tiny_batch["attention_mask"].sum())
    assert out.num_positions == n_tokens
    assert out.ffn[0].shape == (n_tokens, 64) and out.heads[1].shape == (n_tokens, 4, 8)
    capped = collect_unit_outputs(tiny_classifier, [tiny_batch, tiny_batch], max_positions=20, seed=1)
    again = collect_unit_outputs(tiny_classifier, [tiny_batch, tiny_batch], max_positions=20, seed=1)
    other = collect_unit_outputs(tiny_classifier, [tiny_batch, tiny_batch], max_positions=20, seed=2)
    assert capped.num_positions == 20
    assert torch.equal(capped.ffn[0], again.ffn[0]) and not torch.equal(capped.ffn[0], other.ffn[0])
    # FFN outputs are GELU(intermediate.dense(x)) and head outputs the input of attention.output.dense,
    # both at the real (unmasked) tokens only
    layer0, layer1 = tiny_classifier.bert.encoder.layer
    seen = {}
    hooks = [
        layer0.intermediate.dense.register_forward_hook(lambda m, i, o: seen.update(ffn=o)),
        layer1.attention.output.dense.register_forward_hook(lambda m, i, o: seen.update(ctx=i[0])),
    ]
    with torch.no_grad():
        tiny_classifier(input_ids=tiny_batch["input_ids"], attention_mask=tiny_batch["attention_mask"])
    for h in hooks:
        h.remove()
    mask = tiny_batch["attention_mask"].bool()
    _matches_as_rows(out.ffn[0], layer0.intermediate.intermediate_act_fn(seen["ffn"])[mask])
    _matches_as_rows(out.heads[1].reshape(n_tokens, -1), seen["ctx"][mask])


def test_duplicate_ffn_unit_in_model_marked_once(tiny_classifier, tiny_batch):
    layer = tiny_classifier.bert.encoder.layer[0]
    with torch.no_grad():
        layer.intermediate.dense.weight[9] = layer.intermediate.dense.weight[3]
        layer.intermediate.dense.bias[9] = layer.intermediate.dense.bias[3]
    table = compute_importance(tiny_classifier, [tiny_batch], method="topological-redundancy")
    s = table.ffn[0]
    assert s[9] == pytest.approx(0.0, abs=1e-6)  # equal energy: the higher index dies
    assert s[3] > 0
    assert int((s < 1e-6).sum()) == 1


@pytest.mark.parametrize("method", METHODS)
def test_all_methods_shapes_and_table_io(method, tiny_classifier, tiny_batch, tmp_path):
    table = compute_importance(tiny_classifier, [tiny_batch], method=method)
    assert isinstance(table, ImportanceTable)
    assert table.method == (DEFAULT_TOPOLOGICAL if method == "topological" else method)
    assert [s.shape for s in table.ffn] == [(64,), (64,)]
    assert [s.shape for s in table.heads] == [(4,), (4,)]
    assert all(s.dtype == torch.float64 and not torch.isnan(s).any() for s in table.ffn + table.heads)
    table.to_csv(tmp_path / "s.csv")
    table.to_json(tmp_path / "s.json")
    with open(tmp_path / "s.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 64 + 2 * 4 == len(table.rows())
    for row in (rows[0], rows[70], rows[-1]):
        layer, kind, unit = int(row["layer"]), row["kind"], int(row["unit"])
        assert float(row["score"]) == pytest.approx(float(table.scores(kind)[layer][unit]), rel=1e-12)
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["method"] == table.method and len(saved["heads"]) == 2 and len(saved["ffn"][1]) == 64
    finite = [v for v in table.ffn[1].tolist() if math.isfinite(v)]
    assert [v for v in saved["ffn"][1] if v is not None] == pytest.approx(finite)
    fig = table.plot("ffn")
    assert len(fig.axes) == 1 and len(fig.axes[0].get_xticks()) == 2  # one box per layer


def test_random_is_seeded(tiny_classifier):
    a = compute_importance(tiny_classifier, method="random", seed=3)
    b = compute_importance(tiny_classifier, method="random", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.ffn, b.ffn, strict=True))


def test_bad_inputs(tiny_classifier, tiny_batch):
    with pytest.raises(ValueError, match="method"):
        compute_importance(tiny_classifier, [tiny_batch], method="nope")
    empty = dict(tiny_batch, attention_mask=torch.zeros_like(tiny_batch["attention_mask"]))
    with pytest.raises(ValueError, match="no token"):
        compute_importance(tiny_classifier, [empty], method="topological")
    with pytest.raises(ValueError, match="dataloader"):
        compute_importance(tiny_classifier, None, method="activation")
    with pytest.raises(TypeError, match="BERT-family"):
        compute_importance(torch.nn.Linear(3, 3), [tiny_batch], method="magnitude")


def test_registry_holds_every_builtin_name():
    assert set(_REGISTRY) | {"topological"} == set(METHODS)
    assert builtin_method("topological") is builtin_method(DEFAULT_TOPOLOGICAL)


def test_custom_callable_method(tiny_classifier, tiny_batch):
    calls = []

    def lowest_index_first(model, outputs, kind, ctx):
        calls.append((kind, outputs is not None, ctx.stat))
        return [-torch.arange(n, dtype=torch.float64) for n in layout.layer_widths(model)[kind]]

    table = compute_importance(tiny_classifier, [tiny_batch], method=lowest_index_first, stat="total")
    assert table.method == "lowest_index_first"
    assert calls == [("ffn", True, "total"), ("heads", True, "total")]
    model, info = prune_model(
        copy.deepcopy(tiny_classifier), None, method=lowest_index_first, quantile=0.5, return_info=True
    )
    assert all(torch.equal(m, torch.arange(64) < 32) for m in info.masks.ffn)
    assert all(torch.equal(m, torch.arange(4) < 2) for m in info.masks.heads)
    assert layout.layer_widths(model) == {"ffn": [32, 32], "heads": [2, 2]}


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda m, o, k, c: [torch.zeros(3)], "one score tensor per encoder layer"),
        (lambda m, o, k, c: [torch.zeros(5), torch.zeros(5)], "has .* units"),
        (lambda m, o, k, c: [torch.full((n,), math.nan) for n in layout.layer_widths(m)[k]], "NaN"),
        (lambda m, o, k, c: None, "one score tensor per encoder layer"),
    ],
)
def test_custom_method_bad_scores_are_refused(tiny_classifier, bad, match):
    with pytest.raises(ValueError, match=match):
        compute_importance(tiny_classifier, method=bad, units=("ffn",))


def test_builtin_method_that_needs_data_says_so(tiny_classifier, tiny_batch):
    outputs = collect_unit_outputs(tiny_classifier, [tiny_batch], units=("ffn",))
    with pytest.raises(ValueError, match="'heads' outputs"):
        compute_importance(tiny_classifier, method="activation", outputs=outputs)
    with pytest.raises(TypeError, match="iterable"):
        collect_unit_outputs(tiny_classifier, 3)


@pytest.mark.parametrize(
    ("method", "expected"), [("topological-1d", "max"), ("topological-contribution", "total")]
)
def test_stat_none_is_the_methods_own(method, expected, tiny_classifier, tiny_batch):
    """``stat=None`` (the default) = METHOD_STATS[method]; an explicit stat overrides it."""
    outputs = collect_unit_outputs(tiny_classifier, [tiny_batch])
    default = compute_importance(tiny_classifier, outputs=outputs, method=method)
    explicit = compute_importance(tiny_classifier, outputs=outputs, method=method, stat=expected)
    other = compute_importance(
        tiny_classifier, outputs=outputs, method=method, stat="max" if expected == "total" else "total"
    )
    assert default.info["stat"] == expected
    assert all(torch.equal(a, b) for a, b in zip(default.ffn, explicit.ffn, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(default.ffn, other.ffn, strict=True))
