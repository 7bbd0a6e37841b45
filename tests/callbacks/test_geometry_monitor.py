"""GeometryMonitor in real (tiny) fits: metrics, figures, one validation forward, resume, refusals,
any user module, DDP.

Run as a script (``python test_geometry_monitor.py OUT_DIR DEVICES``) it is the 2-process DDP fit of
:func:`test_ddp_early_stops_on_the_headline_without_sync_dist_warnings`: Lightning's
``strategy="ddp"`` launcher starts the second rank by running this file again.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

if __name__ == "__main__":  # the DDP script: tests/ and the repository on the path
    sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]

from conftest import labelled_token_dataset as make_dataset  # noqa: E402

from lightning_topo.callbacks.geometry_monitor import GeometryMonitor  # noqa: E402
from lightning_topo.encoding import EncodedBatch, encode_batch  # noqa: E402
from lightning_topo.representations.geometry import GeometryCapture  # noqa: E402
from lightning_topo.scores.geometry import metric_names  # noqa: E402
from tests.metrics.test_geometry_metric import GeometryAccumulator  # noqa: E402 - the pre-port reference


class TinyClassifier(pl.LightningModule):
    """A tiny random BertForSequenceClassification; ``validation_step`` returns its EncodedBatch."""

    def __init__(self, config, run_model_in_validation: bool = True, model=None, lr: float = 0.05):
        super().__init__()
        self.lr = lr
        from transformers import BertForSequenceClassification

        torch.manual_seed(0)
        self.model = model if model is not None else BertForSequenceClassification(config)
        self.run_model_in_validation = run_model_in_validation
        self.forwards = {"train": 0, "val": 0}
        self.hooks_seen_in_training = 0

    def encode(self, batch) -> EncodedBatch:
        return encode_batch(self.model, batch)

    def training_step(self, batch, batch_idx):
        self.forwards["train"] += 1
        self.hooks_seen_in_training += _geometry_hooks(self.model)
        out = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        return out.loss

    def validation_step(self, batch, batch_idx):
        if not self.run_model_in_validation:  # logs without running the model
            self.log("val/acc", 0.5 + 0.01 * self.current_epoch, on_epoch=True)
            return None
        self.forwards["val"] += 1
        enc = self.encode(batch)
        acc = (enc.logits.argmax(-1) == batch["labels"]).float().mean()
        self.log("val/acc", acc, on_epoch=True)
        return enc

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _geometry_hooks(model) -> int:
    hooks = [h for m in model.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
    return sum(getattr(h, "__module__", "") == "lightning_topo.representations.geometry" for h in hooks)


class TinyData(pl.LightningDataModule):
    def __init__(self, empty_row: int | None = None):
        super().__init__()
        self.empty_row = empty_row

    def train_dataloader(self):
        return DataLoader(make_dataset(32, 0), batch_size=8)

    def val_dataloader(self):
        return DataLoader(make_dataset(24, 1, self.empty_row), batch_size=8)


def run_fit(tmp_path, config, monitor, max_epochs=3, logger=None, model=None, ckpt_path=None, callbacks=()):
    model = model or TinyClassifier(config)
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path),
        max_epochs=max_epochs,
        callbacks=[monitor, *callbacks],
        logger=logger if logger is not None else False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=TinyData(), ckpt_path=ckpt_path)
    return trainer, model


def _names(layers=(1, 2), prefix="geometry"):
    names = [f"{prefix}/cone"]
    for i in layers:
        cone = f"{prefix}/cone/layer_{i}"
        names += [cone, f"{cone}/input", f"{cone}/heads", f"{cone}/attention_output"]
        names += [
            f"{prefix}/{k}/layer_{i}" for k in ("attention_entropy", "directionality", "qk_spectral_entropy")
        ]
    return names


def _direct(model, layers=(1, 2), first=None):
    """The old single-process accumulator over the validation set (the first ``first`` sequences)."""
    model.eval()
    acc = GeometryAccumulator(list(layers), num_heads=4)
    with GeometryCapture(model, layers=list(layers), on_layer=acc.add), torch.no_grad():
        for batch in TinyData().val_dataloader():
            if first is not None:
                batch = {k: v[: max(0, first)] for k, v in batch.items()}
                first -= 8
                if batch["input_ids"].shape[0] == 0:
                    break
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return acc.result()


def test_logs_every_metric_correlations_and_figures(tmp_path, tiny_config):
    monitor = GeometryMonitor()
    trainer, model = run_fit(tmp_path, tiny_config, monitor, logger=CSVLogger(str(tmp_path), name="csv"))
    metrics = trainer.callback_metrics
    for name in _names():
        assert name in metrics, name
        value = float(metrics[name])
        assert math.isfinite(value)
        if "/cone" in name or "directionality" in name:
            assert 0.0 <= value <= 1.0 + 1e-6, (name, value)
        if "attention_entropy" in name:
            assert 0.0 <= value <= math.log(8) + 1e-6
    assert float(metrics["geometry/cone"]) == float(metrics["geometry/cone/layer_2"])  # the deepest layer
    assert monitor.headline_name == "geometry/cone"
    assert "geometry/cone/pearson_val_acc" in metrics and "geometry/cone/layer_2/pearson_val_acc" in metrics
    assert "geometry/directionality/layer_1/spearman_val_acc" in metrics
    assert [r["epoch"] for r in monitor.history] == [0, 1, 2]
    record = monitor.history[-1]
    assert record["layers"] == [1, 2] and record["monitor"] is not None
    assert {k: (len(v), len(v[0])) for k, v in record["heads"].items()} == {
        "cone_heads": (2, 4),
        "directionality": (2, 4),
        "qk_spectral_entropy": (2, 4),
        "attention_entropy": (2, 4),
    }
    out = monitor.plot_dir(trainer)
    assert (out / "cone_vs_epoch.png").stat().st_size > 0
    for r in monitor.history:
        assert (out / f"heads_epoch{r['epoch']}_step{r['step']}.png").stat().st_size > 0
    assert _geometry_hooks(model.model) == 0 and model.hooks_seen_in_training == 0
    assert (out / "geometry_cone_vs_epoch.png").stat().st_size > 0
    assert (out / "geometry_cone_vs_val_acc.png").stat().st_size > 0


def test_values_equal_a_direct_measurement_of_the_final_model(tmp_path, tiny_config):
    monitor = GeometryMonitor()
    trainer, model = run_fit(tmp_path, tiny_config, monitor, max_epochs=1)
    direct = _direct(model.model)
    logged = monitor.history[-1]["scores"]
    assert monitor.history[-1]["sequences"] == 24  # the whole validation set (default cap 512)
    assert logged["geometry/cone"] == pytest.approx(float(direct[2]["cone/output"]), rel=1e-5)
    for i in (1, 2):
        assert logged[f"geometry/cone/layer_{i}"] == pytest.approx(float(direct[i]["cone/output"]), rel=1e-5)
        assert logged[f"geometry/cone/layer_{i}/heads"] == pytest.approx(
            float(direct[i]["cone/heads"].mean()), rel=1e-5
        )
        assert logged[f"geometry/attention_entropy/layer_{i}"] == pytest.approx(
            float(direct[i]["attention_entropy"].mean()), rel=1e-5
        )
    heads = monitor.last_result.extras["heads"]["cone_heads"]
    assert heads[1] == pytest.approx(direct[2]["cone/heads"].tolist(), rel=1e-5)


def test_max_samples_measures_exactly_that_many_sequences(tmp_path, tiny_config):
    monitor = GeometryMonitor(max_samples=10)
    _, model = run_fit(tmp_path, tiny_config, monitor, max_epochs=1)
    record = monitor.history[-1]
    assert record["sequences"] == 10  # the first batch of 8 and 2 of the second
    direct = _direct(model.model, first=10)
    assert record["scores"]["geometry/cone/layer_2/input"] == pytest.approx(
        float(direct[2]["cone/input"]), rel=1e-5
    )
    assert record["scores"]["geometry/cone/layer_2/input"] != pytest.approx(
        float(_direct(model.model)[2]["cone/input"]), rel=1e-7
    )  # the cap changes the number: the comparison above can fail


def test_adds_no_second_validation_pass(tmp_path, tiny_config):
    _, without = run_fit(tmp_path / "a", tiny_config, monitor=pl.Callback(), max_epochs=2)
    monitor = GeometryMonitor()
    _, with_monitor = run_fit(tmp_path / "b", tiny_config, monitor, max_epochs=2)
    calls = {"n": 0}

    def count(module, args, kwargs):
        calls["n"] += 1

    assert with_monitor.forwards == without.forwards == {"train": 8, "val": 6}
    # and the HF model itself ran once per batch: 8 training, 6 validation, and the one dry run
    # on the first validation batch before training (the checks of on_train_start)
    model = TinyClassifier(tiny_config)
    model.model.register_forward_pre_hook(count, with_kwargs=True)
    run_fit(tmp_path / "c", tiny_config, GeometryMonitor(), max_epochs=2, model=model)
    assert calls["n"] == 8 + 6 + 1


def test_validation_step_without_the_model_is_refused_naming_model_attr(tmp_path, tiny_config):
    model = TinyClassifier(tiny_config, run_model_in_validation=False)
    with pytest.raises(RuntimeError, match="did not run.*model_attr"):
        run_fit(tmp_path, tiny_config, GeometryMonitor(plots=False), max_epochs=1, model=model)
    assert _geometry_hooks(model.model) == 0


def test_an_error_during_a_measured_validation_leaves_no_hooks(tmp_path, tiny_config):
    class FailsInValidation(TinyClassifier):
        def validation_step(self, batch, batch_idx):
            super().validation_step(batch, batch_idx)
            if batch_idx == 1:
                raise KeyError("the user's bug")

    model = FailsInValidation(tiny_config)
    with pytest.raises(KeyError, match="the user's bug"):
        run_fit(tmp_path, tiny_config, GeometryMonitor(plots=False), max_epochs=1, model=model)
    assert model.forwards["val"] == 2 and _geometry_hooks(model.model) == 0


def test_split_train_rereads_the_training_data_in_eval_mode(tmp_path, tiny_config):
    monitor = GeometryMonitor(split="train", every_n_epochs=2, max_samples=16, plots=False)
    model = TinyClassifier(tiny_config, run_model_in_validation=False)
    calls = []
    model.model.register_forward_pre_hook(lambda module, args: calls.append(module.training))
    trainer, _ = run_fit(tmp_path, tiny_config, monitor, max_epochs=3, model=model)
    assert [r["epoch"] for r in monitor.history] == [1]  # every_n_epochs=2
    assert monitor.history[0]["sequences"] == 16  # max_samples=16: 2 training batches of 8
    assert calls.count(False) == 1 + 2  # the dry run before training, the re-read (2 batches, epoch 1)
    assert calls.count(True) == 12  # the training batches
    assert "geometry/cone" in trainer.callback_metrics
    assert _geometry_hooks(model.model) == 0


def test_resume_restores_history(tmp_path, tiny_config):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, save_top_k=0)
    first = GeometryMonitor()
    run_fit(tmp_path, tiny_config, first, max_epochs=2, callbacks=[ckpt])
    second = GeometryMonitor()
    run_fit(
        tmp_path,
        tiny_config,
        second,
        max_epochs=3,
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
        callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "ckpt2"), save_last=True, save_top_k=0)],
    )
    assert [r["epoch"] for r in second.history] == [0, 1, 2]
    assert second.history[:2] == first.history


def test_resume_with_other_settings_starts_its_own_series(tmp_path, tiny_config):
    # the state_key is built from every setting: a checkpoint's history goes only into a monitor
    # measuring the same series, never mixed with another layer selection
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, save_top_k=0)
    first = GeometryMonitor(layers=[1], plots=False)
    run_fit(tmp_path, tiny_config, first, max_epochs=1, callbacks=[ckpt])
    second = GeometryMonitor(layers="all", plots=False)
    with pytest.warns(UserWarning, match="callbacks used to create the checkpoint"):
        run_fit(tmp_path, tiny_config, second, max_epochs=2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [r["epoch"] for r in first.history] == [0] and [r["epoch"] for r in second.history] == [1]
    assert second.history[0]["layers"] == [1, 2]


def test_log_prefix_names_metrics_files_and_wandb_images_and_table(tmp_path, tiny_config):
    pytest.importorskip("wandb")
    import wandb
    from conftest import recording_wandb_logger

    logger = recording_wandb_logger(tmp_path)
    monitor = GeometryMonitor(layers=[-1], log_prefix="geo/")
    trainer, _ = run_fit(tmp_path, tiny_config, monitor, max_epochs=3, logger=logger)
    assert {
        "geo/cone",
        "geo/cone/layer_2",
        "geo/attention_entropy/layer_2",
        "geo/cone/pearson_val_acc",
    } <= set(trainer.callback_metrics)
    assert not any(k.startswith("geometry/") for k in trainer.callback_metrics)
    # figures and the history table at every measurement (live W&B), the last one holds every epoch
    tables = [p for p in logger.run.payloads if any(k.endswith("/history") for k in p)]
    assert len(tables) >= 3
    payload = tables[-1]
    assert logger.run.defined  # lens metrics defined against the epoch
    assert {"geo/plots/cone_vs_epoch", "geo/plots/geo_cone_vs_epoch", "geo/plots/geo_cone_vs_val_acc"} <= set(
        payload
    )
    assert sum(k.startswith("geo/plots/heads_") for k in payload) == 3
    table = payload["geo/history"]
    assert isinstance(table, wandb.Table) and table.columns[:3] == ["epoch", "step", "geo/cone"]
    assert len(table.data) == 3
    assert (monitor.plot_dir(trainer) / "cone_vs_epoch.png").exists() and monitor.plot_dir(
        trainer
    ).name == "geo"


def test_mid_epoch_validation_gets_its_own_record(tmp_path, tiny_config):
    monitor = GeometryMonitor(plots=False)
    model = TinyClassifier(tiny_config)
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path),
        max_epochs=2,
        callbacks=[monitor],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=0,
        val_check_interval=0.5,
    )
    trainer.fit(model, datamodule=TinyData())
    assert [(r["epoch"], r["step"]) for r in monitor.history] == [(0, 2), (0, 4), (1, 6), (1, 8)]
    assert len({r["scores"]["geometry/directionality/layer_1"] for r in monitor.history}) == 4


def test_nan_hidden_states_warn_and_log_nan(tmp_path, tiny_config):
    class NanAtValidation(TinyClassifier):
        def on_validation_epoch_start(self):
            self.model.bert.embeddings.LayerNorm.weight.data.fill_(float("nan"))

    monitor = GeometryMonitor(plots=False)
    with pytest.warns(UserWarning, match="NaN"):
        trainer, _ = run_fit(tmp_path, tiny_config, monitor, max_epochs=1, model=NanAtValidation(tiny_config))
    scores = monitor.history[-1]["scores"]
    assert set(scores) == {f"geometry/{n}" for n in metric_names([1, 2])}
    for name, value in scores.items():
        if "directionality" in name or "spectral" in name:  # from the (finite) attention weights
            assert math.isfinite(value), name
        else:
            assert math.isnan(value), name
            assert math.isnan(float(trainer.callback_metrics[name]))


def test_every_hook_is_marked_override():
    from lightning.pytorch.callbacks import Callback

    hooks = [  # every hook the class (or its bases) implements, not Callback's no-ops
        n
        for n in dir(GeometryMonitor)
        if (n.startswith("on_") or n in ("setup", "teardown", "state_dict", "load_state_dict"))
        and getattr(GeometryMonitor, n) is not getattr(Callback, n, None)
    ]
    assert len(hooks) >= 10
    for name in hooks:
        assert getattr(getattr(GeometryMonitor, name), "__override__", False), name
    assert getattr(GeometryMonitor.state_key.fget, "__override__", False)


def test_state_dict_roundtrip_restores_history_and_settings():
    monitor = GeometryMonitor(layers=[1, -1], normalize=False, monitor_against="val/f1")
    monitor.history = [{"epoch": 0, "step": 4, "scores": {"geometry/cone/layer_1": 3.0}, "monitor": 0.5}]
    state = monitor.state_dict()
    fresh = GeometryMonitor(layers=[1, -1], normalize=False, monitor_against="val/f1")
    fresh.load_state_dict(state)
    assert fresh.history == monitor.history and fresh.history is not monitor.history
    other = GeometryMonitor()  # the one rule: a history measured with other settings is not restored
    with pytest.warns(UserWarning, match=r"layers=\[1, -1\] \(now 'all'\), normalize=False.*not restored"):
        other.load_state_dict(state)
    assert other.history == [] and (other.layers, other.normalize, other.monitor_against) == (
        "all",
        True,
        "val/acc",
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"layers": [2]},
        {"normalize": False},
        {"attention": "none"},
        {"max_samples": 64},
        {"split": "train"},
        {"log_prefix": "geo"},
        {"monitor_against": "val/f1"},
    ],
)
def test_state_key_tells_every_setting_apart(kwargs):
    assert GeometryMonitor(**kwargs).state_key != GeometryMonitor().state_key
    assert GeometryMonitor(**kwargs).state_key == GeometryMonitor(**kwargs).state_key


def test_labels_are_not_needed(tmp_path, tiny_config):
    class NoLabels(TinyData):
        def val_dataloader(self):
            rows = [{k: v for k, v in r.items() if k != "labels"} for r in make_dataset(24, 1)]
            return DataLoader(rows, batch_size=8)

    class Module(TinyClassifier):
        def validation_step(self, batch, batch_idx):
            self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    monitor = GeometryMonitor(plots=False, monitor_against=None, labels_fn=None)
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path), max_epochs=1, callbacks=[monitor], logger=False, enable_progress_bar=False,
        enable_checkpointing=False, accelerator="cpu", devices=1, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(Module(tiny_config), datamodule=NoLabels())
    assert monitor.history[-1]["sequences"] == 24


# ----------------------------------------------------------------------------- any user module


@pytest.mark.parametrize("shape", ["net", "batch_forward", "no_forward", "own_head"])
def test_user_module_shapes_train_two_epochs_and_log_the_headline(tmp_path, shape):
    from tests import user_modules

    module = user_modules.USER_MODULES[shape]("bert")
    train, val = user_modules.loaders()
    monitor = GeometryMonitor(plots=False)
    trainer = user_modules.trainer(tmp_path, [monitor])
    trainer.fit(module, train, val)
    assert trainer.current_epoch == 2
    assert [r["epoch"] for r in monitor.history] == [0, 1]
    assert math.isfinite(float(trainer.callback_metrics["geometry/cone"]))
    assert monitor.history[-1]["sequences"] == 32
    metrics_csv = Path(trainer.logger.log_dir) / "metrics.csv"
    assert "geometry/cone" in metrics_csv.read_text().splitlines()[0].split(",")


@pytest.mark.parametrize("family", ["distilbert", "deberta", "electra"])
def test_other_families_train_and_log(tmp_path, family):
    from tests import user_modules

    module = user_modules.NetModule(family)
    train, val = user_modules.loaders()
    monitor = GeometryMonitor(plots=False, layers=[-1])
    trainer = user_modules.trainer(tmp_path, [monitor], max_epochs=1)
    trainer.fit(module, train, val)
    scores = monitor.history[-1]["scores"]
    assert set(scores) == {f"geometry/{n}" for n in metric_names([2])}
    assert all(math.isfinite(v) for v in scores.values())
    assert 0 < scores["geometry/attention_entropy/layer_2"] <= math.log(8) + 1e-6


# ----------------------------------------------------------------------------- refusals


def _fit_refused(tmp_path, config, monitor, model=None, data=None):
    model = model or TinyClassifier(config)
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path),
        max_epochs=1,
        callbacks=[monitor],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, datamodule=data or TinyData())
    return model


def test_setup_refuses_unsupported_models_before_training(tmp_path, tiny_config):
    from transformers import DebertaConfig, DebertaForSequenceClassification

    deberta_v1 = DebertaForSequenceClassification(
        DebertaConfig(
            vocab_size=128, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    )
    model = TinyClassifier(tiny_config, model=deberta_v1)
    with pytest.raises(
        TypeError, match=r"GeometryMonitor: .*BERT-family.*DistilBERT.*DeBERTa-v2.*got DebertaFor"
    ):
        _fit_refused(tmp_path, tiny_config, GeometryMonitor(), model=model)
    assert model.forwards["train"] == 0


def test_setup_refuses_model_attention_without_eager(tmp_path, tiny_config):
    model = TinyClassifier(tiny_config)
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        _fit_refused(tmp_path, tiny_config, GeometryMonitor(attention="model"), model=model)
    assert model.forwards["train"] == 0
    model.model.set_attn_implementation("eager")  # the fix the message names works
    monitor = GeometryMonitor(attention="model")
    _fit_refused(tmp_path, tiny_config, monitor, model=model)
    assert "geometry/attention_entropy/layer_2" in monitor.history[-1]["scores"]


def test_refuses_a_validation_sequence_without_valid_position_before_training(tmp_path, tiny_config):
    model = TinyClassifier(tiny_config)
    with pytest.raises(ValueError, match=r"val batch 1 has sequence\(s\) \[2\]"):
        _fit_refused(tmp_path, tiny_config, GeometryMonitor(), model=model, data=TinyData(empty_row=10))
    assert model.forwards["train"] == 0


def test_datamodule_without_validation_trains_and_logs_nothing(tmp_path, tiny_config):
    class TrainOnly(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(make_dataset(16, 0), batch_size=8)

    monitor = GeometryMonitor()
    model = TinyClassifier(tiny_config)
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path),
        max_epochs=1,
        callbacks=[monitor],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
    )
    with pytest.warns(UserWarning, match="nothing will be measured"):
        trainer.fit(model, datamodule=TrainOnly())
    assert model.forwards["train"] == 2 and monitor.history == []


@pytest.mark.parametrize("layers", [[3], -3])
def test_setup_refuses_layers_beyond_the_model(tmp_path, tiny_config, layers):
    model = TinyClassifier(tiny_config)
    with pytest.raises(ValueError, match=r"GeometryMonitor: layers: index -?3 .*encoder layers 1..2"):
        _fit_refused(tmp_path, tiny_config, GeometryMonitor(layers=layers), model=model)
    assert model.forwards["train"] == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every_n_epochs": 0}, ValueError, "every_n_epochs"),
        ({"every_n_epochs": 1.5}, TypeError, "every_n_epochs"),
        ({"layers": "last"}, ValueError, "layers"),
        ({"layers": [0]}, ValueError, "0 .*has no attention"),
        ({"layers": 0}, ValueError, "0 .*has no attention"),
        ({"layers": [1.5]}, TypeError, "layers"),
        ({"attention": "eager"}, ValueError, "attention"),
        ({"normalize": "yes"}, TypeError, "normalize"),
        ({"max_samples": 0}, ValueError, "max_samples"),
        ({"split": "test"}, ValueError, "split"),
        ({"log_prefix": "/"}, ValueError, "log_prefix"),
        ({"monitor_against": 3}, TypeError, "monitor_against"),
        ({"monitor_against": ""}, ValueError, "monitor_against"),
        ({"labels_fn": "labels"}, TypeError, "labels_fn"),
        ({"model_attr": 3}, TypeError, "model_attr"),
    ],
)
def test_constructor_refuses_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        GeometryMonitor(**kwargs)


@pytest.mark.parametrize("old", ["max_sequences", "max_batches"])
def test_old_argument_names_are_gone(old):
    with pytest.raises(TypeError, match=old):
        GeometryMonitor(**{old: 8})


# ----------------------------------------------------------------------------- DDP


class _RecordMetrics(pl.Callback):
    """Writes each rank's logged geometry values after every validation (``ddp`` keeps no state)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.records: list[dict] = []

    def _record(self, trainer, when):
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("geometry/")}
        self.records.append({"epoch": trainer.current_epoch, "when": when, "values": values})
        (Path(self.out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.records))

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._record(trainer, "validation")

    def on_train_epoch_end(self, trainer, pl_module):  # after the correlations are logged
        self._record(trainer, "train_epoch_end")


def _ddp_main(out_dir: str, devices: int) -> None:
    """The fit of the DDP test: a user module (HF model at ``self.net``), plain DataLoaders,
    EarlyStopping on ``geometry/cone`` that must stop (no change can reach ``min_delta=1``)."""
    from tests import user_modules

    out = Path(out_dir)
    monitor = GeometryMonitor(plots=False)
    stopping = EarlyStopping(monitor="geometry/cone", mode="max", patience=2, min_delta=1.0)
    trainer = pl.Trainer(
        default_root_dir=str(out), max_epochs=8, callbacks=[monitor, stopping, _RecordMetrics(str(out))],
        logger=False, accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    train, val = user_modules.loaders()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(user_modules.NetModule("bert"), train, val)
    result = {
        "world_size": trainer.world_size,
        "stopped_epoch": stopping.stopped_epoch,
        "current_epoch": trainer.current_epoch,
        "history_epochs": [r["epoch"] for r in monitor.history],
        "sequences": monitor.history[-1]["sequences"],
        "warnings": [str(w.message) for w in caught if "sync_dist" in str(w.message)],
    }
    (out / f"result_rank{trainer.global_rank}.json").write_text(json.dumps(result))


@pytest.mark.slow
def test_ddp_early_stops_on_the_headline_without_sync_dist_warnings(tmp_path):
    torch.distributed.is_available() or pytest.skip("torch.distributed not available")
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}  # a free port
    env.update(PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    out = tmp_path / "two"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(out), "2"],
        capture_output=True, text=True, timeout=600, env=env, cwd=out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"result_rank{r}.json").read_text()) for r in (0, 1)]
    for result in ranks:
        assert result["world_size"] == 2
        assert result["stopped_epoch"] == 2 and result["current_epoch"] == 3  # patience 2 after epoch 0
        assert result["history_epochs"] == [0, 1, 2]
        assert result["sequences"] == 32  # both shards of the validation set, synchronised
        ours = [w for w in result["warnings"] if "geometry/" in w]
        assert ours == [], ours
    logged = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(logged[0]) == 6 and logged[0] == logged[1]  # every rank holds the same logged values
    assert "geometry/cone" in logged[0][0]["values"]
    assert logged[0][-1]["when"] == "train_epoch_end"  # from 3 measurements on: the correlations too
    assert {"geometry/cone/pearson_val_acc", "geometry/cone/spearman_val_acc"} <= set(logged[0][-1]["values"])


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path, tiny_config):
    torch.distributed.is_available() or pytest.skip("torch.distributed not available")
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"out{devices}"
        out.mkdir()
        trainer = pl.Trainer(
            default_root_dir=str(tmp_path / f"r{devices}"),
            max_epochs=1,
            callbacks=[GeometryMonitor(plots=False), _RecordMetrics(str(out))],
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            accelerator="cpu",
            devices=devices,
            strategy="ddp_spawn" if devices == 2 else "auto",
            num_sanity_val_steps=0,
        )
        # lr=0 keeps the weights equal; 24 validation sequences split evenly over 2 ranks
        trainer.fit(TinyClassifier(tiny_config, lr=0.0), datamodule=TinyData())
        results[devices] = [json.loads(p.read_text())[-1] for p in sorted(out.glob("rank*.json"))]
    (ref,) = results[1]
    got0, got1 = results[2]
    assert set(ref["values"]) == {f"geometry/{n}" for n in metric_names([1, 2])}
    assert got0["values"] == got1["values"]  # every rank logs the same values
    for name, value in ref["values"].items():
        assert got0["values"][name] == pytest.approx(value, rel=1e-5), name


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _ddp_main(sys.argv[1], int(sys.argv[2]))
