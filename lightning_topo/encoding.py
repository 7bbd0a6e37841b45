"""The one place where a model is run to get hidden states.

Every consumer of hidden states (representations, pruning calibration, callbacks, ``analyze``)
goes through :func:`encode_batch`, so the forward pass is written once. It accepts either a
module with an ``encode(batch)`` method (our :class:`~lightning_topo.models.SequenceClassifier`)
or a plain Hugging Face model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "MODEL_INPUT_KEYS",
    "EncodedBatch",
    "encode_batch",
    "encode_hf_model",
    "ensure_hidden_state_capture",
    "max_sequence_length",
    "model_inputs",
    "module_device",
]

#: Model types whose position ids start after the padding index (``padding_idx + 1``), so
#: ``max_position_embeddings`` counts ``pad_token_id + 1`` positions no token can use.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")


def max_sequence_length(config: Any) -> int | None:
    """The longest input (in tokens) a model's absolute position embeddings allow.

    ``config``: a Hugging Face config or its ``to_dict()``. ``max_position_embeddings``, less
    ``pad_token_id + 1`` for RoBERTa-style models (their positions start after the padding
    index). ``None`` when the config names no such limit or the model adds no absolute positions
    (DeBERTa with ``position_biased_input=False``), i.e. when nothing can be checked.
    """
    get = config.get if isinstance(config, Mapping) else (lambda key, default=None: getattr(config, key, default))
    positions = get("max_position_embeddings")
    if not isinstance(positions, int) or isinstance(positions, bool) or positions <= 0:
        return None
    if get("position_biased_input", True) is False:
        return None
    model_type = str(get("model_type", "") or "").removeprefix("pruned_")
    if model_type in _OFFSET_POSITIONS:
        pad = get("pad_token_id", 1)
        return positions - (int(pad) if isinstance(pad, int) else 1) - 1
    return positions

#: Keys of a tokenised batch that are passed to a Hugging Face model's forward.
MODEL_INPUT_KEYS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


@dataclass(frozen=True)
class EncodedBatch:
    """Hidden states of one batch.

    Attributes:
        hidden_states: ``num_layers + 1`` tensors of shape ``(batch, seq, hidden)``; index 0 is the
            embedding output, index ``i`` the output of encoder layer ``i`` (1-based), index -1 the last.
        attention_mask: ``(batch, seq)`` tensor, 1 for real tokens, 0 for padding.
        labels: ``(batch,)`` integer class labels, or ``None`` when the batch has none.
        logits: ``(batch, num_classes)`` classifier logits, or ``None`` for a bare encoder.
    """

    hidden_states: tuple[Tensor, ...]
    attention_mask: Tensor
    labels: Tensor | None = None
    logits: Tensor | None = None

    @property
    def num_layers(self) -> int:
        """Number of encoder layers (``len(hidden_states) - 1``)."""
        return len(self.hidden_states) - 1


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Tensor]:
    """The subset of ``batch`` that a Hugging Face encoder's ``forward`` takes.

    Raises:
        TypeError: if ``batch`` is not a mapping.
        ValueError: if ``batch`` has no ``input_ids``.
    """
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"a batch must be a mapping with 'input_ids' and 'attention_mask' (as the DataModule yields); "
            f"got {type(batch).__name__}"
        )
    if "input_ids" not in batch:
        raise ValueError(f"batch has no 'input_ids'; keys are {sorted(batch)}")
    return {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch and batch[k] is not None}


def encode_batch(model: torch.nn.Module, batch: Mapping[str, Any]) -> EncodedBatch:
    """Run ``model`` on ``batch`` and return its hidden states.

    Args:
        model: a module with ``encode(batch) -> EncodedBatch`` (used as is), or a Hugging Face
            model whose forward accepts ``output_hidden_states=True``.
        batch: a tokenised batch: ``input_ids`` ``(batch, seq)``, optional ``attention_mask``
            (all ones when missing), ``token_type_ids`` and ``labels`` ``(batch,)``.

    Gradients are not disabled here; callers that only read use ``torch.no_grad()``.
    """
    encode = getattr(model, "encode", None)
    if callable(encode):
        out = encode(batch)
        if not isinstance(out, EncodedBatch):
            raise TypeError(
                f"{type(model).__name__}.encode must return EncodedBatch, got {type(out).__name__}"
            )
        return out
    return encode_hf_model(model, batch)


def encode_hf_model(model: torch.nn.Module, batch: Mapping[str, Any]) -> EncodedBatch:
    """Run a Hugging Face model with ``output_hidden_states=True`` on ``batch``.

    Tensors are moved to the model's device; a missing ``attention_mask`` means all ones.

    Raises:
        TypeError: if ``batch`` is not a mapping, or the model returns no hidden states.
        ValueError: if ``batch`` has no ``input_ids``.
    """
    device = module_device(model)
    inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
    if "attention_mask" not in inputs:
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    ensure_hidden_state_capture(model)
    out = model(**inputs, output_hidden_states=True, return_dict=True)
    hidden = getattr(out, "hidden_states", None)
    if hidden is None:
        raise TypeError(
            f"{type(model).__name__} returned no hidden_states with output_hidden_states=True; "
            "pass a Hugging Face encoder (e.g. BertModel, BertForSequenceClassification)"
        )
    labels = batch.get("labels")
    return EncodedBatch(
        hidden_states=tuple(hidden),
        attention_mask=inputs["attention_mask"],
        labels=labels.to(device) if isinstance(labels, Tensor) else None,
        logits=getattr(out, "logits", None),
    )


def ensure_hidden_state_capture(model: torch.nn.Module) -> None:
    """Work around transformers 5 losing ``output_hidden_states`` after unpickling (``ddp_spawn``).

    transformers 5 records which outputs a model class can capture in a process-global registry
    filled by ``PreTrainedModel.__init__``; a model unpickled in a fresh process (spawned DDP
    workers) never ran ``__init__`` there, so it silently returns ``hidden_states=None``.
    Registering every Hugging Face submodule's class again restores the capture.
    """
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # a transformers version without this registry needs no repair
        return
    for sub in model.modules():
        can_record = getattr(sub, "_can_record_outputs", None)
        if can_record and not _CAN_RECORD_REGISTRY.get(sub):
            _CAN_RECORD_REGISTRY[sub] = can_record


def module_device(module: torch.nn.Module) -> torch.device:
    """The device a module's inputs go to: its ``device`` attribute (a LightningModule's), else
    the device of its first parameter, else the CPU."""
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
