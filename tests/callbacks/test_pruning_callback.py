"""TopologicalPruning on a tiny BERT inside SequenceClassifier: budget, recovery training, checkpoint, resume."""

from __future__ import annotations

import json

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from lightning_topo.callbacks import TopologicalPruning  # noqa: E402
from lightning_topo.pruning import count_encoder_parameters, load_compressed  # noqa: E402


def _batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 128, (8, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[:3, 9:] = 0
        ids[mask == 0] = 0
        labels = (ids[:, 1] % 2).long()
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def _loader(batches):
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)


@pytest.fixture
def tiny_dir(tiny_classifier, tmp_path):
    path = tmp_path / "tiny"
    tiny_classifier.save_pretrained(path)
    return path


def _module(path):
    from lightning_topo.models.classifier import SequenceClassifier

    return SequenceClassifier(
        model_name_or_path=str(path), num_labels=2, warmup_ratio=0.0, learning_rate=1e-3
    )


class _Snapshot(pl.Callback):
    """Copies an encoder weight right after pruning (epoch 1 start) to check training goes on."""

    def __init__(self):
        self.weight = None

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            self.weight = pl_module.model.bert.encoder.layer[0].intermediate.dense.weight.detach().clone()


def _trainer(tmp_path, callbacks, max_epochs):
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        logger=pl.loggers.CSVLogger(tmp_path, name="logs"),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


@pytest.mark.parametrize("units", [("ffn", "heads"), ("ffn",)])
def test_prunes_to_budget_continues_training_and_saves(tiny_dir, tmp_path, tiny_batch, units):
    module = _module(tiny_dir)
    before = count_encoder_parameters(module.model)
    cb = TopologicalPruning(
        ratio=0.6, prune_epoch=1, units=units, calibration_batches=2, output_dir=tmp_path / "out"
    )
    snap = _Snapshot()
    trainer = _trainer(tmp_path, [cb, snap], max_epochs=3)
    trainer.fit(module, train_dataloaders=_loader(_batches()))
    after = count_encoder_parameters(module.model)
    assert after / before <= 0.6 and after / before > 0.5
    assert cb.history[0]["epoch"] == 1 and len(cb.history) == 1
    assert trainer.global_step == 12
    # training went on after the surgery (weights of the pruned layer changed, on the new shapes)
    w = module.model.bert.encoder.layer[0].intermediate.dense.weight
    assert snap.weight is not None and snap.weight.shape == w.shape
    assert not torch.equal(snap.weight, w.detach())
    assert trainer.callback_metrics["prune/ratio"] == pytest.approx(after / before)
    # compressed checkpoint
    out = tmp_path / "out"
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    assert (out / "importance_step1.csv").exists()
    history = json.loads((out / "pruning_history.json").read_text())
    assert history["history"][0]["params"] == after
    reloaded = load_compressed(out).eval()
    module.model.eval()
    with torch.no_grad():
        a = reloaded(input_ids=tiny_batch["input_ids"], attention_mask=tiny_batch["attention_mask"]).logits
        b = module.model(
            input_ids=tiny_batch["input_ids"], attention_mask=tiny_batch["attention_mask"]
        ).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    expected_type = "pruned_bert" if "heads" in units else "bert"
    assert json.loads((out / "config.json").read_text())["model_type"] == expected_type


def test_steps_and_resume(tiny_dir, tmp_path):
    module = _module(tiny_dir)
    before = count_encoder_parameters(module.model)
    cb = TopologicalPruning(method="magnitude", ratio=0.5, prune_epoch=0, steps=2)
    trainer = _trainer(tmp_path, [cb], max_epochs=2)
    trainer.fit(module, train_dataloaders=_loader(_batches()))
    assert len(cb.history) == 2
    assert cb.history[0]["ratio"] > cb.history[1]["ratio"]
    assert cb.history[1]["ratio"] <= 0.5
    ckpt = trainer.checkpoint_callback.best_model_path
    assert ckpt
    # resume from the pruned Lightning checkpoint: the shapes are rebuilt, no second pruning
    module2 = _module(tiny_dir)
    cb2 = TopologicalPruning(method="magnitude", ratio=0.5, prune_epoch=0, steps=2)
    trainer2 = _trainer(tmp_path / "resume", [cb2], max_epochs=3)
    trainer2.fit(module2, train_dataloaders=_loader(_batches()), ckpt_path=ckpt)
    assert len(cb2.history) == 2
    assert count_encoder_parameters(module2.model) == count_encoder_parameters(module.model)
    assert count_encoder_parameters(module2.model) / before <= 0.5


def test_prune_at_fit_end(tiny_dir, tmp_path):
    module = _module(tiny_dir)
    before = count_encoder_parameters(module.model)
    cb = TopologicalPruning(
        method="topological-redundancy", ratio=0.7, prune_epoch=None, output_dir=tmp_path / "o"
    )
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(module, train_dataloaders=_loader(_batches(2)))
    assert count_encoder_parameters(module.model) / before <= 0.7
    assert (tmp_path / "o" / "config.json").exists()


def test_bad_arguments():
    for kwargs in (
        {"ratio": 0.0},
        {"ratio": 1.2},
        {"steps": 0},
        {"method": "nope"},
        {"prune_epoch": None, "steps": 2},
    ):
        with pytest.raises(ValueError):
            TopologicalPruning(**kwargs)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="ffn_multiple"):
            TopologicalPruning(ffn_multiple=bad)


def test_wandb_table_and_plot(tiny_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    from lightning.pytorch.loggers import WandbLogger

    logged = {}
    logger = WandbLogger(project="lt-test", save_dir=str(tmp_path), offline=True)
    original = logger.log_table

    def log_table(key, columns=None, data=None, **kw):
        logged[key] = (columns, data)
        return original(key=key, columns=columns, data=data, **kw)

    monkeypatch.setattr(logger, "log_table", log_table)
    module = _module(tiny_dir)
    cb = TopologicalPruning(method="magnitude", ratio=0.6, prune_epoch=0)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, callbacks=[cb], logger=logger, default_root_dir=tmp_path,
        enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=_loader(_batches(2)))
    columns, data = logged["prune/kept_units"]
    assert columns == ["step", "layer", "kind", "kept"]
    assert len(data) == 4  # 2 layers x (heads, ffn)
    import wandb

    wandb.finish()


def test_existing_output_dir_fails_before_training(tiny_dir, tmp_path):
    out = tmp_path / "kept"
    out.mkdir()
    (out / "user_file.txt").write_text("mine")
    module = _module(tiny_dir)
    weight = module.model.bert.encoder.layer[0].intermediate.dense.weight.detach().clone()
    trainer = _trainer(tmp_path, [TopologicalPruning(prune_epoch=0, output_dir=out)], max_epochs=1)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trainer.fit(module, train_dataloaders=_loader(_batches(2)))
    assert torch.equal(
        module.model.bert.encoder.layer[0].intermediate.dense.weight, weight
    )  # no training ran
    assert (out / "user_file.txt").read_text() == "mine"
