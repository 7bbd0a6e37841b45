r"""Hidden states of any BERT-family encoder, captured with forward hooks during someone else's forward.

A lens must not need anything of the user's ``forward`` or ``validation_step``: it reads what the
Hugging Face encoder inside the user's module computes anyway. :class:`HiddenStateCapture` hooks

* the base model (``model.base_model``: ``BertModel``, ``DistilBertModel``, ``DebertaV2Model``,
  ...): a pre-hook reads ``input_ids``, ``attention_mask`` and ``token_type_ids`` of the call;
* the input of its first encoder layer: hidden state 0 (the embeddings, after ELECTRA's projection);
* each of its encoder layers: hidden state ``i`` (the output of layer ``i``),

and hands one :class:`CapturedBatch` per encoder call: the same tensors as
``output_hidden_states=True`` would return (the tests check they are equal), detached, without a
second forward and without changing what the model returns.

Example::

    capture = HiddenStateCapture(hf_model)
    with capture, torch.no_grad():
        user_module(batch)                      # any forward that runs hf_model inside
    captured = capture.pop()[-1]                 # CapturedBatch of the last encoder call
    captured.hidden_states[-1]                   # (batch, seq, hidden)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "LABEL_KEYS",
    "CapturedBatch",
    "HiddenStateCapture",
    "batch_labels",
    "encoder_layer_list",
    "num_hidden_layers",
]

#: Batch keys read as class labels, in this order.
LABEL_KEYS: tuple[str, ...] = ("labels", "label")

#: Where encoder layers sit under a base model, per family (first match wins).
_LAYER_PATHS: tuple[str, ...] = ("encoder.layer", "transformer.layer", "encoder.layers", "layers", "layer")


@dataclass(frozen=True)
class CapturedBatch:
    """What one encoder call saw and computed (tensors detached).

    Attributes:
        hidden_states: ``num_layers + 1`` tensors ``(batch, seq, hidden)``: index 0 the embedding
            output, ``i`` the output of encoder layer ``i``. Indices that were not kept are ``None``.
        attention_mask: ``(batch, seq)`` 1 for real tokens (all ones when the call had none).
        input_ids: ``(batch, seq)`` or ``None`` (a call with ``inputs_embeds``).
        token_type_ids: ``(batch, seq)`` segment ids, or ``None``.
    """

    hidden_states: tuple[Tensor | None, ...]
    attention_mask: Tensor
    input_ids: Tensor | None = None
    token_type_ids: Tensor | None = None

    @property
    def num_layers(self) -> int:
        return len(self.hidden_states) - 1

    @property
    def batch_size(self) -> int:
        return int(self.attention_mask.shape[0])


def _get_path(module: nn.Module, path: str) -> Any:
    obj: Any = module
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def num_hidden_layers(model: nn.Module) -> int:
    """The encoder's layer count from its config (``num_hidden_layers``, DistilBERT's ``n_layers``).

    Raises:
        TypeError: the model has no Hugging Face config with a layer count.
    """
    config = getattr(model, "config", None)
    for key in ("num_hidden_layers", "n_layers", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    raise TypeError(
        f"{type(model).__name__} has no Hugging Face config with num_hidden_layers; pass a transformers "
        "PreTrainedModel (BertModel, DistilBertForSequenceClassification, ...)"
    )


def encoder_layer_list(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.ModuleList]:
    """``(base_model, embeddings, layers)`` of a Hugging Face encoder of any BERT family.

    The layers are the ``nn.ModuleList`` at one of the family paths (``encoder.layer`` for BERT,
    RoBERTa, ELECTRA, DeBERTa; ``transformer.layer`` for DistilBERT) with
    ``num_hidden_layers`` entries.

    Raises:
        TypeError: no embeddings module or no such layer list (the message names the class and
            the paths looked at).
    """
    base = getattr(model, "base_model", model)
    expected = num_hidden_layers(model)
    embeddings = getattr(base, "embeddings", None)
    for path in _LAYER_PATHS:
        layers = _get_path(base, path)
        if isinstance(layers, nn.ModuleList) and len(layers) == expected and isinstance(embeddings, nn.Module):
            return base, embeddings, layers
    raise TypeError(
        f"{type(model).__name__} is not a supported encoder: lightning-topo reads hidden states from "
        f"<base_model>.embeddings and a list of {expected} layers at one of "
        f"{', '.join('<base_model>.' + p for p in _LAYER_PATHS)} (BERT, RoBERTa, ELECTRA, DistilBERT, "
        "DeBERTa, MiniLM); this model has neither"
    )


def _first_tensor(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    value = getattr(output, "last_hidden_state", None)
    return value if isinstance(value, Tensor) else None


class HiddenStateCapture:
    """Forward hooks that record the hidden states of every call of a Hugging Face encoder.

    Hooks exist only between :meth:`attach` and :meth:`detach` (or inside ``with capture:``).
    Every encoder call while attached appends one :class:`CapturedBatch`; :meth:`pop` returns
    and forgets them.

    Args:
        model: a Hugging Face encoder or task model (its ``base_model`` is hooked).
        keep: hidden-state indices to keep (``None``: all). Others are ``None`` in the capture,
            so a lens that reads one layer holds no more than that layer.

    Raises:
        TypeError: the model's layout is not a supported encoder (:func:`encoder_layer_list`).
    """

    def __init__(self, model: nn.Module, keep: Iterable[int] | None = None) -> None:
        self.base, self.embeddings, self.layers = encoder_layer_list(model)
        self.num_layers = len(self.layers)
        self.keep = None if keep is None else {int(i) for i in keep}
        self.captured: list[CapturedBatch] = []
        self._handles: list[Any] = []
        self._call: dict[str, Any] | None = None

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> HiddenStateCapture:
        """Register the hooks (idempotent)."""
        if self._handles:
            return self
        self._handles.append(self.base.register_forward_pre_hook(self._on_start, with_kwargs=True))
        self._handles.append(self.base.register_forward_hook(self._on_end))
        self._handles.append(self.layers[0].register_forward_pre_hook(self._store_input, with_kwargs=True))
        for i, layer in enumerate(self.layers, start=1):
            self._handles.append(layer.register_forward_hook(self._store(i)))
        return self

    def detach(self) -> None:
        """Remove the hooks and drop a half-finished call (captures already made stay)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._call = None

    def __enter__(self) -> HiddenStateCapture:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def pop(self) -> list[CapturedBatch]:
        """The encoder calls captured since the last call (oldest first), and forget them."""
        out, self.captured = self.captured, []
        return out

    # ------------------------------------------------------------------ hooks

    def _on_start(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        def arg(name: str, position: int) -> Tensor | None:
            value = kwargs.get(name, args[position] if len(args) > position else None)
            return value.detach() if isinstance(value, Tensor) else None

        self._call = {
            "input_ids": arg("input_ids", 0),
            "attention_mask": arg("attention_mask", 1),
            "token_type_ids": kwargs.get("token_type_ids") if isinstance(kwargs.get("token_type_ids"), Tensor) else None,
            "hidden": {},
        }

    def _store(self, index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if self._call is None or (self.keep is not None and index not in self.keep):
                return
            tensor = _first_tensor(output)
            if tensor is not None:
                self._call["hidden"][index] = tensor.detach()

        return hook

    def _store_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        # hidden state 0 is what enters layer 1 (after ELECTRA's embedding projection, as
        # transformers' own hidden_states[0])
        if self._call is None or (self.keep is not None and 0 not in self.keep):
            return
        value = args[0] if args else next((kwargs[k] for k in ("hidden_states", "x") if k in kwargs), None)
        if isinstance(value, Tensor):
            self._call["hidden"][0] = value.detach()

    def _on_end(self, module: nn.Module, args: tuple, output: Any) -> None:
        call, self._call = self._call, None
        if call is None:
            return
        hidden = call["hidden"]
        wanted = range(self.num_layers + 1) if self.keep is None else sorted(self.keep)
        if any(i not in hidden for i in wanted):
            return  # a call that skipped layers (not a full encoder forward): nothing to read
        any_state = hidden[next(iter(wanted))]
        mask = call["attention_mask"]
        if mask is None or mask.dim() != 2:
            mask = torch.ones(any_state.shape[:2], dtype=torch.long, device=any_state.device)
        ids = call["input_ids"]
        types = call["token_type_ids"]
        self.captured.append(
            CapturedBatch(
                hidden_states=tuple(hidden.get(i) for i in range(self.num_layers + 1)),
                attention_mask=mask,
                input_ids=ids if ids is not None and ids.dim() == 2 else None,
                token_type_ids=types.detach() if types is not None else None,
            )
        )


def batch_labels(batch: Any, labels_fn: Callable[[Any], Any] | None = None) -> Tensor | None:
    """Class labels of a batch: ``labels_fn(batch)`` when given, else ``batch["labels"]`` or
    ``batch["label"]`` of a mapping (``None`` when there are none).

    Raises:
        TypeError: ``labels_fn`` returned something that is not a 1-D integer tensor or sequence.
    """
    if labels_fn is not None:
        value = labels_fn(batch)
        source = "labels_fn(batch)"
    elif isinstance(batch, Mapping):
        key = next((k for k in LABEL_KEYS if batch.get(k) is not None), None)
        if key is None:
            return None
        value, source = batch[key], f"batch[{key!r}]"
    else:
        return None
    tensor = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if tensor.dim() != 1 or tensor.is_floating_point() or tensor.dtype == torch.bool:
        raise TypeError(
            f"{source} must give one integer class label per example, shape (batch,); "
            f"got dtype {tensor.dtype} and shape {tuple(tensor.shape)}"
        )
    return tensor
