"""int8 on top of the compressed checkpoint: ``quantize_int8``, ``load_compressed(quantize="int8")`` and
the fp32/int8 comparison of ``lightning_topo.pruning.report`` on tiny random BERT models."""

from __future__ import annotations

import copy
import hashlib

import pytest
import torch
from torch import nn

from lightning_topo.pruning import (
    compare_int8,
    load_compressed,
    prune_model,
    quantize_int8,
    save_compressed,
    verify_manifest,
)
from lightning_topo.pruning.quantize import is_int8
from lightning_topo.pruning.report import VARIANTS, accuracy, format_table, measure, time_alternating


def _dynamic_linear():
    from torch.ao.nn.quantized.dynamic import Linear

    return Linear


def _linear_types(model):
    return {type(m) for m in model.modules() if isinstance(m, (nn.Linear, _dynamic_linear()))}


@pytest.fixture
def batches(tiny_batch):
    g = torch.Generator().manual_seed(1)
    second = {k: v.clone() for k, v in tiny_batch.items()}
    second["input_ids"] = torch.randint(5, 128, second["input_ids"].shape, generator=g)
    second["labels"] = torch.tensor([1, 1, 0, 0, 1, 0])
    return [tiny_batch, second]


@pytest.fixture
def pruned_folder(tiny_classifier, batches, tmp_path):
    model = copy.deepcopy(tiny_classifier)
    prune_model(model, batches, method="magnitude", ratio=0.5)
    return save_compressed(model.eval(), tmp_path / "pruned"), model


def _files(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_quantize_int8_replaces_every_linear_and_keeps_the_original(tiny_classifier, tiny_batch):
    float_before = {k: v.clone() for k, v in tiny_classifier.state_dict().items()}
    q = quantize_int8(tiny_classifier)
    assert _linear_types(q) == {_dynamic_linear()}
    assert is_int8(q) and not is_int8(tiny_classifier)
    assert _linear_types(tiny_classifier) == {nn.Linear}  # inplace=False: a copy was quantised
    for k, v in tiny_classifier.state_dict().items():
        assert torch.equal(v, float_before[k]), k
    n_linear = sum(type(m) is nn.Linear for m in tiny_classifier.modules())
    assert sum(isinstance(m, _dynamic_linear()) for m in q.modules()) == n_linear
    assert isinstance(q.bert.embeddings.word_embeddings, nn.Embedding)  # embeddings stay float


def test_int8_logits_close_to_float(tiny_classifier, tiny_batch):
    inputs = {k: tiny_batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        ref = tiny_classifier(**inputs).logits
        got = quantize_int8(tiny_classifier)(**inputs).logits
    scale = ref.abs().max().item()
    assert not torch.equal(got, ref)  # the int8 path really ran
    torch.testing.assert_close(got, ref, atol=0.05 * scale, rtol=0.0)


def test_inplace_quantises_the_model_itself(tiny_classifier):
    q = quantize_int8(tiny_classifier, inplace=True)
    assert q is tiny_classifier and is_int8(tiny_classifier)


def test_load_compressed_int8_leaves_checkpoint_float(pruned_folder, tiny_batch):
    folder, pruned = pruned_folder
    before = _files(folder)
    q = load_compressed(folder, quantize="int8")
    assert is_int8(q) and type(q).__name__ == type(load_compressed(folder)).__name__
    assert _files(folder) == before
    verify_manifest(folder)  # SHA256SUMS still verifies
    assert _linear_types(load_compressed(folder)) == {nn.Linear}  # reloads as float
    inputs = {k: tiny_batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        ref = pruned.eval()(**inputs).logits
        got = q(**inputs).logits
    torch.testing.assert_close(got, ref, atol=0.05 * ref.abs().max().item(), rtol=0.0)


@pytest.mark.parametrize("bad", ["int4", "INT8", "fp16", True, 8, ""])
def test_bad_quantize_refused_before_reading(tmp_path, bad):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(ValueError, match=r"quantize must be one of \[None, 'int8'\]") as info:
        load_compressed(missing, quantize=bad)
    assert repr(bad) in str(info.value)


def test_int8_with_gpu_device_map_refused(tmp_path):
    with pytest.raises(ValueError, match="CPU only"):
        load_compressed(tmp_path / "x", quantize="int8", device_map="cuda")


def test_quantize_refuses_non_cpu_non_float32_and_non_modules(tiny_classifier):
    with pytest.raises(ValueError, match=r"meta.*CPU only.*model\.cpu\(\)"):
        quantize_int8(copy.deepcopy(tiny_classifier).to("meta"))
    with pytest.raises(ValueError, match=r"torch\.float16.*model\.float\(\)"):
        quantize_int8(copy.deepcopy(tiny_classifier).half())
    with pytest.raises(ValueError, match="no torch.nn.Linear"):
        quantize_int8(quantize_int8(tiny_classifier))
    with pytest.raises(TypeError, match="nn.Module"):
        quantize_int8({"weight": torch.zeros(2, 2)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quantize_refuses_cuda_model(tiny_classifier):
    with pytest.raises(ValueError, match="cuda.*CPU only"):
        quantize_int8(copy.deepcopy(tiny_classifier).cuda())


# ---------------------------------------------------------------------- the comparison


def test_compare_int8_fields(tiny_classifier, pruned_folder, batches):
    _, pruned = pruned_folder
    threads = torch.get_num_threads()
    report = compare_int8(tiny_classifier, pruned, batches, reps=3, latency_reps=3, threads=1)
    assert torch.get_num_threads() == threads  # restored
    rows = report["rows"]
    assert list(rows) == list(VARIANTS)
    for name, model in (("dense fp32", tiny_classifier), ("pruned fp32", pruned)):
        assert rows[name]["accuracy"] == pytest.approx(accuracy(model, batches))
    dense_acc = rows["dense fp32"]["accuracy"]
    for r in rows.values():
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["accuracy_delta_points"] == pytest.approx(100 * (r["accuracy"] - dense_acc))
        assert r["throughput_seq_s"] > 0 and r["latency_ms"] > 0 and r["state_dict_mb"] > 0
    assert rows["dense fp32"]["speedup"] == 1.0 and rows["dense fp32"]["latency_speedup"] == 1.0
    for name in VARIANTS[1:]:
        r = rows[name]
        ref = rows["dense fp32"]
        assert r["speedup"] == pytest.approx(r["throughput_seq_s"] / ref["throughput_seq_s"])
    s = report["settings"]
    assert s["throughput_batch"] == [32, 64] and s["latency_batch"] == [1, 64] and s["threads"] == 1
    assert s["reference"] == "dense fp32"
    table = format_table(report)
    assert all(name in table for name in VARIANTS) and "seq/s@32x64" in table
    assert _linear_types(tiny_classifier) == {nn.Linear} and _linear_types(pruned) == {nn.Linear}


def test_int8_state_dict_is_smaller():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
        max_position_embeddings=32,
    )  # fmt: skip
    model = BertForSequenceClassification(config).eval()
    report = measure({"fp32": model, "int8": quantize_int8(model)}, None, reps=1, latency_reps=1, length=8)
    fp32, int8 = report["rows"]["fp32"], report["rows"]["int8"]
    assert fp32["accuracy"] is None and int8["accuracy_delta_points"] is None
    assert int8["state_dict_mb"] < 0.6 * fp32["state_dict_mb"]


def test_accuracy_and_timing_refuse_bad_input(tiny_classifier, tiny_batch):
    unlabelled = {k: v for k, v in tiny_batch.items() if k != "labels"}
    with pytest.raises(ValueError, match="labels"):
        accuracy(tiny_classifier, [unlabelled])
    with pytest.raises(ValueError, match="no examples"):
        accuracy(tiny_classifier, [])
    with pytest.raises(ValueError, match="reps"):
        time_alternating({"m": tiny_classifier}, batch_size=2, reps=0)
    with pytest.raises(ValueError, match="threads"):
        measure({"m": tiny_classifier}, None, threads=0)
    with pytest.raises(ValueError, match="at least one model"):
        measure({}, None)
