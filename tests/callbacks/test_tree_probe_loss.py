"""TreeProbeRegularization: pre-trained init, the label filter, layer='auto', argument checks."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_topo.callbacks.tree_probe_loss import (
    TreeProbeRegularization,
    collect_word_vectors,
    layer_probe_metrics,
    pick_layer,
)
from lightning_topo.encoding import EncodedBatch
from lightning_topo.scores.tree_probe import TreeProbeLoss, probe_loss, probe_targets, vocab_tables

WORDS = ["the", "cat", "sat", "on", "mat", "good", "bad", "film", "play", "dogs", "that", "bark", "rarely",
         "bite", "strangers", "i", "do", "know", "n't", ".", "great", "awful", "movie", "was"]  # fmt: skip
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ing", "##ly"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A random 3-layer BERT classifier (no dropout) and a WordPiece tokenizer with ``##`` pieces."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    path = tmp_path_factory.mktemp("tiny_tree_loss_bert")
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
    path = tmp_path_factory.mktemp("tree_loss_data") / "toy.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(96):
            y = i % 2
            words = rng.sample(WORDS[:15], rng.randint(2, 7)) + [("great" if y else "awful")]
            rng.shuffle(words)
            writer.writerow([" ".join(words).replace("bark", "barking"), y])
    return path


class FirstStepProbeLoss(Callback):
    """Records the unweighted probe loss of the first training step."""

    def __init__(self) -> None:
        self.value: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.value is None:
            self.value = float(trainer.callback_metrics["train/aux/tree_probe_step"])


class RngAtTrainStart(Callback):
    def __init__(self) -> None:
        self.states: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module):
        self.states.append(torch.get_rng_state())


def _datamodule(tiny_dir, toy_csv, batch_size=16):
    from lightning_topo.models import TextClassificationDataModule

    return TextClassificationDataModule(
        train_file=str(toy_csv), val_file=str(toy_csv), tokenizer_name_or_path=str(tiny_dir),
        max_length=16, batch_size=batch_size, eval_batch_size=32,
    )  # fmt: skip


def _fit(tiny_dir, toy_csv, tmp_path, callbacks, seed=0, ckpt_path=None, **trainer_kwargs):
    from lightning_topo.models import SequenceClassifier

    pl.seed_everything(seed)
    dm = _datamodule(tiny_dir, toy_csv)
    model = SequenceClassifier(str(tiny_dir), num_labels=2, learning_rate=1e-3)
    args = dict(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                default_root_dir=tmp_path, log_every_n_steps=1)  # fmt: skip
    args.update(trainer_kwargs)
    trainer = pl.Trainer(callbacks=callbacks, **args)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, model


def _small(**kwargs):
    args = dict(layer=2, weight=10.0, pretrain_sentences=64, pretrain_epochs=5, pretrain_lr=1e-2, seed=0)
    args.update(kwargs)
    return TreeProbeRegularization(**args)


# ------------------------------------------------------------------------------ pre-trained init
@pytest.mark.slow
def test_pretrained_init_lowers_the_probe_loss_at_step_0(tiny_dir, toy_csv, tmp_path):
    values = {}
    for init in ("random", "pretrained"):
        first, reg = FirstStepProbeLoss(), _small(init=init)
        _fit(tiny_dir, toy_csv, tmp_path, [reg, first], max_steps=1)
        values[init] = first.value
        if init == "pretrained":
            assert reg.preparation["layer"] == 2
            assert reg.preparation["sentences"] == 64
            assert set(reg.preparation["layer_metrics"]) == {2}
        else:
            assert reg.preparation is None  # nothing to prepare: random probe, given layer
    assert values["pretrained"] < 0.5 * values["random"], values


@pytest.mark.slow
def test_preparation_draws_no_random_numbers_the_training_would_see(tiny_dir, toy_csv, tmp_path):
    before, after = RngAtTrainStart(), RngAtTrainStart()
    _fit(tiny_dir, toy_csv, tmp_path, [before, _small(layer="auto"), after], max_steps=1)
    assert torch.equal(before.states[0], after.states[0])


@pytest.mark.slow
def test_resumed_run_keeps_its_trained_probe_and_layer(tiny_dir, toy_csv, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    reg = _small(layer="auto")
    _, model = _fit(tiny_dir, toy_csv, tmp_path, [reg, ckpt], enable_checkpointing=True)
    saved = model.auxiliary_modules["tree_probe"].probe.proj.detach().clone()

    class ProbeAtTrainStart(Callback):
        def on_train_start(self, trainer, pl_module):
            self.proj = pl_module.auxiliary_modules["tree_probe"].probe.proj.detach().clone()
            self.layer = pl_module.auxiliary_modules["tree_probe"].layer

    resumed, seen = _small(layer="auto"), ProbeAtTrainStart()
    _fit(
        tiny_dir,
        toy_csv,
        tmp_path,
        [resumed, seen],
        max_epochs=2,
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
    )
    assert torch.equal(seen.proj, saved)  # not pre-trained again over the checkpoint's probe
    assert seen.layer == reg.preparation["layer"] == resumed.preparation["layer"]


# ------------------------------------------------------------------------------ label filter
def _encoded_batch(tiny_dir, texts, labels):
    from transformers import AutoTokenizer

    from lightning_topo.models import SequenceClassifier

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    batch = dict(tok(texts, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor(labels)
    model = SequenceClassifier(str(tiny_dir), num_labels=2)
    return tok, model, batch


def test_label_filter_drops_the_other_classes_sentences_from_the_loss(tiny_dir):
    texts = [
        "the cat sat on the mat",
        "dogs that barking rarely bite strangers",
        "good film was great",
        "bad movie",
    ]
    tok, model, batch = _encoded_batch(tiny_dir, texts, [0, 1, 1, 0])
    continuation, special = vocab_tables(tok)
    tables = dict(continuation=continuation, special=special)
    filtered = TreeProbeLoss(32, layer=2, contributing_labels=[1], **tables)
    full = TreeProbeLoss(32, layer=2, **tables)  # same seed: same probe
    encoded = model.encode(batch)
    value = filtered(encoded, batch)
    # equals the unfiltered loss of the label-1 sentences alone
    keep = [1, 2]
    sub_batch = {k: v[keep] for k, v in batch.items()}
    sub = EncodedBatch(tuple(h[keep] for h in encoded.hidden_states), encoded.attention_mask[keep])
    assert torch.allclose(value, full(sub, sub_batch))
    assert not torch.allclose(value, full(encoded, batch))  # the label-0 sentences did count there
    # the label-0 sentences get no gradient through the term
    hidden = encoded.hidden_states[2].detach().requires_grad_(True)
    states = tuple(hidden if i == 2 else h for i, h in enumerate(encoded.hidden_states))
    filtered(EncodedBatch(states, encoded.attention_mask), batch).backward()
    assert hidden.grad[[0, 3]].abs().max() == 0
    assert hidden.grad[[1, 2]].abs().max() > 0
    # a batch without a contributing sentence gives 0
    zero_batch = dict(batch, labels=torch.zeros(4, dtype=torch.long))
    assert float(filtered(encoded, zero_batch)) == 0.0
    with pytest.raises(ValueError, match="needs the batch's class labels"):
        filtered(encoded, {k: v for k, v in batch.items() if k != "labels"})


def test_pretraining_sample_keeps_only_the_contributing_labels(tiny_dir):
    texts = ["the cat sat", "dogs that barking bite", "good film", "bad movie was awful", "cat", "i do know"]
    tok, model, batch = _encoded_batch(tiny_dir, texts, [0, 1, 1, 0, 1, 1])
    continuation, special = vocab_tables(tok)
    vectors, read = collect_word_vectors(model.encode, [batch], [1, 2], 10, continuation, special, [1])
    words, mask = vectors[2]
    # label 1 and >= 2 words: "dogs that barking bite" (4), "good film" (2), "i do know" (3); "cat" is 1 word
    assert read == 1 and mask.sum(1).tolist() == [4, 2, 3]
    encoded = model.encode(batch)
    from lightning_topo.scores.tree_probe import pool_wordpieces, wordpiece_word_ids

    ids = wordpiece_word_ids(batch["input_ids"], continuation, special, batch["attention_mask"])
    pooled, _ = pool_wordpieces(encoded.hidden_states[2].detach(), ids)
    assert torch.allclose(words[0, :4], pooled[1, :4], atol=1e-6)
    capped, _ = collect_word_vectors(model.encode, [batch], [2], 2, continuation, special, None)
    assert capped[2][1].sum(1).tolist() == [3, 4]  # the first 2 usable sentences, in order


# ------------------------------------------------------------------------------ layer="auto"
def test_pick_layer():
    metrics = {1: 0.2, 2: 0.5, 3: 0.1}
    assert pick_layer(metrics, "weakest") == 2
    assert pick_layer(metrics, "strongest") == 3
    assert pick_layer({1: 0.3, 2: 0.3}, "weakest") == 1  # ties: the lower layer
    with pytest.raises(ValueError, match="not finite at layer"):
        pick_layer({1: float("nan"), 2: 0.1})
    with pytest.raises(ValueError, match="auto_pick must be one of"):
        pick_layer(metrics, "middle")


@pytest.mark.slow
@pytest.mark.parametrize("pick", ["weakest", "strongest"])
def test_auto_picks_the_layer_the_metric_says(tiny_dir, toy_csv, tmp_path, pick):
    from lightning_topo.models import SequenceClassifier

    reg = _small(layer="auto", auto_pick=pick, init="random")
    _, model = _fit(tiny_dir, toy_csv, tmp_path, [reg], max_steps=1)
    metrics = reg.preparation["layer_metrics"]
    assert set(metrics) == {1, 2, 3}
    expected = (max if pick == "weakest" else min)(metrics, key=metrics.get)
    assert reg.preparation["layer"] == expected == model.auxiliary_modules["tree_probe"].layer
    # the metric is the starting model's: recomputed on a fresh copy of it, same sentences and budget
    dm = _datamodule(tiny_dir, toy_csv)
    dm.setup("fit")
    start = SequenceClassifier(str(tiny_dir), num_labels=2).eval()
    loader = torch.utils.data.DataLoader(
        dm._dataset("train"), batch_size=16, collate_fn=dm.train_dataloader().collate_fn
    )
    continuation, special = vocab_tables(dm.tokenizer)
    vectors, _ = collect_word_vectors(start.encode, loader, [1, 2, 3], 64, continuation, special)
    again = {k: r.val_loss for k, r in layer_probe_metrics(vectors, "ssp", reg.budget, seed=0).items()}
    assert again == pytest.approx(metrics, rel=1e-5)


# ------------------------------------------------------------------------------ argument checks
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"init": "warm"}, ValueError, "init must be one of"),
        ({"init": 1}, TypeError, "init must be one of"),
        ({"layer": "top"}, ValueError, "layer must be an int .* or 'auto'"),
        ({"layer": 2.0}, TypeError, "layer must be an int .* or 'auto'"),
        ({"weight": 0}, ValueError, "weight must be"),
        ({"weight": "10"}, TypeError, "weight must be"),
        ({"targets": "sp"}, ValueError, "targets must be"),
        ({"rank": 0}, ValueError, "rank must be"),
        ({"contributing_labels": 1}, TypeError, "contributing_labels must be a list of class ids"),
        ({"contributing_labels": "1"}, TypeError, "contributing_labels must be a list of class ids"),
        ({"contributing_labels": []}, ValueError, "contributing_labels must name at least one"),
        ({"contributing_labels": [-1]}, ValueError, r"contributing_labels\[0\] must be an int >= 0"),
        ({"contributing_labels": [1.0]}, TypeError, r"contributing_labels\[0\] must be an int"),
        ({"pretrain_sentences": 4}, ValueError, "pretrain_sentences must be an int >= 8"),
        ({"pretrain_sentences": 100.0}, TypeError, "pretrain_sentences must be an int"),
        ({"pretrain_epochs": 0}, ValueError, "pretrain_epochs must be"),
        ({"pretrain_lr": 0.0}, ValueError, "pretrain_lr must be"),
        ({"pretrain_val_fraction": 1.0}, ValueError, "pretrain_val_fraction must be in"),
        ({"auto_pick": "middle"}, ValueError, "auto_pick must be one of"),
        ({"auto_pick": None}, TypeError, "auto_pick must be one of"),
        ({"layer": "auto", "auto_layers": []}, ValueError, "auto_layers must name at least one"),
        ({"layer": 3, "auto_layers": [1, 2]}, ValueError, "auto_layers is only used with layer='auto'"),
        ({"progress_bar": "yes"}, TypeError, "progress_bar must be True or False"),
        ({"name": ""}, ValueError, "name must be"),
        ({"seed": None}, TypeError, "seed"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        TreeProbeRegularization(**kwargs)


class _Forbidden(Callback):
    def on_train_batch_start(self, *args):  # pragma: no cover - must not be reached
        raise AssertionError("training started")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layer": 4}, "layer 4 is out of range"),
        ({"layer": "auto", "auto_layers": [1, 5]}, r"auto_layers \[5\] out of range"),
        ({"contributing_labels": [1, 2]}, r"contributing_labels \[2\] are not classes of the model"),
    ],
)
def test_setup_refuses_what_does_not_fit_the_model_before_training(
    tiny_dir, toy_csv, tmp_path, kwargs, match
):
    with pytest.raises(ValueError, match=match):
        _fit(tiny_dir, toy_csv, tmp_path, [TreeProbeRegularization(**kwargs), _Forbidden()])


def test_setup_refuses_a_module_without_register_auxiliary_loss(tiny_dir, toy_csv, tmp_path):
    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)

        def training_step(self, batch, batch_idx):  # pragma: no cover
            return None

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(callbacks=[TreeProbeRegularization()], logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, max_epochs=1, default_root_dir=tmp_path)  # fmt: skip
    with pytest.raises(TypeError, match="needs a LightningModule with register_auxiliary_loss"):
        trainer.fit(Plain(), datamodule=_datamodule(tiny_dir, toy_csv))


def test_too_few_contributing_sentences_is_refused_before_the_first_step(tiny_dir, tmp_path):
    path = tmp_path / "one_word_positives.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(32):  # label 1: one word (no tree); label 0: sentences
            writer.writerow(["great" if i % 2 else "the cat sat on the mat", i % 2])
    with pytest.raises(ValueError, match=r"only 0 training sentences with labels \[1\] of at least 2 words"):
        _fit(tiny_dir, path, tmp_path, [_small(contributing_labels=[1]), _Forbidden()])


def test_probe_from_the_pretraining_matches_the_targets(tiny_dir):
    """The probe loss the callback trains is the one fit_probe minimises (masked MSE on ssp labels)."""
    tok, model, batch = _encoded_batch(
        tiny_dir, ["the cat sat on the mat", "dogs that barking rarely bite"], [1, 1]
    )
    continuation, special = vocab_tables(tok)
    loss = TreeProbeLoss(32, layer=1, continuation=continuation, special=special)
    encoded = model.encode(batch)
    vectors, _ = collect_word_vectors(model.encode, [batch], [1], 10, continuation, special)
    words, mask = vectors[1]
    pred = loss.probe(words, mask)
    direct = probe_loss(pred, probe_targets(pred, "ssp", mask), mask)
    assert torch.allclose(loss(encoded, batch), direct, atol=1e-6)
