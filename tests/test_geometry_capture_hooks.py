"""Forward hooks of the geometry lens on tiny random BERT models: what they capture, and refusals."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_topo.representations.geometry import (
    GeometryCapture,
    attention_sites,
    resolve_encoder_layers,
    weight_geometry,
)
from lightning_topo.scores.geometry import attention_entropy, cone_index, directionality
from tests.conftest import tiny_bert_config
from tests.metrics.test_geometry_metric import GeometryAccumulator  # the pre-port reference


def _inputs(batch):
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _eager_copy(model):
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    return eager


def _hook_count(model):
    """Hooks of the capture module (transformers installs its own output-recording hooks)."""
    hooks = [h for m in model.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
    return sum(getattr(h, "__module__", "") == "lightning_topo.representations.geometry" for h in hooks)


def test_captures_match_hidden_states_and_a_manual_attention(tiny_classifier, tiny_batch):
    model = tiny_classifier
    assert model.config._attn_implementation != "eager"  # the default kernel returns no probabilities
    capture = GeometryCapture(model)
    with capture, torch.no_grad():
        out = model(**_inputs(tiny_batch), output_hidden_states=True)
    (forward,) = capture.pop()
    mask = tiny_batch["attention_mask"].bool()
    assert torch.equal(forward.mask, mask)
    assert sorted(forward.layers) == [1, 2]
    for i, cap in forward.layers.items():
        assert torch.allclose(cap.layer_input, out.hidden_states[i - 1])
        assert torch.allclose(cap.layer_output, out.hidden_states[i])
        layer = model.bert.encoder.layer[i - 1]
        x = cap.layer_input
        with torch.no_grad():
            q, k, v = (
                getattr(layer.attention.self, name)(x).reshape(6, 10, 4, 8).transpose(1, 2)
                for name in ("query", "key", "value")
            )
            scores = q @ k.transpose(-1, -2) / 8**0.5
            probs = scores.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
            context = (probs @ v).transpose(1, 2).reshape(6, 10, 32)
            attn_out = layer.attention.output(context, x)
        assert torch.allclose(cap.attention_probs(), probs, atol=1e-6)
        assert torch.allclose(cap.context, context, atol=1e-5)
        assert torch.allclose(cap.attention_output, attn_out, atol=1e-5)
    assert _hook_count(model) == 0


def test_recomputed_probabilities_equal_eager_attention(tiny_classifier, tiny_batch):
    eager = _eager_copy(tiny_classifier)
    with torch.no_grad():
        reference = eager(**_inputs(tiny_batch), output_attentions=True).attentions
    capture = GeometryCapture(tiny_classifier)  # SDPA: recomputed
    own = GeometryCapture(eager, attention="model")  # eager: the model's own
    with capture, own, torch.no_grad():
        tiny_classifier(**_inputs(tiny_batch))
        eager(**_inputs(tiny_batch))
    (sdpa_fwd,), (eager_fwd,) = capture.pop(), own.pop()
    for i in (1, 2):
        assert eager_fwd.layers[i].probs is not None
        assert torch.allclose(eager_fwd.layers[i].attention_probs(), reference[i - 1])
        assert torch.allclose(sdpa_fwd.layers[i].attention_probs(), reference[i - 1], atol=1e-6)


def test_attention_model_without_eager_says_how_to_enable_it(tiny_classifier):
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        GeometryCapture(tiny_classifier, attention="model")
    with pytest.raises(ValueError, match="attention must be one of"):
        GeometryCapture(tiny_classifier, attention="eager")


def test_attention_none_captures_no_probabilities(tiny_classifier, tiny_batch):
    capture = GeometryCapture(tiny_classifier, layers=-1, attention="none")
    with capture, torch.no_grad():
        tiny_classifier(**_inputs(tiny_batch))
    (forward,) = capture.pop()
    assert list(forward.layers) == [2]
    with pytest.raises(RuntimeError, match="not captured"):
        forward.layers[2].attention_probs()


def test_unsupported_models_and_decoders_are_refused():
    from transformers import BertModel, DebertaConfig, DebertaModel

    deberta_v1 = DebertaModel(  # DeBERTa (v1) fuses q/k/v into one in_proj: not hookable per head
        DebertaConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    )
    with pytest.raises(
        TypeError, match=r"supports BERT-family encoders.*DistilBERT.*DeBERTa-v2.*got DebertaModel"
    ):
        GeometryCapture(deberta_v1)
    with pytest.raises(TypeError, match="got Linear"):
        GeometryCapture(torch.nn.Linear(3, 3))
    decoder = BertModel(tiny_bert_config(is_decoder=True))
    with pytest.raises(ValueError, match="decoder"):
        GeometryCapture(decoder)
    from transformers import DebertaV2Config, DebertaV2Model

    conv = DebertaV2Model(
        DebertaV2Config(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, conv_kernel_size=3)
    )  # fmt: skip
    with pytest.raises(ValueError, match="conv_kernel_size=3"):
        GeometryCapture(conv)


def _family_model(family):
    from transformers import AutoModelForSequenceClassification

    from tests.user_modules import tiny_config

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(tiny_config(family)).eval()


def _ids_batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 100, (5, 9), generator=g)
    mask = torch.ones(5, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[3, 4:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", ["distilbert", "deberta", "electra"])
def test_other_families_capture_what_the_model_computes(family):
    """Layer input/output are the model's hidden states, the probabilities its own eager attention
    (DeBERTa: with relative positions), the attention output what the feed-forward block reads."""
    model = _family_model(family)
    batch = _ids_batch()
    eager = _eager_copy(model) if family != "deberta" else model
    with torch.no_grad():
        reference = eager(**batch, output_hidden_states=True, output_attentions=True)
    capture = GeometryCapture(model)
    assert capture.family == {"distilbert": "distilbert", "deberta": "deberta-v2", "electra": "bert"}[family]
    seen = {}
    sites = capture.sites
    handles = [  # what the feed-forward block reads, recorded independently of the capture
        (
            sites[i].layer.ffn if family == "distilbert" else sites[i].layer.intermediate
        ).register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i + 1, args[0].detach()))
        for i in range(2)
    ]
    with capture, torch.no_grad():
        out = model(**batch)
    for h in handles:
        h.remove()
    assert torch.equal(out.logits, reference.logits) or torch.allclose(
        out.logits, reference.logits, atol=1e-6
    )
    (forward,) = capture.pop()
    mask = batch["attention_mask"].bool()
    for i in (1, 2):
        cap = forward.layers[i]
        assert torch.allclose(cap.layer_input, reference.hidden_states[i - 1], atol=1e-6)
        assert torch.allclose(cap.layer_output, reference.hidden_states[i], atol=1e-6)
        assert torch.allclose(cap.attention_output, seen[i], atol=1e-6)
        assert cap.context.shape == (5, 9, 32) and cap.num_heads == 4
        probs = cap.attention_probs()
        valid_rows = (probs.transpose(1, 2)[mask], reference.attentions[i - 1].transpose(1, 2)[mask])
        assert torch.allclose(*valid_rows, atol=1e-5)
    # the heads' outputs recombine into the attention block: out_lin / dense of the context + residual
    site = sites[0]
    proj = site.context if family == "distilbert" else site.attention_output.dense
    cap = forward.layers[1]
    with torch.no_grad():
        norm = site.attention_output if family == "distilbert" else site.attention_output.LayerNorm
        rebuilt = norm(proj(cap.context) + cap.layer_input)
    assert torch.allclose(rebuilt, cap.attention_output, atol=1e-5)
    assert _hook_count(model) == 0


def test_deberta_outputs_are_unchanged_by_asking_for_probabilities():
    model = _family_model("deberta")
    batch = _ids_batch()
    with torch.no_grad():
        plain = model(**batch)
        with GeometryCapture(model):
            hooked = model(**batch)
    assert plain.attentions is None and hooked.attentions is None
    assert torch.equal(plain.logits, hooked.logits)
    assert GeometryCapture(model, attention="model").layers == [1, 2]  # always its own probabilities


def test_distilbert_attention_model_needs_eager():
    model = _family_model("distilbert")
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        GeometryCapture(model, attention="model")
    model.set_attn_implementation("eager")
    capture = GeometryCapture(model, attention="model")
    with capture, torch.no_grad():
        model(**_ids_batch())
    assert capture.pop()[0].layers[2].probs is not None


def test_wrapped_model_and_roberta_are_accepted(tiny_classifier):
    from transformers import RobertaConfig, RobertaModel

    holder = torch.nn.Module()
    holder.model = tiny_classifier  # like SequenceClassifier.model
    base, layers, _ = attention_sites(holder)
    assert base is tiny_classifier.bert and len(layers) == 2
    roberta = RobertaModel(
        RobertaConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    )
    assert GeometryCapture(roberta).layers == [1]


def test_hooks_only_while_attached_and_on_layer_streams(tiny_classifier, tiny_batch):
    seen = []
    capture = GeometryCapture(
        tiny_classifier, on_layer=lambda i, cap: seen.append((i, cap.layer_output.shape))
    )
    capture.attach()
    capture.attach()  # idempotent
    assert capture.attached and _hook_count(tiny_classifier) > 0
    with torch.no_grad():
        tiny_classifier(**_inputs(tiny_batch))
    capture.detach()
    assert _hook_count(tiny_classifier) == 0
    assert seen == [(1, (6, 10, 32)), (2, (6, 10, 32))]
    assert capture.pop() == []
    with torch.no_grad():
        tiny_classifier(**_inputs(tiny_batch))
    assert len(seen) == 2


def test_missing_attention_mask_means_all_positions(tiny_classifier, tiny_batch):
    capture = GeometryCapture(tiny_classifier, layers=[1])
    with capture, torch.no_grad():
        tiny_classifier(input_ids=tiny_batch["input_ids"])
    (forward,) = capture.pop()
    assert forward.mask.all() and forward.mask.shape == (6, 10)


@pytest.mark.parametrize("bad", ["first", 0, 3, -3, [], [2, 0]])
def test_resolve_encoder_layers_refuses(bad):
    with pytest.raises(ValueError, match="layers"):
        resolve_encoder_layers(bad, 2)


def test_resolve_encoder_layers_refuses_non_integers_with_type_error():
    with pytest.raises(TypeError, match="layers"):
        resolve_encoder_layers([1.5], 2)
    with pytest.raises(ValueError, match="0, the embeddings, has no attention"):
        resolve_encoder_layers(0, 2)


def test_resolve_encoder_layers():
    assert resolve_encoder_layers("all", 3) == [1, 2, 3]
    assert resolve_encoder_layers(-1, 3) == [3]
    assert resolve_encoder_layers([3, -3], 3) == [1, 3]
    assert resolve_encoder_layers([2, -2], 3) == [2]  # the same layer twice counts once (every lens)


def test_accumulator_means_over_batches_match_direct_scores(tiny_classifier, tiny_batch):
    acc = GeometryAccumulator([1, 2], num_heads=4)
    capture = GeometryCapture(tiny_classifier, on_layer=acc.add)
    halves = [{k: v[:3] for k, v in tiny_batch.items()}, {k: v[3:] for k, v in tiny_batch.items()}]
    with capture, torch.no_grad():
        for half in halves:
            tiny_classifier(**_inputs(half))
        out = tiny_classifier(**_inputs(tiny_batch), output_hidden_states=True, output_attentions=False)
    capture.detach()
    # the third forward (all 6 sequences again) counts too: means over 12 sequences = means over 6
    assert acc.num_sequences == 12
    result = acc.result()
    mask = tiny_batch["attention_mask"]
    for i in (1, 2):
        assert result[i]["cone/output"].item() == pytest.approx(
            cone_index(out.hidden_states[i], mask, normalize=True).mean().item(), rel=1e-5
        )
        assert result[i]["cone/input"].item() == pytest.approx(
            cone_index(out.hidden_states[i - 1], mask, normalize=True).mean().item(), rel=1e-5
        )
        assert result[i]["cone/heads"].shape == (4,)
        assert bool(((result[i]["cone/heads"] > 0) & (result[i]["cone/heads"] <= 1)).all())
    eager = _eager_copy(tiny_classifier)
    with torch.no_grad():
        attentions = eager(**_inputs(tiny_batch), output_attentions=True).attentions
    for i in (1, 2):
        expected = attention_entropy(attentions[i - 1], mask).mean(0).double()
        assert torch.allclose(result[i]["attention_entropy"], expected, atol=1e-5)
    doubled = acc.result(reduce=lambda t: t * 2)  # sums and counts doubled: same means
    assert torch.allclose(doubled[1]["cone/heads"], result[1]["cone/heads"])


def test_accumulator_refuses_a_sequence_without_valid_position(tiny_classifier, tiny_batch):
    acc = GeometryAccumulator([1, 2], num_heads=4)
    batch = {k: v.clone() for k, v in tiny_batch.items()}
    batch["attention_mask"][2] = 0
    with GeometryCapture(tiny_classifier, on_layer=acc.add), torch.no_grad():
        with pytest.raises(ValueError, match="no valid position in sequence"):
            tiny_classifier(**_inputs(batch))
    assert _hook_count(tiny_classifier) == 0
    with pytest.raises(ValueError, match="no sequence was captured"):
        GeometryAccumulator([1], num_heads=4).result()


def test_weight_geometry_matches_the_score_functions(tiny_classifier):
    out = weight_geometry(tiny_classifier, [1, 2])
    attn = tiny_classifier.bert.encoder.layer[1].attention.self
    expected = directionality(attn.query.weight.double(), attn.key.weight.double(), 4)
    assert torch.allclose(out[2]["directionality"], expected.detach())
    assert out[1]["qk_spectral_entropy"].shape == (4,)
