"""SequenceClassifier: encode, the auxiliary-loss hook, optimizers, checkpoints."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_topo.encoding import EncodedBatch, encode_batch
from lightning_topo.models import SequenceClassifier, TextClassificationDataModule


@pytest.fixture
def model(tiny_model_dir) -> SequenceClassifier:
    torch.manual_seed(0)
    return SequenceClassifier(
        str(tiny_model_dir), num_labels=2, id2label={0: "neg", 1: "pos"}, learning_rate=1e-3
    )


@pytest.fixture
def dm(tiny_model_dir, toy_csv) -> TextClassificationDataModule:
    return TextClassificationDataModule(
        data_file=str(toy_csv),
        text_column="sentence",
        label_column="target",
        tokenizer_name_or_path=str(tiny_model_dir),
        batch_size=16,
        max_length=16,
    )


def test_model_attribute_and_encode(model, tiny_batch):
    assert type(model.model).__name__ == "BertForSequenceClassification"
    assert model.model.training  # from_pretrained gives eval mode; we switch to train
    assert model.model.config.id2label == {0: "neg", 1: "pos"}
    enc = model.encode(tiny_batch)
    assert isinstance(enc, EncodedBatch)
    assert enc.num_layers == 2 and enc.hidden_states[-1].shape == (6, 10, 32)
    assert enc.logits.shape == (6, 2) and torch.equal(enc.labels, tiny_batch["labels"])
    assert encode_batch(model, tiny_batch).logits.shape == (6, 2)  # the shared entry point uses encode
    model.eval()
    assert torch.allclose(model(tiny_batch), model.encode(tiny_batch).logits)


def test_bad_arguments(tiny_model_dir):
    with pytest.raises(ValueError, match="num_labels must be >= 2"):
        SequenceClassifier(str(tiny_model_dir), num_labels=1)
    with pytest.raises(ValueError, match="id2label has 1 entries"):
        SequenceClassifier(str(tiny_model_dir), num_labels=2, id2label={0: "a"})


def test_auxiliary_loss_is_added_and_logged(model, tiny_batch):
    logged: dict[str, float] = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, float(value.detach()))  # type: ignore[method-assign]
    seen: list[EncodedBatch] = []

    def mean_norm(enc: EncodedBatch, batch) -> torch.Tensor:
        seen.append(enc)
        return enc.hidden_states[1].norm(dim=-1).mean()

    base = model.training_step(tiny_batch, 0)
    model.register_auxiliary_loss("norm", mean_norm, weight=0.5)
    assert model.auxiliary_losses == {"norm": 0.5}
    total = model.training_step(tiny_batch, 0)
    aux = logged["train/aux/norm"]
    assert aux > 0 and len(seen) == 1 and len(seen[0].hidden_states) == 3
    assert float(total) == pytest.approx(float(base) + 0.5 * aux, rel=1e-5)
    assert logged["train/ce"] == pytest.approx(float(base), rel=1e-5)
    total.backward()
    assert model.model.bert.encoder.layer[0].output.dense.weight.grad is not None
    with pytest.raises(ValueError, match="already registered"):
        model.register_auxiliary_loss("norm", mean_norm)
    model.remove_auxiliary_loss("norm")
    with pytest.raises(KeyError):
        model.remove_auxiliary_loss("norm")
    model.register_auxiliary_loss("bad", lambda enc, batch: torch.ones(3))
    with pytest.raises(TypeError, match="scalar"):
        model.training_step(tiny_batch, 0)


def test_auxiliary_module_is_trained(model, dm, tmp_path):
    probe = nn.Linear(32, 1)
    before = probe.weight.detach().clone()
    model.register_auxiliary_loss(
        "probe", lambda enc, batch: probe(enc.hidden_states[1]).pow(2).mean(), weight=1.0
    )
    model.auxiliary_modules["probe"] = probe  # fn is a closure here; register the module by hand
    trainer = pl.Trainer(
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, dm)
    assert not torch.equal(probe.weight, before)
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert {id(p) for p in probe.parameters()} <= optimised
    logged = set(trainer.callback_metrics)
    assert {"train/aux/probe_step", "train/aux/probe_epoch", "train/ce_step", "train/loss_step"} <= logged
    total = trainer.callback_metrics["train/loss_step"]
    ce, aux = trainer.callback_metrics["train/ce_step"], trainer.callback_metrics["train/aux/probe_step"]
    assert float(total) == pytest.approx(float(ce) + float(aux), rel=1e-5)  # weight 1.0


def test_configure_optimizers_rebuilds_from_current_parameters(model, dm, tmp_path):
    """After in-place shrinking, setup_optimizers gives an optimizer over the new parameters."""
    from transformers.pytorch_utils import prune_linear_layer

    class Shrink(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2 and pl_module.model.config.intermediate_size != 32:
                for layer in pl_module.model.bert.encoder.layer:
                    keep = torch.arange(32)
                    layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, keep, dim=0)
                    layer.output.dense = prune_linear_layer(layer.output.dense, keep, dim=1)
                pl_module.model.config.intermediate_size = 32
                trainer.strategy.setup_optimizers(trainer)

    trainer = pl.Trainer(
        max_steps=5,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        default_root_dir=tmp_path,
        callbacks=[Shrink()],
    )
    trainer.fit(model, dm)
    params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert {id(p) for p in model.parameters()} == params
    # the rebuilt schedule continued at step 5 of 5 (max_steps), no new warmup: lr = 0 at the end
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.last_epoch == trainer.global_step == 5
    assert sched.get_last_lr()[0] == pytest.approx(_expected_lr(model, 5, total=5))
    ckpt = tmp_path / "shrunk.ckpt"
    trainer.save_checkpoint(ckpt)
    reloaded = SequenceClassifier.load_from_checkpoint(ckpt)
    assert reloaded.model.bert.encoder.layer[0].intermediate.dense.out_features == 32
    batch = next(iter(dm.val_dataloader()))
    model.eval()
    reloaded.eval()
    torch.testing.assert_close(reloaded(batch), model(batch))


def _expected_lr(model: SequenceClassifier, step: int, total: int) -> float:
    """Linear warmup over warmup_ratio * total steps, then linear decay to 0 (the documented schedule)."""
    warmup = int(model.hparams.warmup_ratio * total)
    factor = (step + 1) / (warmup + 1) if step < warmup else max(0.0, (total - step) / max(1, total - warmup))
    return model.hparams.learning_rate * factor


class _ShrinkAtEpoch1(pl.Callback):
    """Halves every FFN at the start of epoch 1 and rebuilds the optimizers, as TopologicalPruning does."""

    def on_train_epoch_start(self, trainer, pl_module):
        from transformers.pytorch_utils import prune_linear_layer

        if trainer.current_epoch != 1 or pl_module.model.config.intermediate_size == 32:
            return
        for layer in pl_module.model.bert.encoder.layer:
            keep = torch.arange(32)
            layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, keep, dim=0)
            layer.output.dense = prune_linear_layer(layer.output.dense, keep, dim=1)
        pl_module.model.config.intermediate_size = 32
        trainer.strategy.setup_optimizers(trainer)


class _RecordLR(pl.Callback):
    def __init__(self) -> None:
        self.lr: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lr[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def test_lr_after_resuming_a_pruned_run_matches_the_uninterrupted_run(tiny_model_dir, dm, tmp_path):
    """Resumed after the rebuild epoch, every step sees the lr of the uninterrupted run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def trainer(record: _RecordLR, ckpt_dir=None) -> pl.Trainer:
        callbacks = [_ShrinkAtEpoch1(), record]
        if ckpt_dir is not None:
            callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="{epoch}", save_top_k=-1))
        return pl.Trainer(
            max_epochs=3,
            limit_train_batches=4,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=ckpt_dir is not None,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=tmp_path,
            callbacks=callbacks,
        )

    def new_model() -> SequenceClassifier:
        torch.manual_seed(0)
        return SequenceClassifier(str(tiny_model_dir), num_labels=2, learning_rate=1e-3, warmup_ratio=0.25)

    full = _RecordLR()
    model = new_model()
    trainer(full, tmp_path / "ckpt").fit(model, dm)
    assert sorted(full.lr) == list(range(12))
    for step, lr in full.lr.items():  # one schedule over all 12 steps, across the rebuild at step 4
        assert lr == pytest.approx(_expected_lr(model, step, total=12)), step

    resumed = _RecordLR()
    trainer(resumed, tmp_path / "ckpt_resumed").fit(
        new_model(), dm, ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt"
    )
    assert sorted(resumed.lr) == [8, 9, 10, 11]
    for step, lr in resumed.lr.items():
        assert lr == pytest.approx(full.lr[step]), step


def test_validation_step_returns_its_encoded_batch(model, dm, tmp_path):
    """The PSF monitor reuses this forward: validation_step must hand back the hidden states it computed."""
    from lightning_topo.callbacks import PersistenceScoreMonitor

    class CountingClassifier(SequenceClassifier):
        encode_calls = 0

        def encode(self, batch):
            type(self).encode_calls += 1
            return super().encode(batch)

    counting = CountingClassifier(str(model.hparams.model_name_or_path), num_labels=2)
    monitor = PersistenceScoreMonitor(plots=False, max_points_per_class=8)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[monitor],
    )
    trainer.fit(counting, datamodule=dm)
    val_batches = len(dm.val_dataloader())
    assert CountingClassifier.encode_calls == val_batches  # one encode per validation batch, none extra
    assert "topo/psf" in trainer.callback_metrics


# ----------------------------------------------------------------------------- refused early (issue 12)
def test_bad_argument_types(tiny_model_dir):
    from pathlib import Path

    with pytest.raises(TypeError, match="model_name_or_path must be a local model directory or hub id"):
        SequenceClassifier(3, num_labels=2)
    with pytest.raises(TypeError, match="num_labels must be an int; got float 2.0"):
        SequenceClassifier(str(tiny_model_dir), num_labels=2.0)
    with pytest.raises(TypeError, match="learning_rate must be a finite number; got str"):
        SequenceClassifier(str(tiny_model_dir), learning_rate="1e-3")
    with pytest.raises(TypeError, match="weight_decay must be a finite number; got float nan"):
        SequenceClassifier(str(tiny_model_dir), weight_decay=float("nan"))
    model = SequenceClassifier(Path(tiny_model_dir))  # a Path is fine, and saved as a string
    assert model.hparams.model_name_or_path == str(tiny_model_dir)


def _fit_steps(model, dm, tmp_path, **kwargs) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        **kwargs,
    )
    trainer.fit(model, dm)
    return trainer


def test_tokenizer_larger_than_the_vocabulary_is_refused_before_training(model, toy_csv, tmp_path):
    from transformers import BertTokenizer

    from ._toy import VOCAB

    big = tmp_path / "big_tokenizer"
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB + [f"w{i}" for i in range(200)])}).save_pretrained(
        big
    )
    dm = TextClassificationDataModule(
        data_file=str(toy_csv), text_column="sentence", label_column="target", tokenizer_name_or_path=str(big)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"tokenizer has 229 tokens but the model's embedding has 128 rows"):
        _fit_steps(model, dm, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was trained


def test_out_of_vocabulary_ids_and_too_long_batches_are_refused(model, tmp_path):
    from torch.utils.data import DataLoader

    def loader(ids: torch.Tensor) -> DataLoader:
        rows = [
            {"input_ids": r, "attention_mask": torch.ones_like(r), "labels": torch.tensor(0)} for r in ids
        ]
        return DataLoader(rows, batch_size=2)

    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    before = model.model.classifier.weight.detach().clone()
    with pytest.raises(ValueError, match=r"token id 500 but the model's vocabulary has ids 0..127"):
        trainer.fit(model, train_dataloaders=loader(torch.tensor([[2, 500, 3], [2, 7, 3]])))
    with pytest.raises(
        ValueError, match=r"sequences have 70 tokens but the model accepts at most 64 .its position embeddings.; set data.max_length <= 64"
    ):
        trainer.fit(model, train_dataloaders=loader(torch.full((2, 70), 5)))
    assert torch.equal(model.model.classifier.weight, before)
