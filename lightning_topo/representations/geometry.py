r"""Per-layer inputs of the geometry lens, captured with forward hooks on a BERT-family encoder.

For every selected encoder layer ``i`` (1-based, as ``EncodedBatch.hidden_states[i]`` is its
output) one forward pass yields a :class:`LayerCapture`:

* ``layer_input`` ``(batch, seq, d)`` -- the hidden states entering the layer;
* ``context`` ``(batch, seq, heads * d_head)`` -- every head's output ``softmax(QKᵀ/√d)V``,
  concatenated, before the output projection;
* ``attention_output`` ``(batch, seq, d)`` -- the attention block's output after the output
  projection, residual connection and LayerNorm (what the feed-forward block reads);
* ``layer_output`` ``(batch, seq, d)`` -- the layer's output;
* the attention probabilities ``(batch, heads, seq, seq)`` (:meth:`LayerCapture.attention_probs`);
* ``mask`` ``(batch, seq)`` bool -- the model's ``attention_mask`` (all ``True`` when none).

**Attention probabilities do not need eager attention.** With ``attn_implementation="eager"``
the self-attention module returns them and they are used as they are. The default SDPA (and
flash/flex) kernels return none; then they are recomputed from the query and key projections
the model has just computed (hooked ``nn.Linear`` outputs):
``softmax(Q_h K_hᵀ · scaling)`` over the unpadded keys, which is what the eager kernel computes
for a bidirectional BERT encoder in eval mode (the tests check the two agree). Pass
``attention="model"`` to insist on the model's own probabilities; that needs eager attention
and raises at construction otherwise, saying how to enable it.

"BERT-family" means a Hugging Face encoder whose layers sit at
``<base_model>.encoder.layer[i]`` with ``.attention.self.{query,key,value}`` (``nn.Linear``)
and ``.attention.output``: BERT, RoBERTa, XLM-R, ELECTRA, CamemBERT, (all-)MiniLM, ... Other
models (DistilBERT, decoders) are refused with a ``TypeError``.

Example::

    capture = GeometryCapture(hf_model, layers="all")
    with capture, torch.no_grad():
        hf_model(**inputs)
    for forward in capture.pop():              # one CapturedForward per model call
        for layer, cap in forward.layers.items():
            probs = cap.attention_probs()      # (batch, heads, seq, seq)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_topo.scores.geometry import (
    attention_entropy,
    attention_entropy_from_logits,
    cone_index,
    cone_index_per_head,
    directionality,
    qk_spectral_entropy,
)

__all__ = [
    "ATTENTION_SOURCES",
    "CapturedForward",
    "GeometryCapture",
    "LayerCapture",
    "CONE_SITES",
    "GeometryAccumulator",
    "bert_family_layers",
    "resolve_encoder_layers",
    "weight_geometry",
]

#: Where attention probabilities come from: ``"auto"`` (the model's own when returned, else
#: recomputed from Q and K), ``"model"`` (the model's own only: eager attention), ``"none"``.
ATTENTION_SOURCES: tuple[str, ...] = ("auto", "model", "none")

_EAGER_HOWTO = (
    "load the model with attn_implementation='eager' (e.g. AutoModelForSequenceClassification."
    "from_pretrained(name, attn_implementation='eager')) or switch an existing one with "
    "model.set_attn_implementation('eager'); or use attention='auto', which recomputes the "
    "probabilities from the query and key projections under SDPA"
)


@dataclass
class LayerCapture:
    """What one encoder layer saw and produced in one forward pass (tensors detached)."""

    layer_input: Tensor
    context: Tensor
    attention_output: Tensor
    layer_output: Tensor
    mask: Tensor
    num_heads: int
    probs: Tensor | None = None
    query: Tensor | None = None
    key: Tensor | None = None
    scaling: float | None = None

    def attention_probs(self) -> Tensor:
        """``(batch, heads, seq, seq)`` probabilities: the model's own, else recomputed from Q, K.

        Raises:
            RuntimeError: neither the probabilities nor Q/K were captured (``attention="none"``).
        """
        if self.probs is not None:
            return self.probs
        return (
            self.attention_logits().masked_fill(~self.mask[:, None, None, :], float("-inf")).softmax(dim=-1)
        )

    def attention_logits(self) -> Tensor:
        """``(batch, heads, seq, seq)`` scores ``Q_h K_hᵀ · scaling`` before the softmax (no mask).

        Raises:
            RuntimeError: Q/K were not captured (the model returned its probabilities, or
                ``attention="none"``).
        """
        if self.query is None or self.key is None:
            raise RuntimeError(
                "attention scores were not captured (the model returned its probabilities, or the "
                "GeometryCapture was built with attention='none')"
            )
        batch, seq, _ = self.query.shape
        q = self.query.reshape(batch, seq, self.num_heads, -1).transpose(1, 2)
        k = self.key.reshape(batch, seq, self.num_heads, -1).transpose(1, 2)
        scaling = self.scaling if self.scaling is not None else q.shape[-1] ** -0.5
        return (q * scaling) @ k.transpose(-1, -2)  # scaling Q (seq x d_head) is cheaper than the scores


@dataclass
class CapturedForward:
    """One model call: its mask and a :class:`LayerCapture` per selected layer (1-based keys)."""

    mask: Tensor
    layers: dict[int, LayerCapture] = field(default_factory=dict)


def bert_family_layers(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The base model and its encoder layers, checking the BERT-family layout.

    Args:
        model: a Hugging Face model (``BertModel``, ``BertForSequenceClassification``, ...) or a
            module holding one as ``.model`` (our ``SequenceClassifier``).

    Raises:
        TypeError: not a BERT-family encoder (the message names the class and the layout needed).
        ValueError: a decoder (``config.is_decoder``) -- causal attention is not supported.
    """
    hf = model.model if isinstance(getattr(model, "model", None), nn.Module) else model
    base = getattr(hf, "base_model", hf)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    expected = (
        "the geometry lens needs a BERT-family encoder (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM) whose "
        "layers are <base_model>.encoder.layer[i] with .attention.self.query/key/value (nn.Linear) and "
        f".attention.output; got {type(hf).__name__}"
    )
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise TypeError(expected)
    for layer in layers:
        attn = getattr(layer, "attention", None)
        self_attn = getattr(attn, "self", None)
        ok = isinstance(getattr(attn, "output", None), nn.Module) and all(
            isinstance(getattr(self_attn, name, None), nn.Linear) for name in ("query", "key", "value")
        )
        if not ok or not isinstance(getattr(self_attn, "num_attention_heads", None), int):
            raise TypeError(f"{expected} (layer {type(layer).__name__} has another layout)")
    if getattr(getattr(hf, "config", None), "is_decoder", False):
        raise ValueError(
            f"{type(hf).__name__} is configured as a decoder (config.is_decoder=True); the geometry lens "
            "supports bidirectional encoders only"
        )
    return base, layers


def resolve_encoder_layers(layers: int | Sequence[int] | str, num_layers: int) -> list[int]:
    """1-based encoder layer indices from ``"all"``, an int or a list (negative: from the end).

    Raises:
        ValueError: an index outside ``1 .. num_layers`` (or ``-num_layers .. -1``), 0, a
            duplicate, an empty list, or a string other than ``"all"``.
    """
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be 'all', an int or a list of ints; got {layers!r}")
        return list(range(1, num_layers + 1))
    items = [layers] if isinstance(layers, int) else list(layers)
    if not items:
        raise ValueError("layers must name at least one encoder layer; got an empty list")
    out = []
    for item in items:
        if (
            isinstance(item, bool)
            or not isinstance(item, int)
            or item == 0
            or not -num_layers <= item <= num_layers
        ):
            raise ValueError(
                f"layers must be encoder layers 1..{num_layers} (or -{num_layers}..-1 from the end; 0, "
                f"the embeddings, has no attention); got {item!r}"
            )
        out.append(item if item > 0 else num_layers + 1 + item)
    if len(set(out)) != len(out):
        raise ValueError(f"layers has duplicates: {items!r}")
    return sorted(out)


class GeometryCapture:
    """Forward hooks that capture each selected layer's geometry inputs (see the module doc).

    Hooks exist only between :meth:`attach` and :meth:`detach` (or inside ``with capture:``);
    outside them the model runs untouched. Tensors are detached views of what the forward
    computed anyway; nothing is copied or recomputed during the forward.

    Args:
        model: a BERT-family Hugging Face model, or a module holding one as ``.model``.
        layers: ``"all"`` (default), a 1-based layer index or a list (negative from the end).
        attention: ``"auto"`` (default), ``"model"`` (eager attention required) or ``"none"``.
        on_layer: called as ``on_layer(layer, capture)`` as soon as a layer's output is known;
            the capture is then dropped, so a forward keeps at most one layer alive (use this in
            a monitor). ``None``: captures accumulate until :meth:`pop`.

    Raises:
        TypeError: ``model`` is not a BERT-family encoder.
        ValueError: a bad ``layers`` or ``attention``; ``attention="model"`` without eager
            attention (the message says how to enable it).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: int | Sequence[int] | str = "all",
        attention: str = "auto",
        on_layer: Callable[[int, LayerCapture], None] | None = None,
    ) -> None:
        if attention not in ATTENTION_SOURCES:
            raise ValueError(f"attention must be one of {ATTENTION_SOURCES}; got {attention!r}")
        self.base, self.encoder_layers = bert_family_layers(model)
        self.layers = resolve_encoder_layers(layers, len(self.encoder_layers))
        if attention == "model":
            impl = getattr(getattr(self.base, "config", None), "_attn_implementation", None)
            if impl != "eager":
                raise ValueError(
                    f"attention='model' needs the model's own attention probabilities, which only eager "
                    f"attention returns; this model uses attn_implementation={impl!r}. To enable them, "
                    + _EAGER_HOWTO
                )
        self.attention = attention
        self.on_layer = on_layer
        self.captured: list[CapturedForward] = []
        self._handles: list[Any] = []
        self._current: CapturedForward | None = None
        self._parts: dict[int, dict[str, Any]] = {}

    # ------------------------------------------------------------------ hooks

    @property
    def attached(self) -> bool:
        """Whether the hooks are registered."""
        return bool(self._handles)

    def attach(self) -> GeometryCapture:
        """Register the hooks (idempotent)."""
        if self._handles:
            return self
        self._handles.append(self.base.register_forward_pre_hook(self._on_model_start, with_kwargs=True))
        for i in self.layers:
            layer = self.encoder_layers[i - 1]
            self_attn = layer.attention.self
            self._handles.append(self_attn.register_forward_hook(self._self_attention_hook(i)))
            self._handles.append(
                layer.attention.output.register_forward_hook(self._store_hook(i, "attention_output"))
            )
            self._handles.append(layer.register_forward_hook(self._layer_output_hook(i)))
            if self.attention == "auto":
                self._handles.append(self_attn.query.register_forward_hook(self._store_hook(i, "query")))
                self._handles.append(self_attn.key.register_forward_hook(self._store_hook(i, "key")))
        return self

    def detach(self) -> None:
        """Remove every hook and drop a half-finished forward (captures already made stay)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._current = None
        self._parts = {}

    def __enter__(self) -> GeometryCapture:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def pop(self) -> list[CapturedForward]:
        """The forwards captured since the last call (oldest first), and forget them."""
        out, self.captured = self.captured, []
        return out

    def _on_model_start(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self._current = CapturedForward(mask=None if mask is None else mask.detach() != 0)  # type: ignore[arg-type]
        self._parts = {}
        if self.on_layer is None:
            self.captured.append(self._current)

    def _store_hook(self, layer: int, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            self._parts.setdefault(layer, {})[name] = out.detach()

        return hook

    def _self_attention_hook(self, layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            parts = self._parts.setdefault(layer, {})
            context, probs = (
                (output[0], output[1]) if isinstance(output, tuple) and len(output) > 1 else (output, None)
            )
            if self.attention == "model" and probs is None:
                raise RuntimeError(
                    f"layer {layer}'s self-attention returned no attention probabilities although "
                    "attention='model' was asked for; " + _EAGER_HOWTO
                )
            parts["layer_input"] = args[0].detach()
            parts["context"] = context.detach()
            parts["probs"] = None if probs is None or self.attention == "none" else probs.detach()
            parts["num_heads"] = int(module.num_attention_heads)
            parts["scaling"] = getattr(module, "scaling", None)

        return hook

    def _layer_output_hook(self, layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            parts = self._parts.pop(layer, None)
            if self._current is None or parts is None or "context" not in parts:
                return  # the layer ran outside a hooked model call (e.g. called directly)
            out = (output[0] if isinstance(output, tuple) else output).detach()
            mask = self._current.mask
            if mask is None:
                mask = torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)
                self._current.mask = mask
            cap = LayerCapture(
                layer_input=parts["layer_input"],
                context=parts["context"],
                attention_output=parts["attention_output"],
                layer_output=out,
                mask=mask.to(out.device),
                num_heads=parts["num_heads"],
                probs=parts["probs"],
                query=parts.get("query") if parts["probs"] is None else None,
                key=parts.get("key") if parts["probs"] is None else None,
                scaling=parts["scaling"],
            )
            if self.on_layer is not None:
                self.on_layer(layer, cap)
            else:
                self._current.layers[layer] = cap

        return hook


# ---------------------------------------------------------------------------------- reductions

#: Per-sequence cone indices kept by :class:`GeometryAccumulator` (``"heads"`` is per head).
CONE_SITES: tuple[str, ...] = ("input", "heads", "attention_output", "output")


class GeometryAccumulator:
    """Running means over sequences of the geometry of each layer, fed batch by batch.

    Each :class:`LayerCapture` is reduced at once to per-sequence numbers (cone index at the
    four sites, per-head cone index and attention entropy), so only sums stay in memory.

    Args:
        layers: 1-based layer indices to expect.
        num_heads: heads per layer: one int for all, or one per layer (pruned models differ).
        normalize: cone indices divided by the number of tokens (``[0, 1]``). Default ``True``.
        attention: also accumulate the attention entropy. Default ``True``.
    """

    def __init__(
        self,
        layers: Sequence[int],
        num_heads: int | Sequence[int],
        normalize: bool = True,
        attention: bool = True,
    ) -> None:
        self.layers = list(layers)
        heads = [num_heads] * len(self.layers) if isinstance(num_heads, int) else list(num_heads)
        if len(heads) != len(self.layers) or any(isinstance(h, bool) or int(h) < 1 for h in heads):
            raise ValueError(f"num_heads must be a positive int or one per layer; got {num_heads!r}")
        self.num_heads = [int(h) for h in heads]
        self.normalize = normalize
        self.attention = attention
        self.reset()

    def reset(self) -> None:
        """Forget everything added."""
        # columns: input, attention_output, output, heads' cones (max H), heads' entropies (max H)
        self._width = max(self.num_heads)
        self._sums = torch.zeros(len(self.layers), 3 + 2 * self._width, dtype=torch.float64)
        self._counts = torch.zeros(len(self.layers), dtype=torch.float64)

    @property
    def num_sequences(self) -> int:
        """Sequences added so far to the first layer (this process)."""
        return int(self._counts[0].item()) if len(self.layers) else 0

    def add(self, layer: int, cap: LayerCapture) -> None:
        """Reduce one layer's capture of one batch.

        Raises:
            ValueError: a sequence whose mask has no valid position (from the score functions),
                or a layer with another head count than declared.
        """
        row = self.layers.index(layer)
        h = self.num_heads[row]
        if cap.num_heads != h:
            raise ValueError(f"layer {layer} has {cap.num_heads} heads but the accumulator expects {h}")
        mask, norm = cap.mask, self.normalize
        if self._sums.device != mask.device:  # sums live where the model runs: no sync per batch
            self._sums, self._counts = self._sums.to(mask.device), self._counts.to(mask.device)
        sums = self._sums[row]
        sums[0] += cone_index(cap.layer_input.float(), mask, norm).double().sum()
        sums[1] += cone_index(cap.attention_output.float(), mask, norm).double().sum()
        sums[2] += cone_index(cap.layer_output.float(), mask, norm).double().sum()
        sums[3 : 3 + h] += cone_index_per_head(cap.context.float(), h, mask, norm).double().sum(0)
        if self.attention:
            if cap.probs is None:  # recomputed: straight from the scores, no probabilities formed
                entropy = attention_entropy_from_logits(cap.attention_logits().float(), mask)
            else:
                entropy = attention_entropy(cap.probs.float(), mask)
            entropy = entropy.double().sum(0)
            sums[3 + self._width : 3 + self._width + h] += entropy
        self._counts[row] += mask.shape[0]

    def result(self, reduce: Callable[[Tensor], Tensor] | None = None) -> dict[int, dict[str, Tensor]]:
        """Means over all sequences added: ``{layer: {"cone/input": 0-d, "cone/heads": (H,), ...}}``.

        Keys per layer: ``sequences`` (the count), ``cone/input``, ``cone/attention_output``, ``cone/output`` (0-d),
        ``cone/heads`` and (with ``attention``) ``attention_entropy`` (``(heads,)``).

        Args:
            reduce: applied to the stacked sums and counts before dividing (e.g. a sum over
                DDP ranks: ``lambda t: trainer.strategy.reduce(t, reduce_op="sum")``).

        Raises:
            ValueError: nothing was added for some layer.
        """
        packed = torch.cat([self._sums, self._counts[:, None]], dim=1)
        if reduce is not None:
            packed = reduce(packed)
        packed = packed.to("cpu", torch.float64)
        sums, counts = packed[:, :-1], packed[:, -1:]
        if not bool((counts > 0).all()):
            raise ValueError(
                "no sequence was captured for some layers; run a forward with the hooks attached first"
            )
        means = sums / counts
        w = self._width
        out = {}
        for row, layer in enumerate(self.layers):
            m, h = means[row], self.num_heads[row]
            out[layer] = {
                "sequences": counts[row, 0],
                "cone/input": m[0],
                "cone/attention_output": m[1],
                "cone/output": m[2],
                "cone/heads": m[3 : 3 + h],
            }
            if self.attention:
                out[layer]["attention_entropy"] = m[3 + w : 3 + w + h]
        return out


def weight_geometry(model: nn.Module, layers: Sequence[int]) -> dict[int, dict[str, Tensor]]:
    """Directionality and Q/K spectral entropy of every head of the given 1-based layers.

    Returns:
        ``{layer: {"directionality": (heads,), "qk_spectral_entropy": (heads,)}}`` as float64 on
        the CPU, computed without gradients from the current weights.
    """
    _, encoder_layers = bert_family_layers(model)
    out = {}
    with torch.no_grad():
        for i in layers:
            attn = encoder_layers[i - 1].attention.self
            w_q = attn.query.weight.detach().double().cpu()
            w_k = attn.key.weight.detach().double().cpu()
            heads = int(attn.num_attention_heads)
            out[i] = {
                "directionality": directionality(w_q, w_k, heads),
                "qk_spectral_entropy": qk_spectral_entropy(w_q, w_k, heads),
            }
    return out
