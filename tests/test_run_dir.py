"""``run_dir(trainer)``: one per-run folder whatever the loggers, pointers in every logger folder,
and a second run in the same folder that neither fails nor overwrites the first."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import wandb
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from torch.utils.data import DataLoader

from lightning_topo.callbacks.run_dir import pruning_epochs, run_dir
from lightning_topo.report import RUN_POINTER, build_report, read_run, resolve_run


class _Linear(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", 0.5)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class _Writes(pl.Callback):
    """Asks ``run_dir`` at setup (every rank) and at fit end, and writes one output there (rank 0)."""

    def __init__(self, record: str | None = None):
        self.record = record
        self.folders: list[Path] = []

    def setup(self, trainer, pl_module, stage):
        self.folders.append(run_dir(trainer))

    def on_fit_end(self, trainer, pl_module):
        folder = run_dir(trainer)
        self.folders.append(folder)
        assert len(set(self.folders)) == 1, self.folders  # the same at setup and at fit end
        if self.record is not None:
            Path(self.record, f"rank{trainer.global_rank}.txt").write_text(str(folder))
        if trainer.is_global_zero:
            (folder / "topo").mkdir()  # exist_ok=False: a folder shared by two runs fails here
            (folder / "topo" / "figure.png").write_text(f"run in {folder}")
            (folder / "pruned").mkdir()
            record = {"step": 1, "epoch": 0, "params": 6, "ratio": 0.6, "widths": {"heads": [1], "ffn": [2]}}
            history = {"method": f"method-of-{folder.name}", "original_params": 10, "history": [record]}
            (folder / "pruned" / "pruning_history.json").write_text(json.dumps(history))


def _fit(root: Path, loggers, **kwargs) -> _Writes:
    probe = _Writes(kwargs.pop("record", None))
    trainer = pl.Trainer(
        default_root_dir=root, logger=loggers, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
        accelerator="cpu", devices=kwargs.pop("devices", 1), enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        callbacks=[probe], **kwargs,
    )  # fmt: skip
    data = DataLoader(torch.randn(8, 4), batch_size=2)
    trainer.fit(_Linear(), data, data)
    return probe


def _pointer(folder: Path) -> dict:
    return json.loads((folder / RUN_POINTER).read_text())


def test_csv_only_uses_the_version_folder_and_a_second_run_gets_its_own(tmp_path):
    first = _fit(tmp_path, CSVLogger(tmp_path, name="runs")).folders[0]
    second = _fit(tmp_path, CSVLogger(tmp_path, name="runs")).folders[0]
    assert first == (tmp_path / "runs" / "version_0").resolve()
    assert second == (tmp_path / "runs" / "version_1").resolve()
    assert (first / "metrics.csv").is_file() and (second / "metrics.csv").is_file()
    assert (first / "topo" / "figure.png").read_text() == f"run in {first}"  # not overwritten
    own = _pointer(first)
    assert own["run_dir"] == "." and own["run_id"] != _pointer(second)["run_id"]
    assert resolve_run(first).run_dir == first


def test_tensorboard_logger_gets_the_run_and_report_reads_its_events(tmp_path):
    folder = _fit(tmp_path, TensorBoardLogger(tmp_path, name="tb")).folders[0]
    assert folder == (tmp_path / "tb" / "version_0").resolve()
    assert list(folder.glob("events.out.tfevents.*"))
    run = resolve_run(tmp_path / "tb")
    assert run.run_dir == folder and run.log_kind == "tensorboard"
    assert "val/acc" in read_run(tmp_path / "tb").series


def test_no_logger_gets_versioned_folders_under_default_root_dir(tmp_path):
    first = _fit(tmp_path, False).folders[0]
    second = _fit(tmp_path, False).folders[0]
    assert first == (tmp_path / "lightning_topo_runs" / "version_0").resolve()
    assert second == (tmp_path / "lightning_topo_runs" / "version_1").resolve()
    assert _pointer(first)["loggers"] == [] and (first / "topo" / "figure.png").is_file()


def test_explicit_version_reused_never_overwrites_the_earlier_run(tmp_path):
    first = _fit(tmp_path, CSVLogger(tmp_path, name="runs", version=0)).folders[0]
    second = _fit(tmp_path, CSVLogger(tmp_path, name="runs", version=0)).folders[0]
    assert first == (tmp_path / "runs" / "version_0").resolve()
    assert second == first / "lightning_topo_runs" / "run_0"
    assert (first / "topo" / "figure.png").read_text() == f"run in {first}"
    # the CSV folder (whose metrics.csv is now the second run's) points at the second run
    assert resolve_run(first).run_dir == second
    third = _fit(tmp_path, CSVLogger(tmp_path, name="runs", version=0)).folders[0]
    assert third == first / "lightning_topo_runs" / "run_1"


def test_wandb_first_then_csv_twice_in_one_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    folders = []
    for _ in range(2):
        loggers = [WandbLogger(save_dir=str(tmp_path), project="proj", offline=True), CSVLogger(tmp_path)]
        folders.append(_fit(tmp_path, loggers).folders[0])
        wandb.finish()  # what the end of a script does; the next run is a new W&B run
    csv_dirs = [(tmp_path / "lightning_logs" / f"version_{i}").resolve() for i in range(2)]
    assert folders == csv_dirs  # the CSV version folder wins over W&B's shared save_dir
    wandb_runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2
    for wandb_run in wandb_runs:  # each W&B run folder points at its own run folder
        pointer = _pointer(wandb_run)
        target = (wandb_run / pointer["run_dir"]).resolve()
        assert target in folders and pointer["run_id"] == _pointer(target)["run_id"]
        assert resolve_run(wandb_run).run_dir == target
    for folder in folders:
        assert (folder / "topo" / "figure.png").read_text() == f"run in {folder}"
        kinds = [entry["type"] for entry in _pointer(folder)["loggers"]]
        assert kinds == ["WandbLogger", "CSVLogger"]
    # report from either logger folder finds that run's figures and pruning, not the other run's
    # which W&B run is whose, from the run folder's own list of its loggers (two offline runs started
    # in the same second are not ordered by their folder names)
    wandb_of = {
        folder: Path(next(e["folder_absolute"] for e in _pointer(folder)["loggers"] if e["type"] == "WandbLogger"))
        for folder in folders
    }
    assert sorted(wandb_of.values()) == wandb_runs
    for given, own, other in ((wandb_of[folders[0]], folders[0], folders[1]), (csv_dirs[1], folders[1], folders[0])):
        page = build_report(given)
        assert "topo/figure.png is not a PNG file" in page and "this run was not pruned" not in page
        assert f"method-of-{own.name}" in page and f"method-of-{other.name}" not in page


def test_wandb_alone_uses_save_dir_project_run_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), project="proj", offline=True)
    folder = _fit(tmp_path, logger).folders[0]
    wandb.finish()
    assert folder == (tmp_path / "proj" / logger.version).resolve()
    (wandb_run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert resolve_run(wandb_run).run_dir == folder


@pytest.mark.slow
def test_every_rank_gets_the_folder_of_rank_zero(tmp_path):
    torch.distributed.is_available() or pytest.skip("torch.distributed not available")
    record = tmp_path / "record"
    record.mkdir()
    _fit(tmp_path, CSVLogger(tmp_path, name="ddp"), devices=2, strategy="ddp_spawn", record=str(record))
    folders = {p.name: p.read_text() for p in record.iterdir()}
    expected = str((tmp_path / "ddp" / "version_0").resolve())
    assert folders == {"rank0.txt": expected, "rank1.txt": expected}
    assert len([p for p in (tmp_path / "ddp").iterdir() if p.is_dir()]) == 1  # rank 1 made no folder
    assert os.listdir(tmp_path / "ddp" / "version_0" / "topo") == ["figure.png"]


def test_pruning_epochs_come_from_a_pruning_callbacks_history():
    from types import SimpleNamespace

    class Pruner:
        history = [
            {"epoch": 2, "widths": {}},
            {"epoch": 3, "widths": {}},
            {"epoch": 5, "widths": {}, "at_fit_end": True},
        ]

    class Monitor:
        history = [{"epoch": 1, "scores": {}}]  # a lens history: not pruning

    assert pruning_epochs(SimpleNamespace(callbacks=[Monitor(), Pruner()])) == [2, 3]
    assert pruning_epochs(SimpleNamespace(callbacks=[Monitor()])) == []
