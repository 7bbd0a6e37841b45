"""GeometryMonitor in real (tiny) fits: metrics, figures, one validation forward, resume, refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import labelled_token_dataset as make_dataset
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from lightning_topo.callbacks.geometry_monitor import GeometryMonitor
from lightning_topo.encoding import EncodedBatch, encode_batch
from lightning_topo.representations.geometry import GeometryAccumulator, GeometryCapture
from lightning_topo.scores.geometry import metric_names


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
        if not self.run_model_in_validation:  # logs without running the model: the monitor must re-read
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
    names = []
    for i in layers:
        cone = f"{prefix}/cone/layer_{i}"
        names += [cone, f"{cone}/input", f"{cone}/heads", f"{cone}/attention_output"]
        names += [
            f"{prefix}/{k}/layer_{i}" for k in ("attention_entropy", "directionality", "qk_spectral_entropy")
        ]
    return names


def test_logs_every_metric_correlations_and_figures(tmp_path, tiny_config):
    monitor = GeometryMonitor()
    trainer, model = run_fit(tmp_path, tiny_config, monitor, logger=CSVLogger(str(tmp_path), name="csv"))
    metrics = trainer.callback_metrics
    for name in _names():
        assert name in metrics, name
        value = float(metrics[name])
        assert math.isfinite(value)
        if "/cone/" in name or "directionality" in name:
            assert 0.0 <= value <= 1.0 + 1e-6, (name, value)
        if "attention_entropy" in name:
            assert 0.0 <= value <= math.log(8) + 1e-6
    assert "geometry/cone/layer_2/pearson_val_acc" in metrics
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
    assert (out / "geometry_cone_layer_2_vs_epoch.png").exists()
    assert (out / "geometry_cone_layer_2_vs_val_acc.png").exists()


def test_values_equal_a_direct_measurement_of_the_final_model(tmp_path, tiny_config):
    monitor = GeometryMonitor()
    trainer, model = run_fit(tmp_path, tiny_config, monitor, max_epochs=1)
    model.model.eval()
    acc = GeometryAccumulator([1, 2], num_heads=4)
    with GeometryCapture(model.model, on_layer=acc.add), torch.no_grad():
        for batch in TinyData().val_dataloader():
            model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    direct = acc.result()
    logged = monitor.history[-1]["scores"]
    assert monitor.history[-1]["sequences"] == 24  # the whole validation set (default cap 512)
    for i in (1, 2):
        assert logged[f"geometry/cone/layer_{i}"] == pytest.approx(float(direct[i]["cone/output"]), rel=1e-5)
        assert logged[f"geometry/cone/layer_{i}/heads"] == pytest.approx(
            float(direct[i]["cone/heads"].mean()), rel=1e-5
        )
        assert logged[f"geometry/attention_entropy/layer_{i}"] == pytest.approx(
            float(direct[i]["attention_entropy"].mean()), rel=1e-5
        )


def test_max_sequences_stops_after_whole_batches(tmp_path, tiny_config):
    monitor = GeometryMonitor(max_sequences=10)
    _, model = run_fit(tmp_path, tiny_config, monitor, max_epochs=1)
    record = monitor.history[-1]
    assert record["sequences"] == 16  # two batches of 8 reach 10
    model.model.eval()
    acc = GeometryAccumulator([1, 2], num_heads=4)
    with GeometryCapture(model.model, on_layer=acc.add), torch.no_grad():
        for i, batch in enumerate(TinyData().val_dataloader()):
            if i < 2:
                model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert record["scores"]["geometry/cone/layer_2/input"] == pytest.approx(
        float(acc.result()[2]["cone/input"]), rel=1e-5
    )


def test_adds_no_second_validation_pass(tmp_path, tiny_config):
    _, without = run_fit(tmp_path / "a", tiny_config, monitor=pl.Callback(), max_epochs=2)
    monitor = GeometryMonitor()
    _, with_monitor = run_fit(tmp_path / "b", tiny_config, monitor, max_epochs=2)
    calls = {"n": 0}

    def count(module, args, kwargs):
        calls["n"] += 1

    assert with_monitor.forwards == without.forwards == {"train": 8, "val": 6}
    # and the HF model itself ran once per validation batch: count with a hook in a new fit
    model = TinyClassifier(tiny_config)
    model.model.register_forward_pre_hook(count, with_kwargs=True)
    run_fit(tmp_path / "c", tiny_config, GeometryMonitor(), max_epochs=2, model=model)
    assert calls["n"] == 8 + 6


def test_rereads_when_validation_step_runs_no_model(tmp_path, tiny_config):
    monitor = GeometryMonitor(every_n_epochs=2, max_batches=2)
    model = TinyClassifier(tiny_config, run_model_in_validation=False)
    calls = []
    model.model.register_forward_pre_hook(lambda module, args: calls.append(module.training))
    trainer, _ = run_fit(tmp_path, tiny_config, monitor, max_epochs=3, model=model)
    assert [r["epoch"] for r in monitor.history] == [1]  # every_n_epochs=2
    assert monitor.history[0]["sequences"] == 16  # max_batches=2 of 8
    assert calls.count(False) == 2  # the re-read: 2 batches in eval mode, once (epoch 1)
    assert calls.count(True) == 12  # the training batches
    assert "geometry/cone/layer_1" in trainer.callback_metrics
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


def test_log_prefix_names_metrics_files_and_wandb_images_and_table(tmp_path, tiny_config):
    pytest.importorskip("wandb")
    import wandb
    from conftest import recording_wandb_logger

    logger = recording_wandb_logger(tmp_path)
    monitor = GeometryMonitor(layers=[-1], log_prefix="geo/")
    trainer, _ = run_fit(tmp_path, tiny_config, monitor, max_epochs=3, logger=logger)
    assert {"geo/cone/layer_2", "geo/attention_entropy/layer_2", "geo/cone/layer_2/pearson_val_acc"} <= set(
        trainer.callback_metrics
    )
    assert not any(k.startswith("geometry/") for k in trainer.callback_metrics)
    (payload,) = logger.run.payloads
    assert {
        "geo/plots/cone_vs_epoch",
        "geo/plots/geo_cone_layer_2_vs_epoch",
        "geo/plots/geo_cone_layer_2_vs_val_acc",
    } <= set(payload)
    assert sum(k.startswith("geo/plots/heads_") for k in payload) == 3
    table = payload["geo/history"]
    assert isinstance(table, wandb.Table) and table.columns[:3] == ["epoch", "step", "geo/cone/layer_2"]
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

    hooks = [  # every hook the class (or its base LensMonitor) implements, not Callback's no-ops
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
    other = GeometryMonitor()
    with pytest.warns(UserWarning, match="saved settings are restored"):
        other.load_state_dict(state)
    assert (other.layers, other.normalize, other.monitor_against) == ([1, -1], False, "val/f1")
    assert GeometryMonitor(layers=[1]).state_key != GeometryMonitor(layers=[2]).state_key


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


def test_setup_refuses_non_bert_models_before_training(tmp_path, tiny_config):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    distil = DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=128, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    )
    model = TinyClassifier(tiny_config, model=distil)
    with pytest.raises(TypeError, match="BERT-family encoder"):
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


def test_setup_refuses_a_validation_sequence_without_valid_position(tmp_path, tiny_config):
    model = TinyClassifier(tiny_config)
    with pytest.raises(ValueError, match=r"validation batch 1 has sequence\(s\) \[2\]"):
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
    trainer.fit(model, datamodule=TrainOnly())
    assert model.forwards["train"] == 2 and monitor.history == []


def test_setup_refuses_layers_beyond_the_model(tmp_path, tiny_config):
    with pytest.raises(ValueError, match="encoder layers 1..2"):
        _fit_refused(tmp_path, tiny_config, GeometryMonitor(layers=[3]))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every_n_epochs": 0}, ValueError, "every_n_epochs"),
        ({"every_n_epochs": 1.5}, TypeError, "every_n_epochs"),
        ({"layers": "last"}, ValueError, "layers"),
        ({"layers": [0]}, ValueError, "layers"),
        ({"layers": [1, 1]}, ValueError, "duplicates"),
        ({"attention": "eager"}, ValueError, "attention"),
        ({"normalize": "yes"}, TypeError, "normalize"),
        ({"max_batches": 0}, ValueError, "max_batches"),
        ({"max_sequences": 0}, ValueError, "max_sequences"),
        ({"log_prefix": "/"}, ValueError, "log_prefix"),
        ({"monitor_against": 3}, TypeError, "monitor_against"),
        ({"monitor_against": ""}, ValueError, "monitor_against"),
    ],
)
def test_constructor_refuses_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        GeometryMonitor(**kwargs)


class _RecordMetrics(pl.Callback):
    """Writes each rank's logged geometry values after validation (ddp_spawn keeps no state)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_validation_end(self, trainer, pl_module):
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("geometry/")}
        record = {"values": values, "val_forwards": pl_module.forwards["val"]}
        (Path(self.out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


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
        results[devices] = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    (ref,) = results[1]
    got0, got1 = results[2]
    assert set(ref["values"]) == {f"geometry/{n}" for n in metric_names([1, 2])}
    assert got0["values"] == got1["values"]  # every rank logs the same values
    for name, value in ref["values"].items():
        assert got0["values"][name] == pytest.approx(value, rel=1e-5), name
    assert ref["val_forwards"] == 3 and got0["val_forwards"] == got1["val_forwards"] == 2  # no re-read
