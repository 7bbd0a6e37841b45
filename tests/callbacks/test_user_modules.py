"""Every callback on LightningModules written the way users write them (tests/user_modules.py): the
Hugging Face model at ``self.net``, ``forward(batch)`` with the model nested in a ModuleDict, no
``forward`` at all, ``AutoModel`` + the user's own head; plain DataLoaders; ``validation_step``
logging only ``val/acc``. Each shape trains 2 epochs with the callbacks and logs every lens's headline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from user_modules import FAMILIES, USER_MODULES, loaders, tiny_tokenizer, trainer  # noqa: E402

from lightning_topo.callbacks import (  # noqa: E402
    ConceptAlignmentMonitor,
    GeometryMonitor,
    PersistenceScoreMonitor,
    PSFEarlyStopping,
    TopologicalPruning,
    TreeProbeMonitor,
)

HEADLINES = ("topo/psf", "topo/psf/std", "geometry/cone", "concepts/polar", "probe/ssp")


def _callbacks(tmp_path):
    return [
        PersistenceScoreMonitor(max_points_per_class=8, plots=False),
        PSFEarlyStopping(mode="min", patience=5),
        GeometryMonitor(plots=False),
        ConceptAlignmentMonitor(plots=False, tokenizer=tiny_tokenizer(), max_tokens=100),
        TreeProbeMonitor(plots=False, max_samples=16, probe_epochs=1, tokenizer=tiny_tokenizer()),
        TopologicalPruning(method="magnitude", ratio=0.8, prune_epoch=0, output_dir=tmp_path / "pruned",
                           calibration_batches=2, evaluate=False),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("shape", sorted(USER_MODULES))
def test_every_callback_on_a_user_module(tmp_path, shape):
    module = USER_MODULES[shape]("bert")
    before = sum(p.numel() for p in module.parameters())
    tr = trainer(tmp_path, _callbacks(tmp_path), max_epochs=2)
    tr.fit(module, *loaders())
    logged = set(tr.callback_metrics)
    assert set(HEADLINES) <= logged, sorted(logged)
    assert tr.current_epoch == 2
    assert sum(p.numel() for p in module.parameters()) < before  # pruned in place, in the user's module
    assert (tmp_path / "pruned" / "config.json").is_file()


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_state_lenses_on_every_family(tmp_path, family):
    mon = PersistenceScoreMonitor(max_points_per_class=8, plots=False, layers="all", pooling="mean")
    probe = TreeProbeMonitor(plots=False, max_samples=16, probe_epochs=1, layers=[-1])
    tr = trainer(tmp_path, [mon, probe], max_epochs=1)
    tr.fit(USER_MODULES["net"](family), *loaders())
    assert {"topo/psf", "topo/psf/layer_0", "topo/psf/layer_2", "probe/ssp"} <= set(tr.callback_metrics)
    assert torch.isfinite(tr.callback_metrics["topo/psf"])


def test_no_labels_are_refused_before_training(tmp_path):
    train, val = loaders()
    unlabelled = torch.utils.data.DataLoader(
        [{k: v for k, v in row.items() if k != "labels"} for row in val.dataset], batch_size=8
    )
    tr = trainer(tmp_path, [PersistenceScoreMonitor(plots=False)], max_epochs=1, num_sanity_val_steps=0)

    class NoValLabels(USER_MODULES["net"]):
        def validation_step(self, batch, batch_idx):
            self(batch["input_ids"], batch["attention_mask"])

    with pytest.raises(ValueError, match="labels_fn"):
        tr.fit(NoValLabels("bert"), train, unlabelled)
    assert tr.global_step == 0


def test_labels_fn_reads_any_batch_layout(tmp_path):
    class TupleBatches(USER_MODULES["net"]):
        def training_step(self, batch, batch_idx):
            inputs, labels = batch
            return torch.nn.functional.cross_entropy(self(**inputs), labels)

        def validation_step(self, batch, batch_idx):
            inputs, labels = batch
            self.log("val/acc", (self(**inputs).argmax(-1) == labels).float().mean())

    def as_tuples(loader):
        rows = [({"input_ids": r["input_ids"], "attention_mask": r["attention_mask"]}, r["labels"]) for r in loader.dataset]
        return torch.utils.data.DataLoader(rows, batch_size=8)

    train, val = loaders()
    mon = PersistenceScoreMonitor(plots=False, max_points_per_class=8, labels_fn=lambda batch: batch[1])
    tr = trainer(tmp_path, [mon], max_epochs=1)
    tr.fit(TupleBatches("bert"), as_tuples(train), as_tuples(val))
    assert "topo/psf" in tr.callback_metrics and mon.history[0]["scores"]["topo/psf/class_1"] > 0


def test_two_hf_models_need_model_attr(tmp_path):
    class TeacherStudent(USER_MODULES["net"]):
        def __init__(self):
            super().__init__("bert")
            self.teacher = USER_MODULES["net"]("bert").net

    with pytest.raises(ValueError, match="model_attr"):
        trainer(tmp_path, [PersistenceScoreMonitor(plots=False)], max_epochs=1).fit(TeacherStudent(), *loaders())
    mon = PersistenceScoreMonitor(plots=False, max_points_per_class=8, model_attr="net")
    tr = trainer(tmp_path, [mon], max_epochs=1)
    tr.fit(TeacherStudent(), *loaders())
    assert "topo/psf" in tr.callback_metrics


@pytest.mark.slow
def test_wandb_first_then_csv_twice_with_real_callbacks_and_report_from_either_folder(tmp_path, monkeypatch):
    """The issue-23 acceptance run: the same script twice in one folder with ``[WandbLogger, CSVLogger]``,
    a lens with figures and the pruning callback with its default output; each run keeps its own
    outputs and ``report`` from either logger folder finds that run's figures and pruning."""
    import wandb
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from lightning_topo.report import build_report

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    pruned = []
    for _ in range(2):
        loggers = [WandbLogger(save_dir=str(tmp_path), project="proj", offline=True), CSVLogger(str(tmp_path))]
        prune = TopologicalPruning(method="magnitude", ratio=0.8, prune_epoch=1, calibration_batches=2, evaluate=False)
        callbacks = [PersistenceScoreMonitor(max_points_per_class=8), prune]
        tr = trainer(tmp_path, callbacks, max_epochs=2, logger=loggers)
        tr.fit(USER_MODULES["net"]("bert"), *loaders())
        wandb.finish()
        pruned.append(prune.saved_path)
    csv_dirs = [(tmp_path / "lightning_logs" / f"version_{i}").resolve() for i in range(2)]
    assert pruned == [folder / "pruned" for folder in csv_dirs]
    for folder in csv_dirs:
        assert (folder / "pruned" / "config.json").is_file()
        assert (folder / "topo" / "topo_psf_vs_epoch.png").is_file()
        assert (folder / "metrics.csv").is_file()
    wandb_runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2
    # each run folder lists its own W&B run folder (not ordered by name within one second)
    pointers = [json.loads((folder / "lightning_topo_run.json").read_text()) for folder in csv_dirs]
    own_wandb = [Path(next(e["folder_absolute"] for e in p["loggers"] if e["type"] == "WandbLogger")) for p in pointers]
    assert sorted(own_wandb) == wandb_runs
    for given, own in zip((*own_wandb, *csv_dirs), (*csv_dirs, *csv_dirs), strict=True):
        page = build_report(given)
        assert f"lightning-topo report: {own.name}</title>" in page  # that run's folder, not the other
        assert "this run was not pruned" not in page and "No PNG figure" not in page
        assert "topo_psf_vs_epoch.png" in page and "topo/psf" in page
