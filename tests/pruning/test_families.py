"""DistilBERT, ELECTRA and DeBERTa-v2/v3: prune (per-layer widths), save, reload three ways, equal logits."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lightning_topo.pruning import (
    KeepMasks,
    apply_keep_masks,
    layer_widths,
    layout,
    load_compressed,
    mask_units,
    prune_model,
    save_compressed,
)
from lightning_topo.pruning.remote_code.pruned_bert import LEGACY_BERT_LAYOUT

_SMALL = dict(vocab_size=64, max_position_embeddings=32)


def _distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    cfg = DistilBertConfig(
        dim=32, n_layers=2, n_heads=4, hidden_dim=64, dropout=0.0, attention_dropout=0.0, **_SMALL
    )
    return DistilBertForSequenceClassification(cfg)


def _electra():
    from transformers import ElectraConfig, ElectraForSequenceClassification

    cfg = ElectraConfig(
        embedding_size=16,  # != hidden: ELECTRA's embeddings_project is kept as is
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **_SMALL,
    )
    return ElectraForSequenceClassification(cfg)


def _deberta(share_att_key: bool, *, bare: bool = False):
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2Model

    cfg = DebertaV2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_buckets=8,
        max_relative_positions=16,
        share_att_key=share_att_key,  # False: separate pos_key_proj / pos_query_proj (v2); True: v3
        norm_rel_ebd="layer_norm",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **_SMALL,
    )
    return (DebertaV2Model if bare else DebertaV2ForSequenceClassification)(cfg)


FAMILIES = {
    "distilbert": (_distilbert, "distilbert"),
    "electra": (_electra, "electra"),
    "deberta-v2": (lambda: _deberta(False), "deberta-v2"),
    "deberta-v3": (lambda: _deberta(True), "deberta-v2"),
}
# layer 0 keeps 40 FFN units and heads 0, 2, 3; layer 1 every second unit and head 1 only
_MASKS = KeepMasks(
    ffn=[torch.arange(64) < 40, torch.arange(64) % 2 == 0],
    heads=[torch.tensor([True, False, True, True]), torch.tensor([False, True, False, False])],
)


def _spread(model):
    """Weights of std 0.2 instead of 0.02, so that removing units moves the logits visibly."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def _model(name):
    torch.manual_seed(0)
    return _spread(FAMILIES[name][0]())


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 64, (4, 12), generator=g)
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[1, 8:] = 0
    mask[3, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _out(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


_LOADER = textwrap.dedent(
    """
    import sys, json
    sys.modules["lightning_topo"] = None  # lightning-topo cannot be imported in this process
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification
    path, auto, remote, batch_file, out_file = sys.argv[1:6]
    cls = AutoModel if auto == "bare" else AutoModelForSequenceClassification
    model = cls.from_pretrained(path, trust_remote_code=remote == "1").eval()
    with torch.no_grad():
        out = model(**torch.load(batch_file, weights_only=True))
    torch.save(out.logits if hasattr(out, "logits") else out.last_hidden_state, out_file)
    print(json.dumps({"class": type(model).__name__, "module": type(model).__module__}))
    """
)


def _plain_transformers(path, batch, tmp_path, *, remote, bare=False):
    """Logits from a fresh interpreter where lightning_topo cannot be imported."""
    batch_file, out_file = tmp_path / "batch.pt", tmp_path / "out.pt"
    torch.save(batch, batch_file)
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "mods")
    )
    args = [str(path), "bare" if bare else "cls", "1" if remote else "0", str(batch_file), str(out_file)]
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out_file, weights_only=True), json.loads(proc.stdout.strip().splitlines()[-1])


def _folder_modules(path: Path) -> list[str]:
    """Modules of this process loaded from ``path`` or from transformers' dynamic-module cache."""
    out = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None) or ""
        if name.startswith("transformers_modules") or (
            file and Path(file).resolve().is_relative_to(path.resolve())
        ):
            out.append(name)
    return out


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_prunes_saves_and_reloads_with_equal_logits(name, batch, tmp_path):
    model = _model(name)
    family = layout.check_supported(model)
    assert family == FAMILIES[name][1]
    zeroed = mask_units(copy.deepcopy(model), _MASKS)
    pruned = apply_keep_masks(copy.deepcopy(model), _MASKS)
    assert layer_widths(pruned) == {"ffn": [40, 32], "heads": [3, 1]}
    expected = _out(pruned, batch)
    torch.testing.assert_close(expected, _out(zeroed, batch), atol=1e-5, rtol=0)
    assert not torch.allclose(expected, _out(model, batch), atol=1e-2)  # pruning changed the model

    path = save_compressed(pruned, tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    spec = layout.FAMILIES[family]
    assert config["model_type"] == spec.pruned_model_type
    assert config["intermediate_sizes"] == [40, 32] and config["num_heads_per_layer"] == [3, 1]
    assert config["pruned_layout"] == spec.spec()
    assert (path / "pruned_bert.py").is_file()

    # 1. our registered class, trust_remote_code=False: the folder's pruned_bert.py is never imported
    ours = load_compressed(path).eval()
    assert type(ours).__module__.startswith("lightning_topo.")
    torch.testing.assert_close(_out(ours, batch), expected, atol=1e-5, rtol=0)
    assert _folder_modules(path) == []

    # 2. plain transformers without lightning-topo, through the folder's own code
    logits, info = _plain_transformers(path, batch, tmp_path, remote=True)
    assert info["class"] == type(ours).__name__ and "lightning_topo" not in info["module"]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)

    # 3. a reloaded pruned model prunes again (uniform allocation now) and round-trips
    again = prune_model(ours, [batch], method="magnitude", ratio=0.7, ffn_multiple=1)
    path2 = save_compressed(again, tmp_path / "ckpt2")
    torch.testing.assert_close(
        _out(load_compressed(path2).eval(), batch), _out(again, batch), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("name", ["distilbert", "deberta-v2"])
def test_uniform_ffn_keeps_the_stock_config(name, batch, tmp_path):
    model = apply_keep_masks(_model(name), KeepMasks(ffn=[torch.arange(64) < 24] * 2))
    path = save_compressed(model, tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    ffn_key = layout.FAMILIES[FAMILIES[name][1]].config_ffn
    assert config["model_type"] == FAMILIES[name][1] and config[ffn_key] == 24
    assert "auto_map" not in config and not (path / "pruned_bert.py").exists()
    logits, info = _plain_transformers(path, batch, tmp_path, remote=False)
    torch.testing.assert_close(logits, _out(model, batch), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        _out(load_compressed(path).eval(), batch), _out(model, batch), atol=1e-5, rtol=0
    )


def test_bare_deberta_encoder_round_trips(batch, tmp_path):
    torch.manual_seed(0)
    model = apply_keep_masks(_spread(_deberta(False, bare=True)), _MASKS)
    path = save_compressed(model, tmp_path / "ckpt")
    logits, info = _plain_transformers(path, batch, tmp_path, remote=True, bare=True)
    assert info["class"] == "PrunedDebertaV2Model"
    torch.testing.assert_close(logits, _out(model, batch), atol=1e-5, rtol=0)


def test_deberta_position_projections_follow_the_heads():
    model = _deberta(False)
    pruned = apply_keep_masks(copy.deepcopy(model), _MASKS)
    for layer, old, keep in zip(
        pruned.deberta.encoder.layer, model.deberta.encoder.layer, _MASKS.heads, strict=True
    ):
        rows = (keep.nonzero().squeeze(1)[:, None] * 8 + torch.arange(8)).flatten()
        for proj in ("query_proj", "key_proj", "value_proj", "pos_key_proj", "pos_query_proj"):
            new_w, old_w = (
                getattr(layer.attention.self, proj).weight,
                getattr(old.attention.self, proj).weight,
            )
            assert torch.equal(new_w, old_w[rows]), proj
        assert layer.attention.self.num_attention_heads == int(keep.sum())
        assert layer.attention.self.all_head_size == int(keep.sum()) * 8
    shared = apply_keep_masks(_deberta(True), _MASKS)
    assert not hasattr(shared.deberta.encoder.layer[0].attention.self, "pos_key_proj")


def test_legacy_bert_layout_is_the_bert_adapter():
    """pruned_bert/pruned_roberta folders written before pruned_layout existed rebuild with this."""
    assert LEGACY_BERT_LAYOUT == layout.FAMILIES["bert"].spec() == layout.FAMILIES["roberta"].spec()


def test_unsupported_family_gets_one_line_naming_the_supported_ones():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    gpt2 = GPT2ForSequenceClassification(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(TypeError) as err:
        prune_model(gpt2, None, method="magnitude", ratio=0.5)
    message = str(err.value)
    assert "\n" not in message and "GPT2ForSequenceClassification" in message
    for label in ("BERT", "RoBERTa", "ELECTRA", "DistilBERT", "DeBERTa-v2/v3"):
        assert label in message
