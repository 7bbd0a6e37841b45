"""TopologicalPruning under DDP: a 2-process CPU fit (strategy="ddp", gloo) of a user's own
LightningModule writes the compressed checkpoint that the 1-process fit writes on the same data.

Stated tolerance: the same kept units in every layer (identical widths, identical importance ranks)
and every weight within 1e-5 (float32 all-reduce of two half-batch gradients vs one full-batch
gradient, 8 AdamW steps); the logged accuracies are equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert_config

SCRIPT = Path(__file__).with_name("ddp_prune_run.py")


def _run(model_dir: Path, out: Path, devices: int, mode: str = "epoch1") -> dict:
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}  # a free port
    env.update(PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(model_dir), str(out), str(devices), mode],
        capture_output=True, text=True, timeout=600, env=env, cwd=out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
def test_two_process_ddp_writes_the_single_process_checkpoint(tmp_path, tiny_batch):
    torch.distributed.is_available() or pytest.skip("torch.distributed not available")
    from transformers import BertForSequenceClassification

    from lightning_topo.pruning import load_compressed

    torch.manual_seed(0)
    model_dir = tmp_path / "tiny"
    BertForSequenceClassification(tiny_bert_config()).save_pretrained(model_dir)
    one = _run(model_dir, tmp_path / "one", 1)
    two = _run(model_dir, tmp_path / "two", 2)
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["net_is_pruned"] == two["net_is_pruned"] == "PrunedBertForSequenceClassification"
    assert [h["widths"] for h in two["history"]] == [h["widths"] for h in one["history"]]
    assert two["history"][0]["params"] == one["history"][0]["params"]
    assert two["history"][0]["ratio"] <= 0.6
    # the same units were kept: identical importance rankings (scores within float noise)
    for name in ("importance_step1.csv",):
        rows1 = (tmp_path / "one" / "pruned" / name).read_text().splitlines()
        rows2 = (tmp_path / "two" / "pruned" / name).read_text().splitlines()
        assert len(rows1) == len(rows2) > 1
        for a, b in zip(rows1[1:], rows2[1:], strict=True):
            *key_a, score_a = a.split(",")
            *key_b, score_b = b.split(",")
            assert key_a == key_b and float(score_a) == pytest.approx(float(score_b), rel=1e-4, abs=1e-6)
    m1 = load_compressed(tmp_path / "one" / "pruned").eval()
    m2 = load_compressed(tmp_path / "two" / "pruned").eval()
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    worst = max(float((s1[k].float() - s2[k].float()).abs().max()) for k in s1)
    assert worst <= 1e-5, worst
    with torch.no_grad():
        a = m1(input_ids=tiny_batch["input_ids"], attention_mask=tiny_batch["attention_mask"]).logits
        b = m2(input_ids=tiny_batch["input_ids"], attention_mask=tiny_batch["attention_mask"]).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # training moved the weights after pruning (so the comparison above covers the recovery epochs)
    # and the summary's accuracies (the two ranks' validation shards summed) agree
    for key in ("before_pruning", "after_pruning", "after_recovery"):
        assert one["summary"]["val_acc"][key] is not None
        assert two["summary"]["val_acc"][key] == pytest.approx(one["summary"]["val_acc"][key], abs=1e-9), key
    assert one["summary"]["val_examples"] == two["summary"]["val_examples"] == 32
    assert one["summary"]["world_size"] == 1 and two["summary"]["world_size"] == 2


@pytest.mark.slow
def test_two_process_ddp_pruning_at_fit_end_with_an_explicit_calibration_dataloader(tmp_path, tiny_batch):
    """prune_epoch=None under DDP (no re-wrap: training is over) with dataloader= (rank 0 draws it alone)."""
    torch.distributed.is_available() or pytest.skip("torch.distributed not available")
    from transformers import BertForSequenceClassification

    from lightning_topo.pruning import load_compressed

    torch.manual_seed(0)
    model_dir = tmp_path / "tiny"
    BertForSequenceClassification(tiny_bert_config()).save_pretrained(model_dir)
    one = _run(model_dir, tmp_path / "one", 1, "fit-end")
    two = _run(model_dir, tmp_path / "two", 2, "fit-end")
    assert two["history"][0]["at_fit_end"] is True
    assert [h["widths"] for h in two["history"]] == [h["widths"] for h in one["history"]]
    assert (tmp_path / "two" / "pruned" / "importance_step1.csv").read_text().splitlines()[
        0
    ] == "layer,kind,unit,score"
    m1 = load_compressed(tmp_path / "one" / "pruned").eval()
    m2 = load_compressed(tmp_path / "two" / "pruned").eval()
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert max(float((s1[k].float() - s2[k].float()).abs().max()) for k in s1) <= 1e-5
    assert two["summary"]["val_acc"]["after_recovery"] is None and two["summary"]["recovery_epochs"] == 0
    assert two["summary"]["val_acc"]["after_pruning"] == pytest.approx(
        one["summary"]["val_acc"]["after_pruning"]
    )
