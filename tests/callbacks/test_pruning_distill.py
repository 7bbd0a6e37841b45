"""TopologicalPruning(distill=True) on a tiny BERT inside SequenceClassifier: the recovery loss is
distillation_loss against a frozen copy of the unpruned model, the teacher never changes and is
dropped at fit end, validation keeps plain cross-entropy, alpha=0 is plain recovery, bad settings
and a resume after pruning are refused."""

from __future__ import annotations

import copy
import csv

import pytest
import torch
import torch.nn.functional as F

pl = pytest.importorskip("lightning.pytorch")

from conftest import batch_loader as _loader  # noqa: E402
from conftest import random_token_batches as _batches  # noqa: E402
from conftest import sequence_classifier as _module  # noqa: E402

from lightning_topo.callbacks import TopologicalPruning  # noqa: E402
from lightning_topo.pruning.distill import distillation_loss  # noqa: E402

PRUNE_EPOCH = 1


@pytest.fixture
def tiny_dir(tmp_path):
    """A tiny random BERT (no dropout, so forwards repeat exactly) with logits of order 1: with
    the default initialisation they are ~0.01 and any teacher's soft targets look alike."""
    from conftest import tiny_bert_config
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(initializer_range=0.2))
    with torch.no_grad():
        model.classifier.weight.mul_(5.0)
    path = tmp_path / "tiny"
    model.save_pretrained(path)
    return path


def _trainer(tmp_path, callbacks, max_epochs, **kwargs):
    kwargs = {
        "max_epochs": max_epochs,
        "accelerator": "cpu",
        "devices": 1,
        "callbacks": callbacks,
        "default_root_dir": tmp_path,
        "logger": pl.loggers.CSVLogger(tmp_path, name="logs"),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **kwargs,
    }
    return pl.Trainer(**kwargs)


def _pruning(tmp_path, **kwargs):
    kwargs = {"ratio": 0.5, "prune_epoch": PRUNE_EPOCH, "calibration_batches": 2, "save": False, **kwargs}
    return TopologicalPruning(**kwargs)


class _Referee(pl.Callback):
    """Recomputes the optimised loss from its own frozen copy of the model taken just before pruning,
    checks the callback's teacher against that copy, and the validation loss against plain CE."""

    def __init__(self, pruning):
        self.pruning = pruning
        self.reference = None
        self.batch = None
        self.checked = 0
        self.teacher_checks = 0
        self.val = []  # (epoch, sum of CE * n, n) per validation batch during recovery

    def on_train_epoch_start(self, trainer, pl_module):  # runs before the pruning callback's hook
        if trainer.current_epoch == PRUNE_EPOCH:
            assert self.pruning.teacher is None
            self.reference = copy.deepcopy(pl_module.model).eval()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch = batch

    def on_before_backward(self, trainer, pl_module, loss):
        if trainer.current_epoch < PRUNE_EPOCH:
            assert self.pruning.teacher is None
            return
        inputs = {k: self.batch[k] for k in ("input_ids", "attention_mask")}
        labels = self.batch["labels"]
        with torch.no_grad():
            student = pl_module.model(**inputs).logits
            teacher = self.reference(**inputs).logits
        cfg = {"temperature": self.pruning.temperature, "alpha": self.pruning.alpha}
        expected = distillation_loss(student, teacher, labels, **cfg)
        torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
        # the check can fail: neither the pruned student as teacher nor plain CE gives this value
        assert not torch.isclose(loss.detach(), distillation_loss(student, student, labels, **cfg), rtol=1e-3)
        assert not torch.isclose(loss.detach(), F.cross_entropy(student, labels), rtol=1e-3)
        self.checked += 1

    def on_train_epoch_end(self, trainer, pl_module):
        teacher = self.pruning.teacher
        if trainer.current_epoch < PRUNE_EPOCH:
            return
        assert teacher is not None and not teacher.training
        assert all(not p.requires_grad for p in teacher.parameters())
        ref = self.reference.state_dict()
        state = teacher.state_dict()
        assert state.keys() == ref.keys()
        assert all(torch.equal(state[k], ref[k]) for k in ref)
        assert all(p.data_ptr() != q.data_ptr() for p in teacher.parameters() for q in pl_module.parameters())
        self.teacher_checks += 1

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.pruning.teacher is None:
            return
        with torch.no_grad():
            logits = pl_module.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        ce = F.cross_entropy(logits, batch["labels"])
        self.val.append((trainer.current_epoch, float(ce) * len(logits), len(logits)))


def _logged(trainer, key):
    path = f"{trainer.logger.log_dir}/metrics.csv"
    with open(path, newline="") as f:
        return [(int(r["epoch"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


@pytest.mark.parametrize("steps", [1, 2])  # with 2 steps the teacher stays the model before the first
def test_recovery_loss_is_distillation_from_a_frozen_unpruned_copy(tiny_dir, tmp_path, steps):
    module = _module(tiny_dir)
    cb = _pruning(tmp_path, distill=True, temperature=3.0, alpha=0.7, steps=steps)
    referee = _Referee(cb)
    trainer = _trainer(tmp_path, [referee, cb], max_epochs=3)
    trainer.fit(module, train_dataloaders=_loader(_batches()), val_dataloaders=_loader(_batches(2, seed=1)))
    assert referee.checked == 2 * 4 and referee.teacher_checks == 2
    assert len(cb.history) == steps and cb.history[-1]["ratio"] <= 0.5
    assert trainer.callback_metrics["prune/distill_kl"] > 0
    assert "prune/distill_loss_epoch" in trainer.callback_metrics
    # dropped at fit end; the module optimises plain cross-entropy again
    assert cb.teacher is None
    batch = _batches(1, seed=3)[0]
    assert module._base_loss(module(batch), batch["labels"], batch) == F.cross_entropy(
        module(batch), batch["labels"]
    )
    # validation during recovery logged plain cross-entropy of the student, not the distillation loss
    val = dict(_logged(trainer, "val/loss"))
    for epoch in (1, 2):
        rows = [(s, n) for e, s, n in referee.val if e == epoch]
        assert rows
        expected = sum(s for s, _ in rows) / sum(n for _, n in rows)
        assert val[epoch] == pytest.approx(expected, rel=1e-5)


def test_teacher_and_pruned_student_keep_the_models_dtype(tiny_dir, tmp_path):
    seen = []

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            teacher = cb.teacher
            seen.append((next(teacher.parameters()).dtype, {p.dtype for p in pl_module.model.parameters()}))

    cb = _pruning(tmp_path, distill=True, prune_epoch=0)
    trainer = _trainer(tmp_path, [cb, Spy()], max_epochs=1, precision="bf16-true", logger=False)
    trainer.fit(_module(tiny_dir), train_dataloaders=_loader(_batches()))
    assert seen and set(map(str, seen)) == {str((torch.bfloat16, {torch.bfloat16}))}


def test_teacher_is_not_in_checkpoints(tiny_dir, tmp_path):
    module = _module(tiny_dir)
    cb = _pruning(tmp_path, distill=True)
    trainer = _trainer(tmp_path, [cb], max_epochs=2)
    trainer.fit(module, train_dataloaders=_loader(_batches()))
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, map_location="cpu", weights_only=True)
    assert set(ckpt["state_dict"]) == set(module.state_dict())
    state = ckpt["callbacks"][cb.state_key]
    assert state["distill"] == {"temperature": 2.0, "alpha": 0.5}
    assert not any(isinstance(v, torch.Tensor) for v in state.values())


def _fit_weights(tiny_dir, tmp_path, **kwargs):
    pl.seed_everything(0, verbose=False)
    module = _module(tiny_dir)
    cb = _pruning(tmp_path, **kwargs)
    trainer = _trainer(tmp_path, [cb], max_epochs=3, logger=False, enable_checkpointing=False)
    trainer.fit(module, train_dataloaders=_loader(_batches()))
    return module.model.state_dict()


def test_alpha_zero_is_exactly_plain_recovery(tiny_dir, tmp_path):
    plain = _fit_weights(tiny_dir, tmp_path / "plain")
    zero = _fit_weights(tiny_dir, tmp_path / "zero", distill=True, alpha=0.0)
    half = _fit_weights(tiny_dir, tmp_path / "half", distill=True, alpha=0.5)
    assert plain.keys() == zero.keys() == half.keys()
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    assert not all(torch.equal(plain[k], half[k]) for k in plain)  # the soft term does change training


def test_resume_after_pruning_with_distill_is_refused(tiny_dir, tmp_path):
    module = _module(tiny_dir)
    trainer = _trainer(tmp_path, [_pruning(tmp_path, distill=True)], max_epochs=2)
    trainer.fit(module, train_dataloaders=_loader(_batches()))
    ckpt = trainer.checkpoint_callback.best_model_path
    module2 = _module(tiny_dir)
    cb2 = _pruning(tmp_path, distill=True)
    trainer2 = _trainer(tmp_path / "resume", [cb2], max_epochs=3)
    with pytest.raises(ValueError, match="cannot continue a recovery .* Resume with distill=False"):
        trainer2.fit(module2, train_dataloaders=_loader(_batches()), ckpt_path=ckpt)
    assert trainer2.global_step == 8  # restored, nothing more trained
    assert cb2.teacher is None
    # plain recovery resumes from the same checkpoint
    cb3 = _pruning(tmp_path, distill=False)
    trainer3 = _trainer(tmp_path / "resume3", [cb3], max_epochs=3)
    trainer3.fit(_module(tiny_dir), train_dataloaders=_loader(_batches()), ckpt_path=ckpt)
    assert trainer3.global_step == 12


def test_second_fit_with_the_same_callback_is_refused(tiny_dir, tmp_path):
    module = _module(tiny_dir)
    cb = _pruning(tmp_path, distill=True, prune_epoch=0)
    _trainer(tmp_path, [cb], max_epochs=1).fit(module, train_dataloaders=_loader(_batches()))
    with pytest.raises(ValueError, match="teacher is the unpruned model"):
        _trainer(tmp_path, [cb], max_epochs=1).fit(module, train_dataloaders=_loader(_batches()))


def test_module_without_set_training_loss_refused_at_setup(tiny_classifier, tmp_path):
    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = tiny_classifier

        def training_step(self, batch, batch_idx):
            return self.model(**batch).loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Plain()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = _trainer(tmp_path, [_pruning(tmp_path, distill=True)], max_epochs=1)
    with pytest.raises(TypeError, match="set_training_loss"):
        trainer.fit(module, train_dataloaders=_loader(_batches()))
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"distill": "yes"}, "distill must be True or False"),
        ({"distill": 1}, "distill must be True or False"),
        ({"distill": True, "prune_epoch": None}, "distill=True needs recovery epochs"),
        ({"distill": True, "temperature": 0}, "temperature must be > 0"),
        ({"distill": True, "temperature": float("nan")}, "temperature must be a finite number"),
        ({"distill": True, "alpha": 1.5}, r"alpha .* must be in \[0, 1\]"),
        ({"alpha": -0.1}, r"alpha .* must be in \[0, 1\]"),  # checked with distill=False too
        ({"temperature": "2"}, "temperature must be a finite number"),
    ],
)
def test_bad_distill_arguments_refused_at_construction(kwargs, match):
    """TypeError for a wrong type (a str or int where a bool or number is needed), else ValueError."""
    wrong_type = not isinstance(kwargs.get("distill", False), bool) or isinstance(kwargs.get("temperature"), str)
    with pytest.raises(TypeError if wrong_type else ValueError, match=match):
        TopologicalPruning(**kwargs)


def test_distill_settings_stored_and_unused_without_distill():
    cb = TopologicalPruning(temperature=4.0, alpha=0.25)
    assert (cb.distill, cb.temperature, cb.alpha) == (False, 4.0, 0.25)
    assert cb.state_dict()["distill"] is None
    cb = TopologicalPruning(distill=True, temperature=4, alpha=1)
    assert cb.state_dict()["distill"] == {"temperature": 4.0, "alpha": 1.0}
