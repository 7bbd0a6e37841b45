"""``lightning-topo prune --int8-report`` on a tiny BERT with the embedded tokenizer: after the
compressed checkpoint is saved, the four-row fp32/int8 comparison is printed and written to
``int8_report.json`` in the output folder; the checkpoint itself stays float and verifies."""

from __future__ import annotations

import json
import re

import pytest
from torch import nn

from lightning_topo.cli import main as topo_main
from lightning_topo.pruning import load_compressed, verify_manifest
from lightning_topo.pruning.report import VARIANTS


def _argv(src, out, data_file, *extra):
    return [
        "prune", "--checkpoint", str(src), "--output", str(out), "--ratio", "0.5", "--method", "magnitude",
        "--recover-epochs", "0", "--data-file", str(data_file), "--max-length", "16", "--batch-size", "16",
        "--calibration-batches", "1", "--accelerator", "cpu", *extra,
    ]  # fmt: skip


def test_int8_report_written(tiny_hf_folder, data_file, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert topo_main(_argv(tiny_hf_folder, out, data_file, "--int8-report")) == 0
    stdout = capsys.readouterr().out
    report = json.loads((out / "int8_report.json").read_text())
    rows = report["rows"]
    assert list(rows) == list(VARIANTS)
    for name in VARIANTS:
        assert name in stdout
        r = rows[name]
        assert 0.0 <= r["accuracy"] <= 1.0 and r["throughput_seq_s"] > 0 and r["latency_ms"] > 0
    settings = report["settings"]
    assert settings["split"] == "val" and settings["val_examples"] > 0
    assert settings["pruned"] == str(out) and settings["dense"] == str(tiny_hf_folder.resolve())
    assert settings["throughput_batch"] == [32, 64] and settings["latency_batch"] == [1, 64]
    # the pruned fp32 row measures the same model on the same split as the command's val/acc
    val_acc = float(re.search(r"val/acc (\d\.\d+)", stdout).group(1))
    assert rows["pruned fp32"]["accuracy"] == pytest.approx(val_acc, abs=1e-4)
    assert rows["dense fp32"]["state_dict_mb"] > rows["pruned fp32"]["state_dict_mb"]
    # the checkpoint stays float and its SHA256SUMS still verifies (the report is not listed in it)
    verify_manifest(out)
    model = load_compressed(out)
    assert any(type(m) is nn.Linear for m in model.modules())
    assert not list(out.glob(".int8_report*"))  # no staging leftovers


def test_no_report_without_flag(tiny_hf_folder, data_file, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert topo_main(_argv(tiny_hf_folder, out, data_file)) == 0
    assert not (out / "int8_report.json").exists()
    assert "pruned int8" not in capsys.readouterr().out


def test_no_int8_engine_refused_before_loading(tiny_hf_folder, data_file, tmp_path, capsys, monkeypatch):
    import torch

    import lightning_topo.cli.prune as prune_cli

    def never(*args, **kwargs):
        raise AssertionError("the checkpoint must not be loaded")

    monkeypatch.setattr(prune_cli, "_load_module", never)
    monkeypatch.setattr(type(torch.backends.quantized), "supported_engines", property(lambda self: ["none"]))
    out = tmp_path / "pruned"
    assert topo_main(_argv(tiny_hf_folder, out, data_file, "--int8-report")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lightning-topo prune: error:")]
    assert len(lines) == 1 and "--int8-report" in lines[0] and "quantised CPU engine" in lines[0], err
    assert not out.exists()


@pytest.mark.slow
def test_int8_report_from_lightning_ckpt_with_recovery(tiny_hf_folder, data_file, tmp_path, capsys):
    """Dense = the model of the source ``.ckpt`` (not the pruned one): its fp32 row matches
    Lightning's own val/acc of that checkpoint, on the same split."""
    import lightning.pytorch as pl

    from lightning_topo.models.classifier import SequenceClassifier
    from lightning_topo.models.datamodule import TextClassificationDataModule

    module = SequenceClassifier(model_name_or_path=str(tiny_hf_folder), num_labels=2)
    dm = TextClassificationDataModule(
        data_file=str(data_file), tokenizer_name_or_path=str(tiny_hf_folder), max_length=16, batch_size=16
    )
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=2, accelerator="cpu", devices=1, logger=False,
        default_root_dir=tmp_path, enable_progress_bar=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    dense_acc = float(trainer.validate(module, datamodule=dm, verbose=False)[0]["val/acc"])
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    out = tmp_path / "pruned"
    argv = _argv(ckpt, out, data_file, "--int8-report")
    argv[argv.index("--recover-epochs") + 1] = "1"
    assert topo_main(argv) == 0
    rows = json.loads((out / "int8_report.json").read_text())["rows"]
    assert rows["dense fp32"]["accuracy"] == pytest.approx(dense_acc, abs=1e-4)
    assert rows["dense fp32"]["state_dict_mb"] > rows["pruned fp32"]["state_dict_mb"]  # not the pruned one
    val_acc = float(re.search(r"val/acc (\d\.\d+)", capsys.readouterr().out).group(1))
    assert rows["pruned fp32"]["accuracy"] == pytest.approx(val_acc, abs=1e-4)
    verify_manifest(out)
