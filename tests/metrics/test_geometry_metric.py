"""GeometryScore, the geometry lens as a torchmetrics Metric: the numbers of the old accumulator, a plain
loop through check_model/make_capture/update_from/compute (how analyze drives it), sum states that merge
like DDP's, max_samples, reset, a user's own validation_step, other families, refusals."""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Callable, Sequence

import lightning.pytorch as pl
import pytest
import torch
from conftest import labelled_token_dataset, tiny_bert_config
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics import Metric

from lightning_topo.metrics import GeometryScore, LensMetric
from lightning_topo.representations.geometry import (
    CapturedForward,
    GeometryCapture,
    LayerCapture,
    weight_geometry,
)
from lightning_topo.scores.geometry import (
    attention_entropy,
    attention_entropy_from_logits,
    cone_index,
    cone_index_per_head,
    geometry_metrics,
    metric_names,
)


class GeometryAccumulator:
    """The reduction GeometryMonitor ran before the lens became a torchmetrics Metric (moved here
    unchanged from lightning_topo/representations/geometry.py): the reference GeometryScore must equal.

    Running means over sequences of the geometry of each layer, fed batch by batch. Each
    LayerCapture is reduced at once to per-sequence numbers (cone index at the four sites,
    per-head cone index and attention entropy), so only sums stay in memory.

    Args:
        layers: encoder layers to expect (hidden-state indices ``1..L``).
        num_heads: heads per layer: one int for all, or one per layer (pruned models differ).
        normalize: cone indices divided by the number of tokens (``[0, 1]``). Default ``True``.
        attention: also accumulate the attention entropy. Default ``True``.
    """

    def __init__(
        self,
        layers: Sequence[int],
        num_heads: int | Sequence[int],
        normalize: bool = True,
        attention: bool = True,
    ) -> None:
        self.layers = list(layers)
        heads = [num_heads] * len(self.layers) if isinstance(num_heads, int) else list(num_heads)
        if len(heads) != len(self.layers) or any(isinstance(h, bool) or int(h) < 1 for h in heads):
            raise ValueError(f"num_heads must be a positive int or one per layer; got {num_heads!r}")
        self.num_heads = [int(h) for h in heads]
        self.normalize = normalize
        self.attention = attention
        self.reset()

    def reset(self) -> None:
        """Forget everything added."""
        # columns: input, attention_output, output, heads' cones (max H), heads' entropies (max H)
        self._width = max(self.num_heads)
        self._sums = torch.zeros(len(self.layers), 3 + 2 * self._width, dtype=torch.float64)
        self._counts = torch.zeros(len(self.layers), dtype=torch.float64)

    @property
    def num_sequences(self) -> int:
        """Sequences added so far to the first layer (this process)."""
        return int(self._counts[0].item()) if len(self.layers) else 0

    def add(self, layer: int, cap: LayerCapture) -> None:
        """Reduce one layer's capture of one batch.

        Raises:
            ValueError: a sequence whose mask has no valid position (from the score functions),
                or a layer with another head count than declared.
        """
        row = self.layers.index(layer)
        h = self.num_heads[row]
        if cap.num_heads != h:
            raise ValueError(f"layer {layer} has {cap.num_heads} heads but the accumulator expects {h}")
        mask, norm = cap.mask, self.normalize
        if self._sums.device != mask.device:  # sums live where the model runs: no sync per batch
            self._sums, self._counts = self._sums.to(mask.device), self._counts.to(mask.device)
        sums = self._sums[row]
        sums[0] += cone_index(cap.layer_input.float(), mask, norm).double().sum()
        sums[1] += cone_index(cap.attention_output.float(), mask, norm).double().sum()
        sums[2] += cone_index(cap.layer_output.float(), mask, norm).double().sum()
        sums[3 : 3 + h] += cone_index_per_head(cap.context.float(), h, mask, norm).double().sum(0)
        if self.attention:
            if cap.probs is None:  # recomputed: straight from the scores, no probabilities formed
                entropy = attention_entropy_from_logits(cap.attention_logits().float(), mask)
            else:
                entropy = attention_entropy(cap.probs.float(), mask)
            entropy = entropy.double().sum(0)
            sums[3 + self._width : 3 + self._width + h] += entropy
        self._counts[row] += mask.shape[0]

    def result(self, reduce: Callable[[Tensor], Tensor] | None = None) -> dict[int, dict[str, Tensor]]:
        """Means over all sequences added: ``{layer: {"cone/input": 0-d, "cone/heads": (H,), ...}}``.

        Keys per layer: ``sequences`` (the count), ``cone/input``, ``cone/attention_output``, ``cone/output`` (0-d),
        ``cone/heads`` and (with ``attention``) ``attention_entropy`` (``(heads,)``).

        Args:
            reduce: applied to the stacked sums and counts before dividing (e.g. a sum over
                DDP ranks: ``lambda t: trainer.strategy.reduce(t, reduce_op="sum")``).

        Raises:
            ValueError: nothing was added for some layer.
        """
        packed = torch.cat([self._sums, self._counts[:, None]], dim=1)
        if reduce is not None:
            packed = reduce(packed)
        packed = packed.to("cpu", torch.float64)
        sums, counts = packed[:, :-1], packed[:, -1:]
        if not bool((counts > 0).all()):
            raise ValueError(
                "no sequence was captured for some layers; run a forward with the hooks attached first"
            )
        means = sums / counts
        w = self._width
        out = {}
        for row, layer in enumerate(self.layers):
            m, h = means[row], self.num_heads[row]
            out[layer] = {
                "sequences": counts[row, 0],
                "cone/input": m[0],
                "cone/attention_output": m[1],
                "cone/output": m[2],
                "cone/heads": m[3 : 3 + h],
            }
            if self.attention:
                out[layer]["attention_entropy"] = m[3 + w : 3 + w + h]
        return out


def _model(seed=0, **config):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(**config)).eval()


def _batches(n=24, batch_size=8, seed=1):
    loader = DataLoader(labelled_token_dataset(n, seed), batch_size=batch_size)
    return [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]} for b in loader]


def _feed(metric, model, batches):
    """The plain loop analyze() runs: nothing but check_model, make_capture and update_from."""
    metric.check_model(model)
    capture = metric.make_capture(model)
    with capture, torch.no_grad():
        for batch in batches:
            capture.pop()
            model(**batch)
            for forward in capture.pop():
                metric.update_from(forward, None)
    return metric


def _run(metric, model, batches):
    """:func:`_feed`, then ``compute``."""
    return _feed(metric, model, batches).compute()


def _old(model, batches, layers=(1, 2), attention="auto", normalize=True):
    """The values the monitor logged before the port: GeometryAccumulator + weight_geometry + geometry_metrics."""
    acc = GeometryAccumulator(list(layers), 4, normalize=normalize, attention=attention != "none")
    with GeometryCapture(model, layers=list(layers), attention=attention, on_layer=acc.add), torch.no_grad():
        for batch in batches:
            model(**batch)
    return geometry_metrics(acc.result(), weight_geometry(model, list(layers)))


def test_is_a_torchmetrics_metric_with_sum_states():
    metric = GeometryScore()
    assert isinstance(metric, Metric) and isinstance(metric, LensMetric)
    assert metric.prefix == "geometry" and metric.headline == "cone" and not metric.needs_labels
    metric.check_model(_model())
    assert set(metric._reductions) == {"sums", "counts"}
    assert all(fn.__name__ == "dim_zero_sum" for fn in metric._reductions.values())
    assert metric.sums.shape == (2, 3 + 2 * 4) and metric.sums.dtype == torch.float64


@pytest.mark.parametrize(
    ("attention", "normalize", "layers"), [("auto", True, "all"), ("none", False, [-1]), ("auto", False, [1])]
)
def test_equals_the_old_accumulator(attention, normalize, layers):
    model, batches = _model(), _batches()
    result = _run(GeometryScore(layers=layers, attention=attention, normalize=normalize), model, batches)
    encoder = [1, 2] if layers == "all" else [2] if layers == [-1] else [1]
    old = _old(model, batches, encoder, attention, normalize)
    assert result.layers == encoder
    assert list(result.values) == metric_names(encoder, attention != "none")
    assert set(result.values) == set(old.values) | {"cone"}
    for name, value in old.values.items():
        assert float(result.values[name]) == pytest.approx(float(value), rel=1e-9, abs=1e-12), name
    assert float(result.values["cone"]) == float(result.values[f"cone/layer_{encoder[-1]}"])
    for key, per_layer in old.heads.items():
        for got, expected in zip(result.extras["heads"][key], per_layer, strict=True):
            assert got == pytest.approx(expected.tolist(), rel=1e-9), key
    assert result.extras["sequences"] == 24
    # and the numbers themselves, from output_hidden_states and eager attention (independent of the hooks)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    cones, inputs, entropy = [], [], []
    with torch.no_grad():
        for batch in batches:
            out = eager(**batch, output_hidden_states=True, output_attentions=True)
            mask = batch["attention_mask"]
            cones.append(cone_index(out.hidden_states[encoder[-1]], mask, normalize))
            inputs.append(cone_index(out.hidden_states[encoder[-1] - 1], mask, normalize))
            entropy.append(attention_entropy(out.attentions[encoder[-1] - 1], mask).mean(1))
    deepest = encoder[-1]
    assert float(result.values["cone"]) == pytest.approx(float(torch.cat(cones).mean()), rel=1e-5)
    assert float(result.values[f"cone/layer_{deepest}/input"]) == pytest.approx(
        float(torch.cat(inputs).mean()), rel=1e-5
    )
    if attention != "none":
        assert float(result.values[f"attention_entropy/layer_{deepest}"]) == pytest.approx(
            float(torch.cat(entropy).mean()), rel=1e-5
        )


def test_two_shards_merged_like_ddp_equal_one_pass():
    """DDP's sync adds the sum states of the processes (torchmetrics): merging two shards' metrics
    gives exactly the one-process values."""
    model, batches = _model(), _batches(32)
    whole = _run(GeometryScore(), model, batches)
    left, right = _feed(GeometryScore(), model, batches[::2]), _feed(GeometryScore(), model, batches[1::2])
    shard = copy.deepcopy(right)
    shard.check_model(model)
    assert float(shard.compute().values["cone"]) != pytest.approx(float(whole.values["cone"]), rel=1e-9)
    left.merge_state(right)  # shards differ; merged, they are the whole
    merged = left.compute()
    assert merged.extras["sequences"] == 32
    for name, value in whole.values.items():
        assert float(merged.values[name]) == pytest.approx(float(value), rel=1e-12), name


def test_max_samples_is_exact_and_later_forwards_are_not_reduced():
    model, batches = _model(), _batches(24)
    metric = GeometryScore(max_samples=10)
    metric.check_model(model)
    capture = metric.make_capture(model)
    reduced = []
    with capture, torch.no_grad():
        for batch in batches:
            model(**batch)
            for forward in capture.pop():
                reduced.append([forward.layers[i] is not None for i in (1, 2)])
                metric.update(forward)
    assert reduced == [[True, True], [True, True], [False, False]]  # the third batch costs nothing
    result = metric.compute()
    assert result.extras["sequences"] == 10
    first10 = [batches[0], {k: v[:2] for k, v in batches[1].items()}]
    old = _old(model, first10)
    for name, value in old.values.items():
        assert float(result.values[name]) == pytest.approx(float(value), rel=1e-9), name


def test_reset_forgets_and_the_next_measurement_reads_the_new_weights():
    model, batches = _model(), _batches()
    metric = GeometryScore()
    first = _run(metric, model, batches)
    metric.reset()
    with pytest.raises(ValueError, match="no sequence was added"):
        metric.compute()
    with torch.no_grad():  # sharper attention in layer 2; the shares of M_h do not depend on its scale
        model.bert.encoder.layer[1].attention.self.query.weight.mul_(50.0)
    second = _run(metric, model, batches)
    assert second.extras["sequences"] == 24
    for name in ("directionality/layer_2", "qk_spectral_entropy/layer_2", "cone/layer_1"):
        assert float(second.values[name]) == pytest.approx(float(first.values[name]), rel=1e-6), name
    assert (
        float(second.values["attention_entropy/layer_2"])
        < float(first.values["attention_entropy/layer_2"]) - 0.1
    )


def test_raw_captures_from_any_geometry_capture_are_reduced_in_update():
    model, batches = _model(), _batches()
    metric = GeometryScore()
    metric.check_model(model)
    capture = GeometryCapture(model)  # raw LayerCaptures, not the metric's own hooks
    with capture, torch.no_grad():
        for batch in batches:
            model(**batch)
    for forward in capture.pop():
        metric.update(forward)
    reference = _run(GeometryScore(), model, batches)
    for name, value in reference.values.items():
        assert float(metric.compute().values[name]) == pytest.approx(float(value), rel=1e-12), name


def test_the_model_is_held_weakly_and_never_registered():
    model = _model()
    metric = GeometryScore()
    metric.check_model(model)
    assert list(metric.children()) == [] and metric.state_dict() == {}
    assert pickle.loads(pickle.dumps(metric))._model_ref is None  # ddp_spawn pickles: no model inside
    copied = copy.deepcopy(metric)
    with pytest.raises(RuntimeError, match="check_model"):
        copied.sums += 1
        copied.counts += 1
        copied.compute()


def test_nan_hidden_states_give_nan_cones_and_finite_weight_scores():
    model, batches = _model(), _batches()
    with torch.no_grad():
        model.bert.embeddings.LayerNorm.weight.fill_(math.nan)
    result = _run(GeometryScore(), model, batches)
    assert not result.extras["finite"]
    for name, value in result.values.items():
        if name.startswith(("directionality", "qk_spectral")):
            assert math.isfinite(float(value)), name
        else:
            assert math.isnan(float(value)), name


@pytest.mark.parametrize("family", ["distilbert", "deberta"])
def test_other_families(family):
    from transformers import AutoModelForSequenceClassification

    from tests.user_modules import tiny_config

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(family)).eval()
    batches = [{k: v.clamp(max=99) if k == "input_ids" else v for k, v in b.items()} for b in _batches()]
    result = _run(GeometryScore(), model, batches)
    reference = model if family == "deberta" else copy.deepcopy(model)
    if family != "deberta":
        reference.set_attn_implementation("eager")
    entropy = []
    with torch.no_grad():
        for batch in batches:
            out = reference(**batch, output_attentions=True, output_hidden_states=True)
            entropy.append(attention_entropy(out.attentions[1], batch["attention_mask"]).mean(1))
    assert float(result.values["attention_entropy/layer_2"]) == pytest.approx(
        float(torch.cat(entropy).mean()), rel=1e-5
    )
    assert 0 <= float(result.values["directionality/layer_1"]) <= 1


# ----------------------------------------------------------------------------- in a user's validation_step


class UserModule(pl.LightningModule):
    """The docs' snippet (docs/geometry.md): the metric in the module, fed in validation_step."""

    def __init__(self):
        super().__init__()
        from transformers import BertForSequenceClassification

        torch.manual_seed(0)
        self.net = BertForSequenceClassification(tiny_bert_config())
        self.val_geometry = GeometryScore(layers="all")
        self.val_geometry.check_model(self.net)
        self.geometry_hooks = self.val_geometry.make_capture(self.net)
        self.logged: list[dict[str, float]] = []

    def training_step(self, batch, batch_idx):
        return self.net(**batch).loss

    def on_validation_epoch_start(self):
        self.geometry_hooks.attach()

    def validation_step(self, batch, batch_idx):
        self.geometry_hooks.pop()
        self.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        for forward in self.geometry_hooks.pop():
            self.val_geometry.update(forward)

    def on_validation_epoch_end(self):
        self.geometry_hooks.detach()
        values = self.val_geometry.compute().metrics()
        self.log_dict(values, sync_dist=True)
        self.logged.append(values)
        self.val_geometry.reset()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_in_a_users_own_validation_step(tmp_path):
    module = UserModule()
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path), max_epochs=2, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0,
    )  # fmt: skip
    train = DataLoader(labelled_token_dataset(32, 0), batch_size=8)
    val = DataLoader(labelled_token_dataset(24, 1), batch_size=8)
    trainer.fit(module, train, val)
    assert len(module.logged) == 2 and module.logged[0]["geometry/cone"] != module.logged[1]["geometry/cone"]
    assert float(trainer.callback_metrics["geometry/cone"]) == pytest.approx(
        module.logged[-1]["geometry/cone"]
    )
    assert "val_geometry" not in {
        n.split(".")[0] for n in module.state_dict()
    }  # no states, no second model copy
    module.net.eval()
    direct = _run(
        GeometryScore(), module.net, [{k: b[k] for k in ("input_ids", "attention_mask")} for b in val]
    )
    assert module.logged[-1]["geometry/cone"] == pytest.approx(float(direct.values["cone"]), rel=1e-6)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layers": 0}, ValueError, "has no attention"),
        ({"layers": [2, 0]}, ValueError, "has no attention"),
        ({"layers": "first"}, ValueError, "layers"),
        ({"layers": [1.5]}, TypeError, "layers"),
        ({"attention": "eager"}, ValueError, "attention"),
        ({"normalize": 1}, TypeError, "normalize"),
        ({"max_samples": 0}, ValueError, "max_samples"),
    ],
)
def test_constructor_refuses(kwargs, error, match):
    with pytest.raises(error, match=match):
        GeometryScore(**kwargs)


def test_refusals_name_what_is_wrong():
    from transformers import DebertaConfig, DebertaModel

    v1 = DebertaModel(DebertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32))  # fmt: skip
    with pytest.raises(TypeError, match=r"BERT-family.*DistilBERT.*DeBERTa-v2.*got DebertaModel"):
        GeometryScore().check_model(v1)
    with pytest.raises(ValueError, match=r"index 3 .*encoder layers 1..2"):
        GeometryScore(layers=3).check_model(_model())
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        GeometryScore(attention="model").check_model(_model())
    with pytest.raises(RuntimeError, match="check_model"):
        _ = GeometryScore().selected_layers
    metric = GeometryScore(layers=[1])
    metric.check_model(_model())
    with pytest.raises(TypeError, match="CapturedForward"):
        metric.update(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"no capture of layer\(s\) \[1\]"):
        metric.update(CapturedForward(mask=torch.ones(2, 3, dtype=torch.bool)))
    model, batch = _model(), _batches()[0]
    batch["attention_mask"][2] = 0
    capture = metric.make_capture(model)
    with (
        capture,
        torch.no_grad(),
        pytest.raises(ValueError, match=r"no valid position in sequence\(s\) \[2\]"),
    ):
        model(**batch)
