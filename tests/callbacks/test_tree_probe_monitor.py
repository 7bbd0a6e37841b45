"""TreeProbeMonitor and TreeProbeRegularization in tiny fits; TreeProbeLoss gradients."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_topo.callbacks.tree_probe_loss import TreeProbeRegularization
from lightning_topo.callbacks.tree_probe_monitor import TreeProbeMonitor
from lightning_topo.scores.tree_probe import TreeProbeLoss, vocab_tables

DATA = Path(__file__).resolve().parents[1] / "data"
WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "good",
    "bad",
    "film",
    "play",
    "dogs",
    "that",
    "bark",
    "rarely",
    "bite",
]
WORDS += ["strangers", "i", "do", "know", "n't", ".", "great", "awful", "movie", "was"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ing", "##ly"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A random 3-layer BERT classifier (no dropout) and a WordPiece tokenizer with ``##`` pieces."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    path = tmp_path_factory.mktemp("tiny_tree_bert")
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def toy_csv(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("tree_data") / "toy.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(96):
            y = i % 2
            words = rng.sample(WORDS[:15], rng.randint(1, 7)) + [("great" if y else "awful")]
            rng.shuffle(words)
            writer.writerow([" ".join(words).replace("bark", "barking"), y])
    return path


def _fit(tiny_dir, toy_csv, tmp_path, callbacks, max_epochs=3, ckpt_path=None, seed=0, **trainer_kwargs):
    from lightning_topo.models import SequenceClassifier, TextClassificationDataModule

    pl.seed_everything(seed)
    dm = TextClassificationDataModule(
        train_file=str(toy_csv), val_file=str(toy_csv), tokenizer_name_or_path=str(tiny_dir),
        max_length=16, batch_size=16, eval_batch_size=32,
    )  # fmt: skip
    model = SequenceClassifier(str(tiny_dir), num_labels=2, learning_rate=1e-3)
    trainer = pl.Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=callbacks, num_sanity_val_steps=1,
        logger=CSVLogger(tmp_path, name="logs"), enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, log_every_n_steps=1, **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, model


def _monitor(**kwargs):
    args = dict(max_samples=40, probe_epochs=2, probe_lr=1e-2, probe_batch_size=8, seed=1)
    args.update(kwargs)
    return TreeProbeMonitor(**args)


@pytest.mark.slow
def test_monitor_logs_per_layer_metrics_history_plot_and_correlations(tiny_dir, toy_csv, tmp_path):
    monitor = _monitor(treebank=DATA / "tiny_tree.conllu")
    trainer, _ = _fit(tiny_dir, toy_csv, tmp_path, [monitor])
    metrics = trainer.callback_metrics
    assert monitor.metric_names() == [f"probe/{k}/layer_{i}" for k in ("ssp", "essp", "sp") for i in range(4)]
    for name in monitor.metric_names():
        value = float(metrics[name])
        assert math.isfinite(value) and value >= 0
    assert set(monitor.history[-1]["scores"]) == {"probe/ssp", *monitor.metric_names()}
    assert monitor.history[-1]["scores"]["probe/ssp"] == monitor.history[-1]["scores"]["probe/ssp/layer_3"]
    assert [r["epoch"] for r in monitor.history] == [0, 1, 2]  # the sanity check measured nothing
    assert all(r["monitor"] is not None for r in monitor.history)
    assert "probe/ssp/layer_3/pearson_val_acc" in metrics
    assert monitor.history[0]["scores"] != monitor.history[-1]["scores"]  # the model changed
    assert (monitor.plot_dir(trainer) / "probe_by_layer.png").stat().st_size > 1000
    assert (monitor.plot_dir(trainer) / "probe_ssp_vs_epoch.png").is_file()  # the headline, probe/ssp
    logged = (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()[0]
    assert "probe/essp/layer_0" in logged


@pytest.mark.slow
def test_monitor_restores_history_on_resume(tiny_dir, toy_csv, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = _monitor(layers=[1, -1], targets=["ssp"])
    _fit(tiny_dir, toy_csv, tmp_path, [first, ckpt], max_epochs=2)
    assert [r["epoch"] for r in first.history] == [0, 1]
    resumed = _monitor(layers=[1, -1], targets=["ssp"])
    _fit(tiny_dir, toy_csv, tmp_path, [resumed], max_epochs=3, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2]
    assert resumed.history[:2] == first.history
    assert set(resumed.history[-1]["scores"]) == {"probe/ssp", "probe/ssp/layer_1", "probe/ssp/layer_3"}


@pytest.mark.slow
def test_mid_epoch_validation_gets_its_own_record(tiny_dir, toy_csv, tmp_path):
    monitor = _monitor(layers=[-1], targets=["ssp"])
    _fit(tiny_dir, toy_csv, tmp_path, [monitor], max_epochs=2, val_check_interval=0.5)
    assert [(r["epoch"], r["step"]) for r in monitor.history] == [(0, 3), (0, 6), (1, 9), (1, 12)]
    assert len({r["scores"]["probe/ssp/layer_3"] for r in monitor.history}) == 4


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"targets": ["sp"]}, ValueError, "targets must be one of"),
        ({"targets": []}, ValueError, "non-empty"),
        ({"rank": 0}, ValueError, "rank must be an int >= 1"),
        ({"rank": 2.0}, TypeError, "rank must be an int"),
        ({"max_samples": 1}, ValueError, "max_samples must be an int >= 4"),
        ({"probe_lr": 0.0}, ValueError, "probe_lr must be a finite number > 0"),
        ({"probe_epochs": 1.5}, TypeError, "probe_epochs must be an int"),
        ({"probe_val_fraction": 1.0}, ValueError, "val_fraction must be in"),
        ({"layers": "last"}, ValueError, "layers must be an int, a list of ints or 'all'"),
        ({"seed": None}, TypeError, "seed must be an int"),
        ({"plots": "yes"}, TypeError, "plots must be True or False"),
        ({"log_prefix": "/"}, ValueError, "log_prefix must be a non-empty string"),
        ({"monitor_against": ""}, ValueError, "monitor_against must be a metric name"),
    ],
)
def test_monitor_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        TreeProbeMonitor(**kwargs)


def test_monitor_refuses_a_missing_treebank_and_a_layer_out_of_range(tiny_dir, toy_csv, tmp_path):
    with pytest.raises(FileNotFoundError, match="treebank: CoNLL-U file not found"):
        TreeProbeMonitor(treebank=tmp_path / "none.conllu")
    with pytest.raises(ValueError, match="index 7 is out of range"):
        _fit(tiny_dir, toy_csv, tmp_path, [_monitor(layers=7)], max_epochs=1)


def test_monitor_hooks_are_marked_override():
    for name in ("setup", "on_validation_epoch_start", "on_validation_batch_end", "on_validation_epoch_end",
                 "on_validation_end", "on_train_epoch_end", "on_fit_end", "state_dict", "load_state_dict"):  # fmt: skip
        assert getattr(getattr(TreeProbeMonitor, name), "__override__", False), name
    assert getattr(TreeProbeMonitor.state_key.fget, "__override__", False)


@pytest.mark.slow
class _Diverge(pl.Callback):
    """NaN into the embeddings after the last training step of epoch 0: the model diverges mid-fit."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == trainer.num_training_batches - 1:
            with torch.no_grad():
                pl_module.model.base_model.embeddings.word_embeddings.weight.fill_(float("nan"))


def test_monitor_logs_nan_for_every_name_on_nan_hidden_states(tiny_dir, toy_csv, tmp_path):
    monitor = _monitor(layers=[0, 2])
    with pytest.warns(UserWarning, match="logs NaN"):
        trainer, _ = _fit(tiny_dir, toy_csv, tmp_path, [monitor, _Diverge()], max_epochs=1)
    names = monitor.metric_names()
    assert names == ["probe/ssp/layer_0", "probe/ssp/layer_2", "probe/essp/layer_0", "probe/essp/layer_2"]
    assert all(math.isnan(float(trainer.callback_metrics[n])) for n in names)


def test_monitor_state_dict_round_trip():
    monitor = TreeProbeMonitor(monitor_against="val/f1")
    monitor.history = [{"epoch": 0, "step": 5, "scores": {"probe/ssp/layer_1": 0.5}, "monitor": 0.7}]
    other = TreeProbeMonitor(monitor_against="val/acc")
    assert other.state_key != monitor.state_key
    with pytest.warns(UserWarning, match="monitor_against.*not restored"):
        other.load_state_dict(monitor.state_dict())
    assert other.history == [] and other.monitor_against == "val/acc"
    other = TreeProbeMonitor(monitor_against="val/f1")
    other.load_state_dict(monitor.state_dict())
    assert other.history == monitor.history
    other.history[0]["scores"]["probe/ssp/layer_1"] = 9.0
    assert monitor.history[0]["scores"]["probe/ssp/layer_1"] == 0.5  # a copy, not shared


# ------------------------------------------------------------------------- auxiliary loss
def _grads(model, batch, with_aux: bool, layer: int) -> dict[str, torch.Tensor]:
    from lightning_topo.scores.tree_probe import probe_loss, probe_targets

    model.zero_grad(set_to_none=True)
    encoded = model.encode(batch)
    loss = torch.nn.functional.cross_entropy(encoded.logits, batch["labels"])
    if with_aux:
        aux = model.auxiliary_modules["tree_probe"]
        value = aux(encoded, batch)
        assert value.item() > 0
        loss = loss + 10.0 * value
        # the term is the probe loss of that layer, with labels from the detached predictions
        pred = aux.probe(encoded.hidden_states[layer], encoded.attention_mask)
        direct = probe_loss(pred, probe_targets(pred, "ssp", encoded.attention_mask), encoded.attention_mask)
        assert aux.continuation is not None or torch.allclose(value, direct)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("layer", [1, 2])
def test_tree_probe_loss_changes_gradients_of_the_chosen_layer_and_below_only(tiny_dir, layer):
    from transformers import AutoTokenizer

    from lightning_topo.models import SequenceClassifier

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    batch = dict(tok(["the cat sat on the mat", "dogs that barking rarely bite strangers", "good film"],
                     padding=True, return_tensors="pt"))  # fmt: skip
    batch["labels"] = torch.tensor([0, 1, 1])
    model = SequenceClassifier(str(tiny_dir), num_labels=2)
    continuation, special = vocab_tables(tok)
    loss = TreeProbeLoss(32, layer=layer, continuation=continuation, special=special)
    model.register_auxiliary_loss("tree_probe", loss, weight=10.0)
    assert "auxiliary_modules.tree_probe.probe.proj" in dict(model.named_parameters())
    plain = _grads(model, batch, False, layer)
    regularised = _grads(model, batch, True, layer)
    changed = {n for n in plain if not torch.allclose(plain[n], regularised[n], atol=1e-7, rtol=1e-5)}
    for name in plain:
        if name.startswith(("classifier.", "bert.pooler.")) or any(
            name.startswith(f"bert.encoder.layer.{i}.") for i in range(layer, 3)
        ):
            assert name not in changed, name  # above the probe: untouched
    assert any(n.startswith(f"bert.encoder.layer.{layer - 1}.") for n in changed)  # the chosen layer
    assert any(n.startswith("bert.embeddings.") for n in changed)
    assert any(n.startswith("bert.encoder.layer.0.") for n in changed)


@pytest.mark.slow
def test_regularization_callback_trains_the_probe_with_the_model(tiny_dir, toy_csv, tmp_path):
    reg = TreeProbeRegularization(layer=2, weight=10.0)
    trainer, model = _fit(tiny_dir, toy_csv, tmp_path, [reg], max_epochs=1)
    assert model.auxiliary_losses == {"tree_probe": 10.0}
    assert "train/aux/tree_probe" in trainer.callback_metrics
    probe = model.auxiliary_modules["tree_probe"].probe
    init = TreeProbeLoss(32, layer=2).probe.proj  # same seed, untrained
    assert not torch.allclose(probe.proj.detach(), init)
    assert model.auxiliary_modules["tree_probe"].continuation is not None  # word pooling from the datamodule


def test_regularization_bad_arguments(tiny_dir, toy_csv, tmp_path):
    with pytest.raises(ValueError, match="weight must be"):
        TreeProbeRegularization(weight=0)
    with pytest.raises(ValueError, match="targets must be"):
        TreeProbeRegularization(targets="sp")
    with pytest.raises(ValueError, match="rank must be"):
        TreeProbeRegularization(rank=0)
    with pytest.raises(ValueError, match="layer 4 is out of range"):
        _fit(tiny_dir, toy_csv, tmp_path, [TreeProbeRegularization(layer=4)], max_epochs=1)


# ------------------------------------------------------------------------------------- DDP
class _RecordProbeMetrics(pl.Callback):
    """Writes every rank's logged ``probe/*`` values to JSON after each validation."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("probe/")}
        (Path(self.out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(values))


@pytest.mark.slow
def test_ddp_two_processes_match_one(tiny_dir, toy_csv, tmp_path):
    torch.distributed.is_available() or pytest.skip("torch.distributed not available")
    from lightning_topo.models import SequenceClassifier, TextClassificationDataModule

    results = {}
    for devices in (1, 2):
        out = tmp_path / f"out{devices}"
        out.mkdir()
        pl.seed_everything(0)
        dm = TextClassificationDataModule(
            train_file=str(toy_csv), val_file=str(toy_csv), tokenizer_name_or_path=str(tiny_dir),
            max_length=16, batch_size=16, eval_batch_size=16,
        )  # fmt: skip
        # a negligible learning rate keeps the weights equal; 96 validation sentences split evenly
        model = SequenceClassifier(str(tiny_dir), num_labels=2, learning_rate=1e-12)
        trainer = pl.Trainer(
            max_epochs=1, accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices == 2 else "auto",
            callbacks=[_monitor(layers=[0, -1], plots=False), _RecordProbeMetrics(str(out))], logger=False,
            default_root_dir=str(out), enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        )  # fmt: skip
        trainer.fit(model, datamodule=dm)
        results[devices] = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    (ref,), (got0, got1) = results[1], results[2]
    assert len(ref) == 5 and got0 == got1  # every rank logs the same values (4 per layer + headline)
    assert got0.keys() == ref.keys()
    for name, value in ref.items():
        assert got0[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
