"""PersistenceScoreMonitor in real (tiny) fits: metric names, EarlyStopping, resume, DDP, W&B."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import labelled_token_dataset as make_dataset
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from lightning_topo.callbacks import PersistenceScoreMonitor
from lightning_topo.encoding import EncodedBatch, encode_batch


class TinyClassifier(pl.LightningModule):
    """A tiny random BertForSequenceClassification with ``encode`` and ``val/acc`` logging."""

    def __init__(
        self, config, lr: float = 0.05, seed: int = 0, nan_hidden: bool = False, return_encoded: bool = False
    ):
        super().__init__()
        from transformers import BertForSequenceClassification

        torch.manual_seed(seed)
        self.model = BertForSequenceClassification(config)
        self.lr = lr
        self.nan_hidden = nan_hidden
        self.return_encoded = return_encoded
        self.encode_calls = 0

    def encode(self, batch) -> EncodedBatch:
        self.encode_calls += 1
        enc = encode_batch(self.model, batch)
        if self.nan_hidden:
            hidden = tuple(h * float("nan") for h in enc.hidden_states)
            enc = EncodedBatch(hidden, enc.attention_mask, enc.labels, enc.logits)
        return enc

    def _forward(self, batch):
        return self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )

    def training_step(self, batch, batch_idx):
        out = self._forward(batch)
        self.log("train/loss", out.loss, on_epoch=True, on_step=False)
        return out.loss

    def validation_step(self, batch, batch_idx):
        if self.return_encoded:  # share the hidden states with the monitor: no second forward pass
            enc = self.encode(batch)
            logits = enc.logits
        else:
            enc, logits = None, self._forward(batch).logits
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        acc = (logits.argmax(-1) == batch["labels"]).float().mean()
        self.log("val/loss", loss, on_epoch=True, sync_dist=True)
        self.log("val/acc", acc, on_epoch=True, sync_dist=True)
        return enc

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loaders(n_train=32, n_val=24, batch_size=8, num_classes=2):
    train = DataLoader(make_dataset(n_train, seed=0, num_classes=num_classes), batch_size=batch_size)
    val = DataLoader(make_dataset(n_val, seed=1, num_classes=num_classes), batch_size=batch_size)
    return train, val


def make_trainer(tmp_path, callbacks, max_epochs=3, logger=None, **kwargs):
    kwargs.setdefault("accelerator", "cpu")
    kwargs.setdefault("devices", 1)
    return pl.Trainer(
        default_root_dir=str(tmp_path),
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=logger if logger is not None else False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        deterministic=True,
        **kwargs,
    )


def fit(
    tmp_path, config, monitor=None, max_epochs=3, model_kwargs=None, extra_callbacks=(), **trainer_kwargs
):
    monitor = monitor or PersistenceScoreMonitor(max_points_per_class=64)
    model = TinyClassifier(config, **(model_kwargs or {}))
    trainer = make_trainer(tmp_path, [monitor, *extra_callbacks], max_epochs=max_epochs, **trainer_kwargs)
    train, val = loaders()
    trainer.fit(model, train, val)
    return trainer, monitor


def test_logs_documented_metrics_and_plots_csv(tmp_path, tiny_config):
    logger = CSVLogger(str(tmp_path), name="csv")
    trainer, monitor = fit(tmp_path, tiny_config, max_epochs=3, logger=logger)
    m = trainer.callback_metrics
    expected = {
        "topo/psf",
        "topo/psf/layer_2",
        "topo/psf/class_0",
        "topo/psf/class_1",
        "topo/h0/total_persistence",
        "topo/h0/entropy",
        "topo/h1/total_persistence",
        "topo/h1/entropy",
        "topo/psf/pearson_val_acc",
        "topo/psf/spearman_val_acc",
    }
    assert expected <= set(m), sorted(m)
    # the names known before training (PSFEarlyStopping checks its monitor against them) are the
    # names logged, correlations included
    assert monitor.expected_names() == {k for k in m if k.startswith("topo/")}
    assert float(m["topo/psf"]) == pytest.approx(monitor.history[-1]["scores"]["topo/psf"])
    assert float(m["topo/psf"]) == float(m["topo/psf/layer_2"])
    # the sanity check (2 val batches before epoch 0) is never measured
    assert [r["epoch"] for r in monitor.history] == [0, 1, 2]
    assert all(r["monitor"] is not None for r in monitor.history)
    csv_text = (Path(logger.log_dir) / "metrics.csv").read_text()
    assert "topo/psf" in csv_text.splitlines()[0] and "topo/psf/spearman_val_acc" in csv_text
    plots = sorted(p.name for p in (Path(logger.log_dir) / "topo").glob("*.png"))
    assert plots == ["diagrams_last_epoch.png", "topo_psf_vs_epoch.png", "topo_psf_vs_val_acc.png"]


def test_correlations_match_torchmetrics(tmp_path, tiny_config):
    from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

    trainer, monitor = fit(tmp_path, tiny_config, max_epochs=4, model_kwargs={"lr": 0.5})
    psf = torch.tensor([r["scores"]["topo/psf"] for r in monitor.history], dtype=torch.float64)
    acc = torch.tensor([r["monitor"] for r in monitor.history], dtype=torch.float64)
    got = float(trainer.callback_metrics["topo/psf/pearson_val_acc"])
    if acc.std() > 0:
        assert got == pytest.approx(float(pearson_corrcoef(psf, acc)), abs=1e-5)
        assert float(trainer.callback_metrics["topo/psf/spearman_val_acc"]) == pytest.approx(
            float(spearman_corrcoef(psf, acc)), abs=1e-5
        )
    else:
        assert math.isnan(got)


def test_layers_all_mean_pooling_and_no_logger(tmp_path, tiny_config):
    monitor = PersistenceScoreMonitor(
        layers="all", pooling="mean", scores=("psf", "entropy"), homology_dims=(1,), plots=True
    )
    trainer, _ = fit(tmp_path, tiny_config, monitor=monitor, max_epochs=1)
    names = set(trainer.callback_metrics)
    assert {"topo/psf/layer_0", "topo/psf/layer_1", "topo/psf/layer_2", "topo/h1/entropy"} <= names
    assert "topo/h0/entropy" not in names and "topo/h1/total_persistence" not in names
    # no logger: figures go to a versioned run folder under default_root_dir
    assert monitor.plot_dir(trainer) == tmp_path.resolve() / "lightning_topo_runs" / "version_0" / "topo"
    assert (monitor.plot_dir(trainer) / "topo_psf_vs_epoch.png").exists()


def test_reuses_validation_forward_when_validation_step_returns_encoded(tmp_path, tiny_config):
    reread, _ = fit(tmp_path / "a", tiny_config, monitor=PersistenceScoreMonitor(plots=False), max_epochs=2)
    monitor = PersistenceScoreMonitor(plots=False)
    model = TinyClassifier(tiny_config, return_encoded=True)
    trainer = make_trainer(tmp_path / "b", [monitor], max_epochs=2, num_sanity_val_steps=0)
    train, val = loaders()
    trainer.fit(model, train, val)
    # 3 validation batches per epoch, each encoded once by validation_step, never again by the monitor
    assert model.encode_calls == 2 * 3
    _history_close(monitor.history, reread.callbacks[0].history)
    # max_samples applies to the hooked batches too
    monitor = PersistenceScoreMonitor(plots=False, max_samples=16, max_points_per_class=4)
    trainer = make_trainer(tmp_path / "c", [monitor], max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(TinyClassifier(tiny_config, return_encoded=True), *loaders())
    assert monitor.history[0]["scores"].keys() >= {"topo/psf", "topo/psf/class_0"}


def test_monitor_does_not_change_training(tmp_path, tiny_config):
    # dropout on, shuffled training data: both draw from the global RNG that re-reading the
    # validation loader would otherwise advance
    config = tiny_config.__class__(**{**tiny_config.to_dict(), "hidden_dropout_prob": 0.1})

    def run(callbacks, root):
        pl.seed_everything(0)
        model = TinyClassifier(config)
        trainer = make_trainer(root, callbacks, max_epochs=2)
        train = DataLoader(make_dataset(32, seed=0), batch_size=8, shuffle=True)
        trainer.fit(model, train, DataLoader(make_dataset(24, seed=1), batch_size=8))
        return model

    plain = run([], tmp_path / "plain")
    monitored = run([PersistenceScoreMonitor(plots=False)], tmp_path / "monitored")
    for (name, a), (_, b) in zip(plain.state_dict().items(), monitored.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_every_n_epochs_and_train_split(tmp_path, tiny_config):
    monitor = PersistenceScoreMonitor(every_n_epochs=2, split="train", plots=False, max_samples=16)
    fit(tmp_path, tiny_config, monitor=monitor, max_epochs=4)
    assert [r["epoch"] for r in monitor.history] == [1, 3]


def test_early_stopping_on_psf_stops(tmp_path, tiny_config):
    # lr=0: the weights never change, so PSF is constant and never improves -> patience runs out
    early = EarlyStopping(monitor="topo/psf", mode="min", patience=2)
    monitor = PersistenceScoreMonitor(plots=False)
    trainer, _ = fit(
        tmp_path,
        tiny_config,
        monitor=monitor,
        max_epochs=20,
        model_kwargs={"lr": 0.0},
        extra_callbacks=[early],
    )
    assert trainer.current_epoch < 20
    assert early.stopped_epoch > 0
    assert early.stopped_epoch == 2  # epoch 0 sets the best, epochs 1 and 2 fail to improve
    assert len({r["scores"]["topo/psf"] for r in monitor.history}) == 1


def test_model_checkpoint_can_monitor_psf(tmp_path, tiny_config):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="topo/psf", mode="max", save_top_k=1)
    fit(
        tmp_path,
        tiny_config,
        monitor=PersistenceScoreMonitor(plots=False),
        max_epochs=2,
        extra_callbacks=[ckpt],
    )
    assert ckpt.best_model_path and ckpt.best_model_score is not None


def _history_close(a, b):
    assert [(r["epoch"], r["step"]) for r in a] == [(r["epoch"], r["step"]) for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra["scores"].keys() == rb["scores"].keys()
        for k in ra["scores"]:
            assert ra["scores"][k] == pytest.approx(rb["scores"][k], rel=1e-6), k
        assert ra["monitor"] == pytest.approx(rb["monitor"], rel=1e-6)


def test_resume_continues_history(tmp_path, tiny_config):
    # uninterrupted 4 epochs
    full, _ = fit(tmp_path / "full", tiny_config, monitor=PersistenceScoreMonitor(plots=False), max_epochs=4)
    full_history = full.callbacks[0].history
    # 2 epochs, then resume for 2 more
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    fit(
        tmp_path / "a",
        tiny_config,
        monitor=PersistenceScoreMonitor(plots=False),
        max_epochs=2,
        extra_callbacks=[ckpt],
    )
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]
    assert any(len(v.get("history", [])) == 2 for v in state.values())
    resumed_monitor = PersistenceScoreMonitor(plots=False)
    model = TinyClassifier(tiny_config)
    trainer = make_trainer(tmp_path / "b", [resumed_monitor], max_epochs=4)
    train, val = loaders()
    trainer.fit(model, train, val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert len(resumed_monitor.history) == 4
    _history_close(resumed_monitor.history, full_history)
    assert float(trainer.callback_metrics["topo/psf/pearson_val_acc"]) == pytest.approx(
        float(full.callback_metrics["topo/psf/pearson_val_acc"]), rel=1e-5, nan_ok=True
    )


def test_presets_set_defaults():
    default = PersistenceScoreMonitor()
    assert (default.split, default.layers, default.pooling) == ("val", -1, "cls")
    assert default.preset.sampling == "random" and default.preset.max_points_per_class == 512
    paper = PersistenceScoreMonitor(preset="bertops")
    assert (paper.split, paper.layers, paper.pooling) == ("train", -1, "cls")
    assert paper.preset.sampling == "kde" and paper.preset.max_points_per_class == 5000
    assert (
        PersistenceScoreMonitor(
            preset="bertops", split="val", max_points_per_class=300
        ).preset.max_points_per_class
        == 300
    )


def test_state_dict_roundtrip_and_state_key():
    a = PersistenceScoreMonitor(layers=[-1, 1], pooling="mean")
    a.history = [{"epoch": 0, "step": 4, "scores": {"topo/psf": 0.1}, "monitor": 0.5}]
    b = PersistenceScoreMonitor(layers=[-1, 1], pooling="mean")
    b.load_state_dict(a.state_dict())
    assert b.history == a.history and b.history is not a.history
    assert a.state_key == b.state_key
    assert a.state_key != PersistenceScoreMonitor(pooling="cls").state_key
    # records saved before the step was recorded load with step None
    b.load_state_dict({"history": [{"epoch": 3, "scores": {"topo/psf": 0.2}, "monitor": None}]})
    assert b.history == [{"epoch": 3, "step": None, "scores": {"topo/psf": 0.2}, "monitor": None}]


def test_state_of_other_settings_is_not_restored():
    # the one rule: a history measured with other settings never joins this monitor's series
    saved = PersistenceScoreMonitor(monitor_against="val/f1")
    saved.history = [{"epoch": 0, "step": 4, "scores": {"topo/psf": 0.1}, "monitor": 0.7}]
    fresh = PersistenceScoreMonitor(monitor_against="val/acc")
    assert saved.state_key != fresh.state_key  # so Lightning never hands it over
    with pytest.warns(UserWarning, match="monitor_against='val/f1'.*not restored"):
        fresh.load_state_dict(saved.state_dict())
    assert fresh.monitor_against == "val/acc" and fresh.history == []
    same = PersistenceScoreMonitor(monitor_against="val/f1")
    same.load_state_dict(saved.state_dict())
    assert same.history == saved.history


@pytest.mark.parametrize(
    "other",
    [{"log_prefix": "psf2"}, {"scores": ("psf",)}, {"layers": "all"}, {"max_samples": 8}, {"resamples": 1},
     {"split": "train"}, {"seed": 1}],
)
def test_state_key_tells_every_setting_apart(other):
    assert PersistenceScoreMonitor().state_key != PersistenceScoreMonitor(**other).state_key


def test_every_hook_is_marked_override():
    from lightning.pytorch.callbacks import Callback

    hooks = [  # implemented by the class or its base LensMonitor, not Callback's no-ops
        n
        for n in dir(PersistenceScoreMonitor)
        if n.startswith("on_") and getattr(PersistenceScoreMonitor, n) is not getattr(Callback, n, None)
    ]
    assert len(hooks) >= 6
    for name in [*hooks, "state_dict", "load_state_dict"]:
        assert getattr(getattr(PersistenceScoreMonitor, name), "__override__", False), name
    assert getattr(PersistenceScoreMonitor.state_key.fget, "__override__", False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"split": "test"}, "split"),
        ({"pooling": "max"}, "pooling"),
        ({"scores": ("psf", "landscape")}, "scores"),
        ({"homology_dims": (0, 2)}, "homology_dims"),
        ({"max_points_per_class": 1}, "max_points_per_class"),
        ({"layers": "last"}, "layers"),
        ({"layers": []}, "layers"),
        ({"preset": "paper"}, "preset"),
        ({"max_samples": 0}, "max_samples"),
        ({"homology_dims": ()}, "homology_dims"),
        ({"homology_dims": (0.5,)}, "homology_dims"),
        ({"monitor_against": ""}, "monitor_against"),
        ({"log_prefix": "/"}, "log_prefix"),
        ({"backend": "gpu"}, "backend"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PersistenceScoreMonitor(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_points_per_class": 2.5}, r"max_points_per_class must be an int >= 2 or None; got 2.5"),
        ({"layers": [1.7]}, r"layers\[0\] must be an int; got 1.7"),  # never truncated to layer 1
        ({"layers": 1.0}, "layers must be an int, a list of ints or 'all'"),
        ({"seed": None}, "seed must be an int >= 0; got None"),
        ({"every_n_epochs": 1.5}, "every_n_epochs"),
        ({"max_samples": 2.5}, "max_samples"),
        ({"plots": "yes"}, "plots must be True or False"),
        ({"prog_bar": 1}, "prog_bar"),
    ],
)
def test_bad_argument_types(kwargs, match):
    with pytest.raises(TypeError, match=match):
        PersistenceScoreMonitor(**kwargs)


def test_bad_preset_field_fails_at_construction():
    from lightning_topo.scores import PSFPreset

    with pytest.raises(ValueError, match="bandwidth must be a finite number > 0.0; got nan"):
        PersistenceScoreMonitor(preset=PSFPreset(sampling="kde", bandwidth=float("nan")))


def test_layer_out_of_range_raises(tmp_path, tiny_config):
    with pytest.raises(ValueError, match="layers: index 5 is out of range .* 2 encoder layers"):
        fit(tmp_path, tiny_config, monitor=PersistenceScoreMonitor(layers=5), max_epochs=1)


def test_single_class_raises(tmp_path, tiny_config):
    model = TinyClassifier(tiny_config)
    trainer = make_trainer(tmp_path, [PersistenceScoreMonitor()], max_epochs=1)
    train, _ = loaders()
    val = DataLoader([d for d in make_dataset(24, seed=1) if int(d["labels"]) == 0], batch_size=8)
    with pytest.raises(ValueError, match="at least 2 classes"):
        trainer.fit(model, train, val)


def test_missing_monitor_against_warns(tmp_path, tiny_config):
    monitor = PersistenceScoreMonitor(monitor_against="val/f1", plots=False)
    with pytest.warns(UserWarning, match=r"monitor_against='val/f1'.*val/acc"):
        trainer, _ = fit(tmp_path, tiny_config, monitor=monitor, max_epochs=3)
    assert all(r["monitor"] is None for r in monitor.history)
    assert "topo/psf/pearson_val_f1" not in trainer.callback_metrics


class _Diverge(pl.Callback):
    """Puts NaN into the embeddings after the last training step of epoch 0, before its validation."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx != trainer.num_training_batches - 1:
            return
        with torch.no_grad():
            pl_module.model.bert.embeddings.word_embeddings.weight.fill_(float("nan"))


def test_nan_weights_before_training_are_refused(tmp_path, tiny_config):
    model = TinyClassifier(tiny_config)
    with torch.no_grad():
        model.model.bert.embeddings.word_embeddings.weight.fill_(float("nan"))
    trainer = make_trainer(tmp_path, [PersistenceScoreMonitor(plots=False)], max_epochs=1)
    with pytest.raises(ValueError, match="NaN/inf"):
        trainer.fit(model, *loaders())
    assert trainer.global_step == 0  # refused in on_train_start, before any training step


def test_nan_hidden_states_warn_and_log_nan(tmp_path, tiny_config):
    # a model that diverges during training: every name is logged as NaN, EarlyStopping stops
    early = EarlyStopping(monitor="topo/psf", mode="min", check_finite=True)
    with pytest.warns(UserWarning, match="NaN"):
        trainer, monitor = fit(
            tmp_path,
            tiny_config,
            monitor=PersistenceScoreMonitor(plots=False),
            max_epochs=5,
            extra_callbacks=[early, _Diverge()],
        )
    # every name of a healthy run is logged, as NaN: headline, per layer, per class, H0/H1, stds
    names = {k for k in trainer.callback_metrics if k.startswith("topo/")}
    assert names == {
        "topo/psf",
        "topo/psf/std",
        "topo/psf/layer_2",
        "topo/psf/class_0",
        "topo/psf/class_1",
        "topo/h0/total_persistence",
        "topo/h0/total_persistence/std",
        "topo/h0/entropy",
        "topo/h0/entropy/std",
        "topo/h1/total_persistence",
        "topo/h1/total_persistence/std",
        "topo/h1/entropy",
        "topo/h1/entropy/std",
    }
    assert all(math.isnan(float(trainer.callback_metrics[k])) for k in names)
    assert set(monitor.history[0]["scores"]) == names
    assert trainer.current_epoch == 1 and early.stopped_epoch == 0  # stopped after the first epoch
    assert trainer.should_stop


def test_wandb_offline_run_holds_scalars_and_images(tmp_path, tiny_config, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(save_dir=str(tmp_path), project="lightning-topo-test", offline=True)
    try:
        trainer, monitor = fit(tmp_path, tiny_config, max_epochs=3, logger=logger)
        run = logger.experiment
        run_dir = Path(run.dir).parent
    finally:
        import wandb

        wandb.finish()
    keys = (
        "topo/psf",
        "topo/psf/class_1",
        "topo/h0/total_persistence",
        "topo/h1/entropy",
        "topo/psf/pearson_val_acc",
        "val/acc",
    )
    from conftest import wandb_scalars_missing

    missing = wandb_scalars_missing(run_dir, keys)
    assert not missing, f"scalars missing from the offline run file: {missing}"
    images = sorted(p.name for p in (run_dir / "files" / "media" / "images").rglob("*.png"))
    assert any(n.startswith("topo_psf_vs_epoch") for n in images)
    assert any(n.startswith("topo_psf_vs_val_acc") for n in images)
    assert any(n.startswith("diagrams") for n in images)
    # each epoch logs the whole history table again (file name: <key>_<step>_<hash>); the one
    # at the highest step holds every epoch, in order
    def last_table(key):
        files = list((run_dir / "files" / "media" / "table").glob(f"{key}_*.table.json"))
        assert files, f"no {key} table in the offline run"
        latest = max(files, key=lambda f: int(f.name[len(Path(key).name) + 1 :].split("_")[0]))
        return json.loads(latest.read_text())

    expected = [r["scores"]["topo/psf"] for r in monitor.history]
    assert len(expected) == 3
    for key in ("topo/history", "topo/charts/psf_vs_val_acc_table"):
        table = last_table(key)
        col = table["columns"].index("topo/psf")
        assert [row[col] for row in table["data"]] == pytest.approx(expected), key
    assert (monitor.plot_dir(trainer) / "topo_psf_vs_epoch.png").exists()


# ------------------------------------------------------------------------------------- DDP


class _RecordMetrics(pl.Callback):
    """Writes every rank's logged ``topo/*`` values (and its encode count) per epoch to JSON."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("topo/")}
        record = {"values": values, "encode_calls": pl_module.encode_calls}
        path = Path(self.out_dir) / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.json"
        path.write_text(json.dumps(record))


@pytest.mark.slow
@pytest.mark.parametrize("reuse", [True, False], ids=["validation_returns_hidden", "plain_forward"])
def test_ddp_two_processes_match_one(tmp_path, tiny_config, reuse):
    torch.distributed.is_available() or pytest.skip("torch.distributed not available")
    out1, out2 = tmp_path / "one", tmp_path / "two"
    out1.mkdir()
    out2.mkdir()
    # lr=0 keeps the weights equal in both runs; 24 validation examples split evenly over 2 ranks
    # (no padding duplicates), each class below the cap so the same points are measured.
    model_kwargs = {"lr": 0.0, "return_encoded": reuse}
    one = make_trainer(
        tmp_path / "r1",
        [PersistenceScoreMonitor(plots=False), _RecordMetrics(str(out1))],
        max_epochs=1,
        num_sanity_val_steps=0,
    )
    one.fit(TinyClassifier(tiny_config, **model_kwargs), *loaders())
    two = make_trainer(
        tmp_path / "r2",
        [PersistenceScoreMonitor(plots=False), _RecordMetrics(str(out2))],
        max_epochs=1,
        devices=2,
        strategy="ddp_spawn",
        num_sanity_val_steps=0,
    )
    two.fit(TinyClassifier(tiny_config, **model_kwargs), *loaders())
    ref = json.loads((out1 / "rank0_epoch0.json").read_text())
    got0 = json.loads((out2 / "rank0_epoch0.json").read_text())
    got1 = json.loads((out2 / "rank1_epoch0.json").read_text())
    assert len(ref["values"]) == 13  # psf, layer, 2 classes, H0/H1 x 2, std of psf and H0/H1 x 2
    assert got0["values"] == got1["values"]  # every rank logs the same values
    assert got0["values"].keys() == ref["values"].keys()
    for name, value in ref["values"].items():
        assert got0["values"][name] == pytest.approx(value, rel=1e-5), name
    if reuse:  # 12 examples per rank = 2 batches, each encoded once by validation_step, never again
        assert got0["encode_calls"] == got1["encode_calls"] == 2
        assert ref["encode_calls"] == 3
    else:  # the monitor reads the hidden states through hooks on validation_step's own forward
        assert got0["encode_calls"] == got1["encode_calls"] == ref["encode_calls"] == 0


def test_standalone_validate_logs_but_keeps_history(tmp_path, tiny_config):
    trainer, monitor = fit(tmp_path, tiny_config, monitor=PersistenceScoreMonitor(plots=False), max_epochs=1)
    before = [dict(r) for r in monitor.history]
    _, val = loaders()
    trainer.validate(trainer.lightning_module, val, verbose=False)
    assert {"topo/psf", "topo/h1/entropy"} <= set(trainer.callback_metrics)
    assert monitor.history == before


def test_mid_epoch_validation_gets_its_own_record(tmp_path, tiny_config):
    # 4 training batches per epoch, validation every 2: two measurements per epoch, none overwritten
    trainer, monitor = fit(
        tmp_path, tiny_config, max_epochs=2, val_check_interval=0.5, model_kwargs={"lr": 0.5}
    )
    assert [(r["epoch"], r["step"]) for r in monitor.history] == [(0, 2), (0, 4), (1, 6), (1, 8)]
    assert all(r["monitor"] is not None for r in monitor.history)
    # correlations use all four measurements
    psf = [r["scores"]["topo/psf"] for r in monitor.history]
    acc = [r["monitor"] for r in monitor.history]
    from lightning_topo.scores import pearson_spearman

    expected, _ = pearson_spearman(psf, acc)
    got = float(trainer.callback_metrics["topo/psf/pearson_val_acc"])
    assert got == pytest.approx(float(expected), abs=1e-5, nan_ok=True)
    assert len({r["scores"]["topo/psf"] for r in monitor.history}) == 4  # weights changed between runs


def test_log_prefix_names_metrics_files_and_wandb_table(tmp_path, tiny_config):
    pytest.importorskip("wandb")
    import wandb
    from conftest import recording_wandb_logger

    logger = recording_wandb_logger(tmp_path)
    monitor = PersistenceScoreMonitor(log_prefix="lens/", max_points_per_class=64)
    trainer, _ = fit(tmp_path, tiny_config, monitor=monitor, max_epochs=3, logger=logger)
    assert {"lens/psf", "lens/psf/class_1", "lens/h1/entropy", "lens/psf/pearson_val_acc"} <= set(
        trainer.callback_metrics
    )
    assert not any(k.startswith("topo/") for k in trainer.callback_metrics)
    # figures and the history table at every measurement (live W&B), the last one holds every epoch
    tables = [p for p in logger.run.payloads if any(k.endswith("/history") for k in p)]
    assert len(tables) >= 3
    payload = tables[-1]
    assert logger.run.defined  # lens metrics defined against the epoch
    assert isinstance(payload["lens/history"], wandb.Table) and "topo/history" not in payload
    assert {"lens/plots/lens_psf_vs_epoch", "lens/plots/lens_psf_vs_val_acc", "lens/plots/diagrams"} <= set(
        payload
    )
    table = payload["lens/history"]
    assert table.columns[:3] == ["epoch", "step", "lens/psf"] and len(table.data) == 3


def test_a_logger_merely_named_wandblogger_is_not_wandb(tmp_path, tiny_config):
    from lightning.pytorch.loggers import CSVLogger

    class WandbLogger(CSVLogger):  # same class name, not a W&B logger
        pass

    trainer, monitor = fit(tmp_path, tiny_config, max_epochs=1, logger=WandbLogger(str(tmp_path)))
    assert monitor.history and (Path(trainer.log_dir) / "topo" / "topo_psf_vs_epoch.png").exists()


# ---------------------------------------------------------------- resamples (issue 18)


def test_resamples_log_standard_errors_and_one_draw_is_todays(tmp_path, tiny_config):
    # 24 validation examples, 12 per class: a cap of 8 makes the re-draws differ
    one = fit(
        tmp_path / "one", tiny_config, monitor=PersistenceScoreMonitor(max_points_per_class=8, resamples=1)
    )[1]
    five_trainer, five = fit(
        tmp_path / "five", tiny_config, monitor=PersistenceScoreMonitor(max_points_per_class=8, resamples=5)
    )
    assert not any(n.endswith("/std") for n in one.history[-1]["scores"])
    m = five_trainer.callback_metrics
    for name in ("topo/psf/std", "topo/h0/total_persistence/std", "topo/h1/total_persistence/std"):
        assert name in m and float(m[name]) > 0, name
    assert "topo/psf/std/pearson_val_acc" not in m  # standard errors are not correlated
    assert {"topo/psf/pearson_val_acc", "topo/psf/class_0"} <= set(m)
    # the first draw of each epoch is a sample like the one of resamples=1; the mean of 5 differs
    assert [r["epoch"] for r in five.history] == [0, 1, 2]
    assert five.history[-1]["scores"]["topo/psf"] != one.history[-1]["scores"]["topo/psf"]


def test_resamples_one_logs_exactly_the_single_draw(tmp_path, tiny_config):
    from lightning_topo.scores import persistence_metrics

    monitor = PersistenceScoreMonitor(max_points_per_class=8, resamples=1, plots=False)
    model = TinyClassifier(tiny_config)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    train, val = loaders()
    trainer.validate(model, val)
    with torch.no_grad():  # the last layer's [CLS] vectors by a plain forward (the preset caps each class at 8)
        encoded = [encode_batch(model.model.eval(), batch) for batch in val]
    points = {2: torch.cat([e.hidden_states[-1][:, 0] for e in encoded])}
    ref = persistence_metrics(points, torch.cat([e.labels for e in encoded]), preset=monitor.preset, seed=0)
    assert float(trainer.callback_metrics["topo/psf"]) == pytest.approx(float(ref.values["psf"]), rel=1e-6)
    assert "topo/psf/std" not in trainer.callback_metrics


def test_resamples_std_is_positive_when_no_class_exceeds_the_cap(tmp_path, tiny_config):
    # issue 26: /std is the standard error over the examples, not the re-draw spread (0 here)
    trainer, _ = fit(
        tmp_path, tiny_config, monitor=PersistenceScoreMonitor(max_points_per_class=64), max_epochs=1
    )
    assert float(trainer.callback_metrics["topo/psf/std"]) > 0.0


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (2.5, TypeError), ("5", TypeError)])
def test_bad_resamples(value, error):
    with pytest.raises(error, match="resamples"):
        PersistenceScoreMonitor(resamples=value)
