"""ConceptAlignmentMonitor on a tiny BERT fit: metrics, JSON, figures, triggers, resume, bad inputs."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

POSITIVE = ["good", "great", "superb", "nice", "lovely", "fine"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "worse"]
FILLER = ["the", "movie", "film", "was", "a", "plot", "story", "and", "it", "is", "this", "actors", ",", "."]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    path = tmp_path_factory.mktemp("tiny_bert")
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "toy.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["sentence", "target"])
        writer.writeheader()
        for i in range(240):
            words = rng.sample(FILLER, 5) + rng.sample(POSITIVE if i % 2 else NEGATIVE, 2)
            rng.shuffle(words)
            writer.writerow({"sentence": " ".join(words), "target": str(i % 2)})
    return path


def _fit(
    tmp_path, model_dir, data_file, monitor, max_epochs=2, ckpt_path=None, checkpoint=False, logger=None
):
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from lightning_topo.models import SequenceClassifier, TextClassificationDataModule

    dm = TextClassificationDataModule(
        data_file=str(data_file), text_column="sentence", label_column="target",
        tokenizer_name_or_path=str(model_dir), max_length=16, batch_size=16, eval_batch_size=32, val_fraction=0.25,
    )  # fmt: skip
    model = SequenceClassifier(model_name_or_path=str(model_dir), num_labels=2, learning_rate=1e-3)
    callbacks = [monitor]
    if checkpoint:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0))
    trainer = Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, logger=logger or CSVLogger(tmp_path, name="run", version=0),
        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1,
        log_every_n_steps=1, enable_checkpointing=checkpoint,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def _monitor(**kwargs):
    from lightning_topo.callbacks.concept_monitor import ConceptAlignmentMonitor

    kwargs.setdefault("max_tokens", 200)
    kwargs.setdefault("trigger_sentences", 16)
    return ConceptAlignmentMonitor(**kwargs)


def _count_forward_passes(monkeypatch):
    import lightning_topo.callbacks.concept_monitor as mod

    calls = []
    real = mod.token_activations

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "token_activations", counted)
    return calls


def test_fit_logs_every_metric_writes_json_figures_and_triggers(tmp_path, model_dir, data_file, monkeypatch):
    calls = _count_forward_passes(monkeypatch)
    monitor = _monitor()
    trainer = _fit(tmp_path, model_dir, data_file, monitor, max_epochs=3)
    sets = ("lexical", "suffix", "casing", "punctuation", "number")
    families = ("matched", "matched_chance", "polar", "polar_chance")
    expected = {f"concepts/{f}/layer_{i}" for f in families for i in range(3)}
    expected |= {f"concepts/aligned/{s}/layer_{i}" for s in sets for i in range(3)}
    assert expected <= set(trainer.callback_metrics)
    for name in expected:
        assert 0.0 <= float(trainer.callback_metrics[name]) <= 1.0
    assert len(calls) == 1  # the reference; the epochs reuse the validation forward
    out = Path(trainer.log_dir) / "concepts"
    files = sorted(p.name for p in out.glob("concepts_*.json"))
    steps = [r["step"] for r in monitor.history]
    assert files == sorted(
        [
            "concepts_reference.json",
            "concepts_triggers.json",
            *[f"concepts_epoch{e}_step{s}.json" for e, s in enumerate(steps)],
        ]
    )
    payload = json.loads((out / f"concepts_epoch1_step{steps[1]}.json").read_text())
    assert payload["model"] == "fine-tuned" and payload["n_tokens"] == 200 and payload["n_concepts"] == 10
    concepts = payload["layers"]["2"]["concepts"]
    assert sum(c["size"] for c in concepts) == 200
    assert all(c["words"] and c["words"][0][1] >= 1 for c in concepts)
    assert {"aligned", "matched", "polar_class", "class_share"} <= set(concepts[0])
    assert (out / "concepts_matched.png").stat().st_size > 0 and (
        out / "concepts_polar.png"
    ).stat().st_size > 0
    metrics = list(csv.DictReader(open(Path(trainer.log_dir) / "metrics.csv")))
    drops = [r for r in metrics if r.get("concepts/trigger_drop")]
    assert len(drops) == 1 and drops[0]["concepts/random_drop"] != ""
    assert monitor.trigger_result["layer"] == 2
    assert [r["epoch"] for r in monitor.history] == [0, 1, 2]
    assert all(r["monitor"] == pytest.approx(r["monitor"]) for r in monitor.history)  # val/acc recorded
    assert {
        f"concepts/{f}/layer_{i}/{c}_val_acc"
        for f in ("matched", "polar")
        for i in range(3)
        for c in ("pearson", "spearman")
    } <= set(trainer.callback_metrics)
    assert set(monitor.reference_scores) == {n for n in expected if "/matched" not in n}


def test_model_unchanged_between_reference_and_itself(tmp_path, model_dir, data_file):
    """With a negligible learning rate the fine-tuned concepts are the pre-trained ones: 100% matched."""
    from lightning.pytorch import Trainer

    from lightning_topo.models import SequenceClassifier, TextClassificationDataModule

    dm = TextClassificationDataModule(
        data_file=str(data_file), text_column="sentence", label_column="target",
        tokenizer_name_or_path=str(model_dir), max_length=16, batch_size=16, val_fraction=0.25,
    )  # fmt: skip
    model = SequenceClassifier(model_name_or_path=str(model_dir), num_labels=2, learning_rate=1e-12)
    monitor = _monitor(triggers=False, plots=False)
    trainer = Trainer(
        max_epochs=1, limit_train_batches=2, accelerator="cpu", logger=False, callbacks=[monitor],
        enable_progress_bar=False, enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert [r["epoch"] for r in monitor.history] == [0]
    matched = {n: v for n, v in monitor.history[-1]["scores"].items() if "/matched/" in n}
    assert len(matched) == 3 and set(matched.values()) == {1.0}


def test_resume_restores_reference_and_history(tmp_path, model_dir, data_file, monkeypatch):
    first = _monitor(triggers=False)
    _fit(tmp_path / "a", model_dir, data_file, first, max_epochs=1, checkpoint=True)
    calls = _count_forward_passes(monkeypatch)
    second = _monitor(triggers=False, overwrite=False)
    _fit(
        tmp_path / "a",
        model_dir,
        data_file,
        second,
        max_epochs=2,
        ckpt_path=str(tmp_path / "a" / "ckpt" / "last.ckpt"),
    )
    assert not calls  # the reference was restored, not recomputed from the fine-tuned weights
    assert all(torch.equal(first.reference[k], second.reference[k]) for k in first.reference)
    assert [r["epoch"] for r in second.history] == [0, 1]
    assert second.history[:1] == first.history


def test_n_concepts_larger_than_token_set_fails_before_training(tmp_path, model_dir, data_file):
    monitor = _monitor(max_tokens=50, n_concepts=50, max_per_word=1)
    with pytest.raises(ValueError, match="n_concepts=50 is larger than the token set"):
        _fit(tmp_path, model_dir, data_file, monitor)
    assert not list(tmp_path.rglob("concepts_*.json"))


def test_conllu_that_does_not_match_the_text_fails_at_fit_start(tmp_path, model_dir, data_file):
    path = tmp_path / "other.conllu"
    path.write_text("1\tHello\thello\tINTJ\t_\t_\t0\t_\t_\t_\n\n", encoding="utf-8")
    monitor = _monitor(conllu_file=str(path))
    assert monitor.label_sets[-1] == "upos"
    with pytest.raises(ValueError, match="conllu_file .* none of its 1 sentences match"):
        _fit(tmp_path, model_dir, data_file, monitor)


def test_existing_concept_files_are_not_overwritten(tmp_path, model_dir, data_file):
    out = tmp_path / "run" / "version_0" / "concepts"
    out.mkdir(parents=True)
    (out / "concepts_reference.json").write_text("{}")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _fit(tmp_path, model_dir, data_file, _monitor())
    assert (out / "concepts_reference.json").read_text() == "{}"


def test_datamodule_without_texts_is_refused(tmp_path, model_dir):
    from lightning.pytorch import LightningDataModule, Trainer

    from lightning_topo.models import SequenceClassifier

    class Bare(LightningDataModule):
        pass

    trainer = Trainer(max_epochs=1, logger=False, callbacks=[_monitor()], enable_progress_bar=False)
    with pytest.raises(ValueError, match="split_texts"):
        trainer.fit(SequenceClassifier(model_name_or_path=str(model_dir), num_labels=2), datamodule=Bare())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every_n_epochs": 0}, ValueError, "every_n_epochs"),
        ({"layers": "top"}, ValueError, "layers"),
        ({"layers": []}, ValueError, "layers"),
        ({"max_tokens": 1}, ValueError, "max_tokens"),
        ({"n_concepts": 300}, ValueError, "n_concepts"),
        ({"theta": 0}, ValueError, "theta"),
        ({"label_sets": ["sentiment"]}, ValueError, "label_sets"),
        ({"label_sets": ["upos"]}, ValueError, "conllu_file"),
        ({"conllu_file": "missing.conllu"}, FileNotFoundError, "conllu_file"),
        ({"theta": 1.5}, ValueError, "theta"),
        ({"max_tokens": 2.5}, TypeError, "max_tokens"),
        ({"seed": None}, TypeError, "seed"),
        ({"triggers": "yes"}, TypeError, "triggers"),
        ({"monitor_against": ""}, ValueError, "monitor_against"),
        ({"split": "validation"}, ValueError, "split"),
        ({"log_prefix": "/"}, ValueError, "log_prefix"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _monitor(**kwargs)


def test_state_dict_roundtrip():
    a = _monitor()
    a.reference = {0: torch.tensor([0, 1, 1])}
    a.history = [
        {"epoch": -1, "global_step": 0, "layers": {0: {"matched": None, "polar": 0.5, "aligned": {}}}}
    ]
    b = _monitor()
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.reference[0], a.reference[0]) and b.history == a.history
    assert a.state_key == b.state_key and a.state_key != _monitor(layers=[1]).state_key


class _RecordConcepts(Callback):
    """Writes every rank's logged ``concepts/*`` values after each validation to JSON."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("concepts/")}
        path = Path(self.out_dir) / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.json"
        path.write_text(json.dumps(values))


@pytest.mark.slow
def test_ddp_two_processes_log_what_one_process_logs(tmp_path, model_dir, data_file):
    torch.distributed.is_available() or pytest.skip("torch.distributed not available")
    from lightning.pytorch import Trainer

    from lightning_topo.models import SequenceClassifier, TextClassificationDataModule

    results = {}
    for devices in (1, 2):
        out = tmp_path / f"d{devices}"
        out.mkdir()
        dm = TextClassificationDataModule(
            data_file=str(data_file), text_column="sentence", label_column="target",
            tokenizer_name_or_path=str(model_dir), max_length=16, batch_size=16, val_fraction=0.25,
        )  # fmt: skip
        model = SequenceClassifier(model_name_or_path=str(model_dir), num_labels=2, learning_rate=1e-12)
        trainer = Trainer(
            max_epochs=1, accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices == 2 else "auto",
            logger=False, enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0,
            default_root_dir=tmp_path / f"root{devices}",
            callbacks=[_monitor(triggers=False, plots=False), _RecordConcepts(str(out))],
        )  # fmt: skip
        trainer.fit(model, datamodule=dm)
        results[devices] = [json.loads(p.read_text()) for p in sorted(out.glob("rank*_epoch0.json"))]
    (one,), (rank0, rank1) = results[1], results[2]
    assert len(one) == 3 * 9 and rank0 == rank1  # every rank logs the same values
    assert one.keys() == rank0.keys()
    for name, value in one.items():
        assert rank0[name] == pytest.approx(value, abs=1e-6), name


def test_hooks_are_marked_override():
    from lightning.pytorch.callbacks import Callback

    from lightning_topo.callbacks.concept_monitor import ConceptAlignmentMonitor

    names = [
        n
        for n in dir(ConceptAlignmentMonitor)
        if n.startswith("on_") and getattr(ConceptAlignmentMonitor, n) is not getattr(Callback, n, None)
    ]
    names += ["state_dict", "load_state_dict"]
    assert "on_train_start" in names and "on_validation_batch_end" in names
    for name in names:
        assert getattr(getattr(ConceptAlignmentMonitor, name), "__override__", False), name
    assert getattr(ConceptAlignmentMonitor.state_key.fget, "__override__", False)


def test_mid_epoch_validations_get_their_own_records_and_log_prefix(tmp_path, model_dir, data_file):
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    from lightning_topo.models import SequenceClassifier, TextClassificationDataModule

    dm = TextClassificationDataModule(
        data_file=str(data_file), text_column="sentence", label_column="target",
        tokenizer_name_or_path=str(model_dir), max_length=16, batch_size=16, val_fraction=0.25,
    )  # fmt: skip
    monitor = _monitor(triggers=False, log_prefix="lens")
    trainer = Trainer(
        max_epochs=1, limit_train_batches=4, val_check_interval=0.5, accelerator="cpu",
        logger=CSVLogger(tmp_path, name="run", version=0), callbacks=[monitor], enable_progress_bar=False,
        enable_checkpointing=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(SequenceClassifier(model_name_or_path=str(model_dir), num_labels=2), datamodule=dm)
    assert [(r["epoch"], r["step"]) for r in monitor.history] == [(0, 2), (0, 4)]
    assert "lens/polar/layer_2" in trainer.callback_metrics and not any(
        k.startswith("concepts/") for k in trainer.callback_metrics
    )
    out = tmp_path / "run" / "version_0" / "lens"
    assert (out / "concepts_epoch0_step2.json").exists() and (out / "concepts_epoch0_step4.json").exists()
    assert (out / "concepts_polar.png").exists()


class _BreakWeights(Callback):
    """Puts NaN into the embeddings' LayerNorm after the first training batch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with torch.no_grad():
            pl_module.model.bert.embeddings.LayerNorm.weight.fill_(float("nan"))


def test_nan_hidden_states_log_nan_for_every_name(tmp_path, model_dir, data_file):
    import math

    from lightning.pytorch import Trainer

    from lightning_topo.models import SequenceClassifier, TextClassificationDataModule
    from lightning_topo.scores.concepts import concept_metric_names

    dm = TextClassificationDataModule(
        data_file=str(data_file), text_column="sentence", label_column="target",
        tokenizer_name_or_path=str(model_dir), max_length=16, batch_size=16, val_fraction=0.25,
    )  # fmt: skip
    monitor = _monitor(plots=False)
    trainer = Trainer(
        max_epochs=1, limit_train_batches=1, accelerator="cpu", logger=False, enable_progress_bar=False,
        callbacks=[monitor, _BreakWeights()], enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="logs NaN"):
        trainer.fit(SequenceClassifier(model_name_or_path=str(model_dir), num_labels=2), datamodule=dm)
    names = {f"concepts/{n}" for n in concept_metric_names([0, 1, 2], monitor.label_sets)}
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("concepts/")}
    assert names <= set(logged) and all(math.isnan(logged[n]) for n in names)
    assert monitor.history[-1]["scores"].keys() == names


def test_wandb_offline_run_holds_scalars_images_and_table(tmp_path, model_dir, data_file, monkeypatch):

    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(save_dir=str(tmp_path), project="lightning-topo-test", offline=True)
    monitor = _monitor()
    try:
        _fit(tmp_path, model_dir, data_file, monitor, max_epochs=1, logger=logger)
        run_dir = Path(logger.experiment.dir).parent
    finally:
        import wandb

        wandb.finish()
    keys = (
        "concepts/polar/layer_2",
        "concepts/matched/layer_0",
        "concepts/trigger_drop",
        "concepts/random_drop",
    )
    from conftest import wandb_scalars_missing

    missing = wandb_scalars_missing(run_dir, keys)
    assert not missing, f"scalars missing from the offline run file: {missing}"
    images = sorted(p.name for p in (run_dir / "files" / "media" / "images").rglob("*.png"))
    assert any("concepts_polar" in n for n in images) and any("concepts_matched" in n for n in images), images
    table = json.loads(next((run_dir / "files" / "media" / "table").rglob("*.table.json")).read_text())
    col = table["columns"].index("concepts/polar/layer_2")
    assert [row[col] for row in table["data"]] == pytest.approx(
        [r["scores"]["concepts/polar/layer_2"] for r in monitor.history]
    )
