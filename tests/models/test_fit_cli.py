"""End to end through LightningCLI: a tiny random BERT learns a separable toy task."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from lightning_topo.cli.fit import TRAINER_DEFAULTS, TopoLightningCLI, run_lightning_cli
from lightning_topo.models import SequenceClassifier, TextClassificationDataModule


def _config(tmp_path: Path, model_dir: Path, data_file: Path, epochs: int = 4) -> Path:
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(
        f"""
seed_everything: 0
torch_threads: 1
model:
  model_name_or_path: {model_dir}
  learning_rate: 3.0e-3
  warmup_ratio: 0.0
data:
  data_file: {data_file}
  text_column: sentence
  label_column: target
  max_length: 16
  batch_size: 16
trainer:
  max_epochs: {epochs}
  accelerator: cpu
  devices: 1
  log_every_n_steps: 1
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    - class_path: lightning.pytorch.loggers.CSVLogger
      init_args: {{save_dir: {tmp_path / "runs"}, name: toy}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {tmp_path / "ckpt"}, monitor: val/acc, mode: max, save_top_k: 1}}
"""
    )
    return cfg


@pytest.mark.slow
def test_fit_through_cli_learns_and_checkpoint_reloads(tiny_model_dir, toy_csv, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_model_dir, toy_csv)
    cli = run_lightning_cli(["fit", "--config", str(cfg)])
    assert torch.get_num_threads() == 1  # torch_threads: 1 in the config
    assert cli.model.hparams.num_labels == 2  # linked from data.num_classes
    assert cli.datamodule.tokenizer_name_or_path == str(tiny_model_dir)  # linked from the model

    metrics_file = tmp_path / "runs" / "toy" / "version_0" / "metrics.csv"
    rows = list(csv.DictReader(metrics_file.open()))
    epoch_loss = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert len(epoch_loss) == 4
    assert epoch_loss[-1] < 0.7 * epoch_loss[0], epoch_loss
    val_acc = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    assert val_acc[-1] >= 0.9, val_acc
    assert {"val/loss", "val/f1"} <= set(rows[0])
    assert "fit done: val/acc=" in capsys.readouterr().out

    ckpts = list((tmp_path / "ckpt").glob("*.ckpt"))
    assert len(ckpts) == 1
    reloaded = SequenceClassifier.load_from_checkpoint(ckpts[0])
    assert reloaded.hparams.model_name_or_path == str(tiny_model_dir)
    reloaded.eval()
    batch = next(iter(cli.datamodule.val_dataloader()))
    acc = (reloaded(batch).argmax(-1) == batch["labels"]).float().mean()
    assert acc >= 0.9

    # validate/test/predict with the checkpoint through the same CLI
    cli = run_lightning_cli(["test", "--config", str(cfg), "--ckpt_path", str(ckpts[0])])
    assert cli.trainer.callback_metrics["test/acc"] >= 0.9
    cli = run_lightning_cli(["validate", "--config", str(cfg), "--ckpt_path", str(ckpts[0])])
    assert cli.trainer.callback_metrics["val/acc"] >= 0.9
    cli = run_lightning_cli(["predict", "--config", str(cfg), "--ckpt_path", str(ckpts[0])])
    predictions = cli.trainer.predict_loop.predictions
    assert predictions and set(predictions[0]) >= {"logits", "probs", "preds"}
    assert sum(len(p["preds"]) for p in predictions) == 20  # the test split


class _ParseOnly(TopoLightningCLI):
    def instantiate_classes(self) -> None:  # parse, validate and link; build nothing
        pass


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_every_shipped_config_is_listed():
    assert {p.name for p in CONFIGS} >= {
        "quickstart.yaml",
        "minilm_rotten_tomatoes.yaml",
        "bert_base_sst2.yaml",
        "early_stop_psf.yaml",
        "prune.yaml",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    """Each shipped config parses against the current signatures (callback arguments included); nothing is
    built, so no model is loaded and nothing is downloaded (bert_base_sst2 names a hub model)."""
    import yaml

    raw = yaml.safe_load(path.read_text())
    cli = _ParseOnly(
        SequenceClassifier,
        TextClassificationDataModule,
        args=["--config", str(path)],
        run=False,
        trainer_defaults=TRAINER_DEFAULTS,
    )
    cfg = cli.config
    assert cfg.data.tokenizer_name_or_path == cfg.model.model_name_or_path  # the link holds
    assert cfg.model.model_name_or_path == raw["model"].get("model_name_or_path")
    assert cfg.torch_threads is None  # torch's own thread setting by default (issue 10 item 11)
    listed = [c["class_path"] for c in raw["trainer"]["callbacks"]]
    assert [c.class_path for c in cfg.trainer.callbacks] == listed
    for parsed, given in zip(cfg.trainer.callbacks, raw["trainer"]["callbacks"], strict=True):
        for key, value in (given.get("init_args") or {}).items():
            assert parsed.init_args[key] == value, (parsed.class_path, key)
    assert any(p.endswith("ModelCheckpoint") for p in listed)
    for key, value in raw["data"].items():
        assert cfg.data[key] == value, key


def test_failed_compressed_save_after_fit_is_one_line_with_exit_1(
    tiny_model_dir, toy_csv, tmp_path, capsys, monkeypatch
):
    from conftest import disk_full_at

    from lightning_topo.cli import main as topo_main

    out = tmp_path / "pruned"
    area = disk_full_at(monkeypatch, out, tmp_path / "tmp")
    cfg = _config(tmp_path, tiny_model_dir, toy_csv, epochs=1)
    prune = (
        "    - class_path: lightning_topo.callbacks.TopologicalPruning\n"
        f"      init_args: {{method: magnitude, ratio: 0.8, prune_epoch: null, evaluate: false, output_dir: {out}}}\n"
    )
    cfg.write_text(cfg.read_text() + prune)
    assert topo_main(["fit", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lightning-topo fit: error:")]
    (rescued,) = area.iterdir()
    assert "Traceback" not in err and len(lines) == 1, err
    assert "No space left on device" in lines[0] and f"kept at {rescued}" in lines[0]
    assert (rescued / "config.json").is_file() and not out.exists()
