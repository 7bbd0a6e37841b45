"""W&B as its users expect it (``lightning_topo.plots.wandb``), checked in the offline run file
decoded with wandb's own protobuf records: epoch step metric, images at every measurement, an
interactive score-vs-accuracy chart, a ``model`` artifact and the settings in the run config."""

from __future__ import annotations

import struct
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import wandb
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch.utils.data import DataLoader

from lightning_topo.callbacks.run_dir import record_settings, run_dir
from lightning_topo.plots import plot_score_vs_epoch
from lightning_topo.plots.wandb import (
    define_lens_metrics,
    log_lens_images,
    log_model_artifact,
    log_score_vs_monitor,
    offline_run,
    read_offline_run,
)
from lightning_topo.report import RUN_SETTINGS, build_report, resolve_run

ACC = [0.5, 0.625, 0.75]
PSF = [0.03, 0.02, 0.025]


class _Linear(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", ACC[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class _Lens(pl.Callback):
    """What a lens monitor and the pruning callback do, with the functions of plots/wandb.py."""

    def __init__(self):
        self.history = []

    def setup(self, trainer, pl_module, stage):
        define_lens_metrics(trainer.loggers, ["topo"])
        settings = {
            "log_prefix": "topo",
            "monitor_against": "val/acc",
            "headline": "topo/psf",
            "layers": (-1,),
        }
        record_settings(trainer, "PersistenceScoreMonitor/topo", settings)

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        pl_module.log("topo/psf", PSF[epoch])
        self.history.append({"epoch": epoch, "step": trainer.global_step, "scores": {"topo/psf": PSF[epoch]},
                             "monitor": ACC[epoch]})  # fmt: skip
        out = run_dir(trainer) / "topo"
        png = plot_score_vs_epoch(self.history, "topo/psf", "val/acc", out / "topo_psf_vs_epoch.png")
        assert log_lens_images(
            trainer.loggers, {"topo/plots/psf_vs_epoch": png}, epoch, step=trainer.global_step
        )
        assert log_score_vs_monitor(trainer.loggers, self.history, "topo/psf", "val/acc", exclude_epochs=[1])

    def on_fit_end(self, trainer, pl_module):
        folder = run_dir(trainer) / "pruned"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\0" * 64)
        assert log_model_artifact(trainer.loggers, folder, metadata={"weight_bytes": 64, "ratio": 0.6})


def _fit(tmp_path: Path, offline_logger: bool) -> tuple[WandbLogger, Path]:
    logger = WandbLogger(save_dir=str(tmp_path), project="proj", offline=offline_logger)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, logger=[logger, CSVLogger(tmp_path)], max_epochs=3, limit_train_batches=2,
        limit_val_batches=1, accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, log_every_n_steps=1, callbacks=[_Lens()],
    )  # fmt: skip
    data = DataLoader(torch.randn(8, 4), batch_size=2)
    trainer.fit(_Linear(), data, data)
    wandb.finish()
    (wandb_run,) = sorted((tmp_path / "wandb").glob("offline-run-*"))
    return logger, wandb_run


@pytest.mark.parametrize("offline_logger", [False, True], ids=["WANDB_MODE=offline", "offline=True"])
def test_offline_run_holds_epoch_axis_images_chart_artifact_and_settings(
    tmp_path, monkeypatch, offline_logger
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger, wandb_run = _fit(tmp_path, offline_logger)
    run = offline_run(wandb_run, timeout=60)
    assert run.run_id == logger.version
    # every topo/ chart against epoch; Lightning's global-step definition kept for the rest
    assert run.metrics["topo/*"] == "epoch" and "epoch" in run.metrics
    assert run.metrics.get("*") == "trainer/global_step"
    # the scalar itself, stepped by epoch
    assert [(e, pytest.approx(v)) for e, v in run.series("topo/psf")] == list(enumerate(PSF))
    # one image per measurement, each in a row with its epoch
    images = [(row.get("epoch"), row["topo/plots/psf_vs_epoch._type"]) for row in run.history
              if "topo/plots/psf_vs_epoch._type" in row]  # fmt: skip
    assert images == [(0, "image-file"), (1, "image-file"), (2, "image-file")]
    # the interactive scatter: a table re-logged each epoch (epoch 1 excluded), and its chart spec
    key = "topo/charts/psf_vs_val_acc"
    rows = [row[f"{key}_table.nrows"] for row in run.history if f"{key}_table.nrows" in row]
    assert rows == [1, 1, 2]
    assert f"_wandb.visualize.{key}" in run.config
    # the compressed model as a model artifact, Lightning's naming
    (model,) = [a for a in run.artifacts if a["type"] == "model"]
    assert model["name"] == f"model-{logger.version}-compressed"
    assert model["files"] == ["model.safetensors"] and model["metadata"] == {"weight_bytes": 64, "ratio": 0.6}
    assert "latest" in model["aliases"]
    # the settings in the run config and in the run folder
    assert run.config["PersistenceScoreMonitor/topo"]["layers"] == [-1]
    folder = resolve_run(wandb_run).run_dir
    assert (folder / RUN_SETTINGS).is_file() and folder.name == "version_0"


def test_report_reads_a_wandb_offline_run_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _, wandb_run = _fit(tmp_path, False)
    offline_run(wandb_run, timeout=60)  # wait for the W&B service to flush the file
    (wandb_run / "lightning_topo_run.json").unlink()  # no pointer: the W&B log itself is read
    (tmp_path / "lightning_logs").rename(tmp_path / "elsewhere")
    run = resolve_run(wandb_run)
    assert run.log_kind == "wandb"
    page = build_report(wandb_run)
    assert "W&amp;B offline run" in page and "topo/psf" in page


def test_reader_refuses_a_damaged_file(tmp_path):
    bad = tmp_path / "run-x.wandb"
    bad.write_bytes(b"not wandb")
    with pytest.raises(ValueError, match="not a W&B run file"):
        list(read_offline_run(bad))
    record = b"\x08\x01"
    bad.write_bytes(
        b":W&B" + struct.pack("<HB", 0xBEE1, 0) + struct.pack("<IHB", 123, len(record), 1) + record
    )
    with pytest.raises(ValueError, match="CRC"):
        list(read_offline_run(bad))


def test_senders_do_nothing_without_wandb_and_check_their_input(tmp_path):
    loggers = [CSVLogger(tmp_path)]
    assert define_lens_metrics(loggers, ["topo"]) == 0
    assert log_score_vs_monitor(loggers, [], "topo/psf", "val/acc") == 0
    with pytest.raises(ValueError, match="prefixes"):
        define_lens_metrics(loggers, [""])
    with pytest.raises(FileNotFoundError, match="no image file"):
        log_lens_images(loggers, {"topo/plots/x": tmp_path / "missing.png"}, 0)
    with pytest.raises(NotADirectoryError, match="not an existing folder"):
        log_model_artifact(loggers, tmp_path / "missing")
