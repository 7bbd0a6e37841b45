"""Compressed checkpoints reload with plain transformers (stock config) or trust_remote_code (per-layer)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lightning_topo.pruning import KeepMasks, apply_keep_masks, load_compressed, save_compressed

# Runs in a fresh interpreter where lightning_topo cannot be imported (it is installed editable,
# so a cwd/PYTHONPATH trick is not enough: sys.modules entry None makes every import fail).
_LOADER = textwrap.dedent(
    """
    import sys, json
    sys.modules["lightning_topo"] = None
    try:
        import lightning_topo  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("lightning_topo is importable")
    import torch
    from transformers import AutoModelForSequenceClassification
    path, remote, batch_file, out_file = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4]
    kwargs = {"trust_remote_code": True} if remote else {}
    model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs).eval()
    batch = torch.load(batch_file, weights_only=True)
    with torch.no_grad():
        logits = model(**batch).logits
    torch.save(logits, out_file)
    print(json.dumps({"class": type(model).__name__, "module": type(model).__module__}))
    """
)


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _load_in_subprocess(path, batch, tmp_path, *, remote):
    batch_file, out_file = tmp_path / "batch.pt", tmp_path / "logits.pt"
    torch.save({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, batch_file)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
    )
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER, str(path), "1" if remote else "0", str(batch_file), str(out_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return torch.load(out_file, weights_only=True), info


def test_uniform_ffn_reloads_with_stock_transformers(tiny_classifier, tiny_batch, tmp_path):
    model = apply_keep_masks(copy.deepcopy(tiny_classifier), KeepMasks(ffn=[torch.arange(64) < 40] * 2))
    path = save_compressed(model, tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "bert" and config["intermediate_size"] == 40
    assert "auto_map" not in config and not (path / "pruned_bert.py").exists()
    assert (path / "model.safetensors").exists()
    logits, info = _load_in_subprocess(path, tiny_batch, tmp_path, remote=False)
    assert info["class"] == "BertForSequenceClassification"
    torch.testing.assert_close(logits, _logits(model, tiny_batch), atol=1e-5, rtol=0)


def test_per_layer_reloads_with_trust_remote_code_without_lightning_topo(
    tiny_classifier, tiny_batch, tmp_path
):
    masks = KeepMasks(
        ffn=[torch.arange(64) < 50, torch.arange(64) % 2 == 0],
        heads=[torch.tensor([True, False, True, True]), torch.tensor([False, True, False, False])],
    )
    model = apply_keep_masks(copy.deepcopy(tiny_classifier), masks)
    path = save_compressed(model, tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "pruned_bert"
    assert config["intermediate_sizes"] == [50, 32] and config["num_heads_per_layer"] == [3, 1]
    assert (path / "pruned_bert.py").exists()
    code = (path / "pruned_bert.py").read_text()
    assert "lightning_topo" not in code.split('"""', 2)[2]  # the module body imports only torch/transformers
    logits, info = _load_in_subprocess(path, tiny_batch, tmp_path, remote=True)
    assert info["class"] == "PrunedBertForSequenceClassification"
    assert "lightning_topo" not in info["module"]
    torch.testing.assert_close(logits, _logits(model, tiny_batch), atol=1e-5, rtol=0)


def test_per_layer_reloads_in_process_via_auto_classes(tiny_classifier, tiny_batch, tmp_path):
    from transformers import AutoModelForSequenceClassification

    import lightning_topo.pruning.export  # noqa: F401  (importing it registers the Auto classes)

    masks = KeepMasks(heads=[torch.tensor([True, True, False, True]), torch.tensor([True, True, True, True])])
    model = apply_keep_masks(copy.deepcopy(tiny_classifier), masks)
    path = save_compressed(model, tmp_path / "ckpt")
    reloaded = AutoModelForSequenceClassification.from_pretrained(path).eval()
    torch.testing.assert_close(_logits(reloaded, tiny_batch), _logits(model, tiny_batch), atol=1e-5, rtol=0)
    again = load_compressed(path).eval()
    torch.testing.assert_close(_logits(again, tiny_batch), _logits(model, tiny_batch), atol=1e-5, rtol=0)
    # a reloaded pruned model can be pruned and saved again
    apply_keep_masks(again, KeepMasks(ffn=[torch.arange(64) < 10, torch.arange(64) < 20]))
    path2 = save_compressed(again, tmp_path / "ckpt2")
    third = load_compressed(path2).eval()
    torch.testing.assert_close(_logits(third, tiny_batch), _logits(again, tiny_batch), atol=1e-5, rtol=0)


def test_overwrite_and_atomicity(tiny_classifier, tmp_path):
    path = save_compressed(tiny_classifier, tmp_path / "ckpt")
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_compressed(tiny_classifier, path)
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    save_compressed(tiny_classifier, path, overwrite=True)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ckpt"]
    assert leftovers == []


def test_tokenizer_is_saved(tiny_classifier, tmp_path):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]))
    tok = BertTokenizerFast(vocab_file=str(vocab))
    path = save_compressed(tiny_classifier, tmp_path / "ckpt", tokenizer=tok)
    assert (path / "tokenizer_config.json").exists()
