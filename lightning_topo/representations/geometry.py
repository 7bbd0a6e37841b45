r"""Per-layer inputs of the geometry lens, captured with forward hooks on a BERT-family encoder.

For every selected encoder layer ``i`` (hidden-state index: layer ``i``'s output is
``hidden_states[i]``, so ``i`` runs over ``1..L``; 0, the embeddings, has no attention) one
forward pass yields a :class:`LayerCapture`:

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
for a bidirectional encoder in eval mode (the tests check the two agree). DeBERTa's scores add
relative-position terms to ``Q_h K_hᵀ``, so there the model's own probabilities are always used:
a pre-hook asks its self-attention for them (``output_attentions=True`` on that module only; what
the model returns does not change). Pass ``attention="model"`` to insist on the model's own
probabilities; for BERT and DistilBERT that needs eager attention and raises at construction
otherwise, saying how to enable it.

Supported layouts (:func:`attention_sites`; anything else is refused with one line naming them):

* **BERT** family -- BERT, RoBERTa, XLM-R, ELECTRA, CamemBERT, (all-)MiniLM:
  ``encoder.layer[i].attention.self.{query,key,value}``, ``.attention.output``;
* **DistilBERT**: ``transformer.layer[i].attention.{q_lin,k_lin,v_lin,out_lin}`` (the head
  outputs are the input of ``out_lin``), ``.sa_layer_norm``;
* **DeBERTa-v2/v3**: ``encoder.layer[i].attention.self.{query_proj,key_proj,value_proj}``,
  ``.attention.output`` (models with DeBERTa-v2's convolution layer, ``conv_kernel_size > 0``,
  are refused: their first hidden state is not the first layer's output).

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

from lightning_topo.representations.capture import encoder_layer_list
from lightning_topo.scores.checks import check_layers, resolve_layers
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
    "SUPPORTED_FAMILIES",
    "AttentionSites",
    "CapturedForward",
    "GeometryCapture",
    "LayerCapture",
    "LayerStatistics",
    "attention_sites",
    "layer_statistics",
    "resolve_encoder_layers",
    "weight_geometry",
]

#: Where attention probabilities come from: ``"auto"`` (the model's own when returned, else
#: recomputed from Q and K), ``"model"`` (the model's own only: eager attention), ``"none"``.
ATTENTION_SOURCES: tuple[str, ...] = ("auto", "model", "none")

#: The model families whose attention internals the lens can hook (see the module doc).
SUPPORTED_FAMILIES = (
    "BERT-family encoders: BERT, RoBERTa, XLM-R, ELECTRA, MiniLM (encoder.layer[i].attention.self.query/key/value), "
    "DistilBERT (transformer.layer[i].attention.q_lin/k_lin/v_lin/out_lin) and DeBERTa-v2/v3 "
    "(encoder.layer[i].attention.self.query_proj/key_proj/value_proj)"
)

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
    """One model call: its mask and, per selected layer (hidden-state index ``i >= 1``), a
    :class:`LayerCapture` -- or, for a capture built with ``reduce=``, what ``reduce`` returned."""

    mask: Tensor
    layers: dict[int, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class AttentionSites:
    """Where one encoder layer's attention internals sit (one family's layout).

    Attributes:
        family: ``"bert"``, ``"distilbert"`` or ``"deberta-v2"``.
        layer: the encoder layer module (its output is the layer output).
        self_attention: the module computing the heads; its first input is the layer input.
        query, key, value: the ``nn.Linear`` projections, weights ``(heads * d_head, hidden)``.
        context: the module whose output (BERT, DeBERTa: the self-attention) or input
            (DistilBERT: ``out_lin``) is the concatenated head outputs.
        context_is_input: read ``context``'s input instead of its output.
        attention_output: the module whose output is the attention block's output (after the
            output projection, residual and LayerNorm).
        scores_have_bias: the attention scores are not ``Q_h K_hᵀ · scaling`` alone (DeBERTa's
            relative-position terms): the model's own probabilities are always used.
    """

    family: str
    layer: nn.Module
    self_attention: nn.Module
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    context: nn.Module
    context_is_input: bool
    attention_output: nn.Module
    scores_have_bias: bool = False

    @property
    def num_heads(self) -> int:
        """Heads of the layer now (a pruned layer has fewer)."""
        attn = self.self_attention
        heads = getattr(attn, "num_attention_heads", None)
        return int(heads if isinstance(heads, int) else attn.n_heads)

    @property
    def scaling(self) -> float | None:
        value = getattr(self.self_attention, "scaling", None)
        return float(value) if isinstance(value, int | float) else None


def _linear(module: Any, name: str) -> nn.Linear | None:
    value = getattr(module, name, None)
    return value if isinstance(value, nn.Linear) else None


def _sites_of(layer: nn.Module) -> AttentionSites | None:
    """The layout of one layer, or ``None`` when it matches no supported family."""
    attn = getattr(layer, "attention", None)
    self_attn = getattr(attn, "self", None)
    output = getattr(attn, "output", None)
    if isinstance(output, nn.Module) and isinstance(getattr(self_attn, "num_attention_heads", None), int):
        q, k, v = (_linear(self_attn, n) for n in ("query", "key", "value"))
        if q is not None and k is not None and v is not None:
            return AttentionSites("bert", layer, self_attn, q, k, v, self_attn, False, output)
        q, k, v = (_linear(self_attn, n) for n in ("query_proj", "key_proj", "value_proj"))
        if q is not None and k is not None and v is not None:
            return AttentionSites("deberta-v2", layer, self_attn, q, k, v, self_attn, False, output, True)
    if isinstance(getattr(attn, "n_heads", None), int) and isinstance(
        getattr(layer, "sa_layer_norm", None), nn.Module
    ):
        q, k, v, o = (_linear(attn, n) for n in ("q_lin", "k_lin", "v_lin", "out_lin"))
        if q is not None and k is not None and v is not None and o is not None:
            return AttentionSites("distilbert", layer, attn, q, k, v, o, True, layer.sa_layer_norm)
    return None


def _unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model itself, also from a module holding it as ``.model`` (``SequenceClassifier``)."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(inner, "config") else model


def attention_sites(model: nn.Module) -> tuple[nn.Module, nn.ModuleList, list[AttentionSites]]:
    """The base model, its encoder layers and each layer's :class:`AttentionSites`.

    Args:
        model: a Hugging Face encoder or task model, or a module holding one as ``.model``.

    Raises:
        TypeError: not one of :data:`SUPPORTED_FAMILIES` (one line naming the class and them).
        ValueError: a decoder (``config.is_decoder``), or DeBERTa-v2 with a convolution layer.
    """
    hf = _unwrap(model)
    expected = f"the geometry lens supports {SUPPORTED_FAMILIES}; got {type(hf).__name__}"
    try:
        base, _, layers = encoder_layer_list(hf)
    except TypeError:
        raise TypeError(expected) from None
    sites = [_sites_of(layer) for layer in layers]
    if not sites or any(s is None for s in sites):
        bad = next(layer for layer, s in zip(layers, sites, strict=True) if s is None)
        raise TypeError(f"{expected} (its layer {type(bad).__name__} has another attention layout)")
    config = getattr(hf, "config", None)
    if getattr(config, "is_decoder", False):
        raise ValueError(
            f"{type(hf).__name__} is configured as a decoder (config.is_decoder=True); the geometry lens "
            "supports bidirectional encoders only"
        )
    if sites[0].family == "deberta-v2" and getattr(getattr(base, "encoder", None), "conv", None) is not None:
        raise ValueError(
            f"{type(hf).__name__} has DeBERTa-v2's convolution layer (conv_kernel_size="
            f"{getattr(config, 'conv_kernel_size', '?')}), which changes the first layer's output after the "
            "layer; the geometry lens supports DeBERTa-v2/v3 without it (conv_kernel_size=0)"
        )
    return base, layers, sites  # type: ignore[return-value]


def resolve_encoder_layers(layers: int | Sequence[int] | str, num_layers: int) -> list[int]:
    """Ascending encoder layers from ``"all"`` (``1..num_layers``), an int or a list.

    The one layer convention: ``i`` is hidden-state index ``i`` (the output of encoder layer
    ``i``), negative from the end (``-1`` = the last layer). Hidden state 0, the embeddings, has
    no attention and is refused. Repeated indices count once (as in every lens).

    Raises:
        TypeError: not an int, a list of ints or ``"all"``.
        ValueError: an index outside ``1..num_layers`` / ``-num_layers..-1``, 0, an empty list or
            another string.
    """
    spec = check_layers(layers)
    if spec == "all":
        return list(range(1, num_layers + 1))
    for item in [spec] if isinstance(spec, int) else spec:
        if item == 0 or not -num_layers <= item <= num_layers:
            raise ValueError(
                f"layers: index {item} is not an encoder layer of this model; the geometry lens reads "
                f"encoder layers 1..{num_layers} (or -{num_layers}..-1 from the end); 0, the embeddings, "
                "has no attention"
            )
    return sorted(resolve_layers(spec, num_layers))


# ---------------------------------------------------------------------------------- hooks


class GeometryCapture:
    """Forward hooks that capture each selected layer's geometry inputs (see the module doc).

    Hooks exist only between :meth:`attach` and :meth:`detach` (or inside ``with capture:``);
    outside them the model runs untouched. Tensors are detached views of what the forward
    computed anyway; nothing is copied or recomputed during the forward.

    Args:
        model: a supported Hugging Face model (:func:`attention_sites`), or a module holding one
            as ``.model``.
        layers: ``"all"`` (default: ``1..L``), an encoder layer or a list (negative from the end).
        attention: ``"auto"`` (default), ``"model"`` (the model's own probabilities; eager
            attention for BERT and DistilBERT) or ``"none"``.
        on_layer: called as ``on_layer(layer, capture)`` as soon as a layer's output is known;
            the capture is then dropped and nothing is kept (streaming).
        reduce: called as ``reduce(layer, capture)`` as soon as a layer's output is known; what it
            returns is kept in ``CapturedForward.layers[layer]`` (e.g. per-sequence numbers), so
            a forward holds at most one layer's tensors. ``None`` (and no ``on_layer``): the
            :class:`LayerCapture` itself is kept until :meth:`pop`.

    Raises:
        TypeError: not a supported model.
        ValueError: a bad ``layers`` or ``attention``; ``attention="model"`` without eager
            attention (the message says how to enable it); both ``on_layer`` and ``reduce``.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: int | Sequence[int] | str = "all",
        attention: str = "auto",
        on_layer: Callable[[int, LayerCapture], None] | None = None,
        reduce: Callable[[int, LayerCapture], Any] | None = None,
    ) -> None:
        if attention not in ATTENTION_SOURCES:
            raise ValueError(f"attention must be one of {ATTENTION_SOURCES}; got {attention!r}")
        if on_layer is not None and reduce is not None:
            raise ValueError("GeometryCapture takes on_layer or reduce, not both")
        self.base, self.encoder_layers, self.sites = attention_sites(model)
        self.layers = resolve_encoder_layers(layers, len(self.encoder_layers))
        if attention == "model" and not any(self.sites[i - 1].scores_have_bias for i in self.layers):
            impl = getattr(getattr(self.base, "config", None), "_attn_implementation", None)
            if impl != "eager":
                raise ValueError(
                    f"attention='model' needs the model's own attention probabilities, which only eager "
                    f"attention returns; this model uses attn_implementation={impl!r}. To enable them, "
                    + _EAGER_HOWTO
                )
        self.attention = attention
        self.on_layer = on_layer
        self.reduce = reduce
        self.captured: list[CapturedForward] = []
        self._handles: list[Any] = []
        self._current: CapturedForward | None = None
        self._parts: dict[int, dict[str, Any]] = {}

    @property
    def family(self) -> str:
        """``"bert"``, ``"distilbert"`` or ``"deberta-v2"``."""
        return self.sites[0].family

    def num_heads(self) -> list[int]:
        """Heads of each selected layer now (in the order of :attr:`layers`)."""
        return [self.sites[i - 1].num_heads for i in self.layers]

    @property
    def attached(self) -> bool:
        """Whether the hooks are registered."""
        return bool(self._handles)

    def attach(self) -> GeometryCapture:
        """Register the hooks (idempotent)."""
        if self._handles:
            return self
        add = self._handles.append
        add(self.base.register_forward_pre_hook(self._on_model_start, with_kwargs=True))
        for i in self.layers:
            site = self.sites[i - 1]
            if site.scores_have_bias and self.attention != "none":
                add(site.self_attention.register_forward_pre_hook(_ask_for_probs, with_kwargs=True))
            add(
                site.self_attention.register_forward_hook(
                    self._self_attention_hook(i, site), with_kwargs=True
                )
            )
            if site.context_is_input:
                add(site.context.register_forward_pre_hook(self._context_input_hook(i)))
            add(site.attention_output.register_forward_hook(self._store_hook(i, "attention_output")))
            add(site.layer.register_forward_hook(self._layer_output_hook(i)))
            if self.attention == "auto" and not site.scores_have_bias:
                add(site.query.register_forward_hook(self._store_hook(i, "query")))
                add(site.key.register_forward_hook(self._store_hook(i, "key")))
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
        mask = mask.detach() != 0 if isinstance(mask, Tensor) and mask.dim() == 2 else None
        self._current = CapturedForward(mask=mask)  # type: ignore[arg-type]
        self._parts = {}
        if self.on_layer is None:
            self.captured.append(self._current)

    def _store_hook(self, layer: int, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            self._parts.setdefault(layer, {})[name] = out.detach()

        return hook

    def _context_input_hook(self, layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            self._parts.setdefault(layer, {})["context"] = args[0].detach()

        return hook

    def _self_attention_hook(self, layer: int, site: AttentionSites) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            parts = self._parts.setdefault(layer, {})
            out, probs = (
                (output[0], output[1]) if isinstance(output, tuple) and len(output) > 1 else (output, None)
            )
            probs = probs if isinstance(probs, Tensor) else None
            if self.attention == "model" and probs is None:
                raise RuntimeError(
                    f"layer {layer}'s self-attention returned no attention probabilities although "
                    "attention='model' was asked for; " + _EAGER_HOWTO
                )
            hidden = args[0] if args else kwargs.get("hidden_states")
            parts["layer_input"] = hidden.detach()
            if not site.context_is_input:
                parts["context"] = out.detach()
            parts["probs"] = None if probs is None or self.attention == "none" else probs.detach()
            parts["num_heads"] = site.num_heads
            parts["scaling"] = site.scaling

        return hook

    def _layer_output_hook(self, layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            parts = self._parts.pop(layer, None)
            if self._current is None or parts is None or "context" not in parts or "layer_input" not in parts:
                return  # the layer ran outside a hooked model call (e.g. called directly)
            out = (output[0] if isinstance(output, tuple) else output).detach()
            mask = self._current.mask
            if mask is None:
                mask = torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)
                self._current.mask = mask
            probs = parts["probs"]
            if probs is not None and probs.dim() == 3:  # DeBERTa: (batch * heads, seq, seq)
                probs = probs.view(out.shape[0], -1, *probs.shape[-2:])
            cap = LayerCapture(
                layer_input=parts["layer_input"],
                context=parts["context"],
                attention_output=parts["attention_output"],
                layer_output=out,
                mask=mask.to(out.device),
                num_heads=parts["num_heads"],
                probs=probs,
                query=parts.get("query") if probs is None else None,
                key=parts.get("key") if probs is None else None,
                scaling=parts["scaling"],
            )
            if self.on_layer is not None:
                self.on_layer(layer, cap)
            elif self.reduce is not None:
                self._current.layers[layer] = self.reduce(layer, cap)
            else:
                self._current.layers[layer] = cap

        return hook


def _ask_for_probs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Pre-hook on DeBERTa's self-attention: ``output_attentions=True`` for that module only.

    ``DisentangledSelfAttention.forward(hidden_states, attention_mask, output_attentions, ...)``
    computes its probabilities anyway and returns them only when asked; its caller drops them
    unless the user asked too, so the model's outputs are unchanged.
    """
    if len(args) > 2:
        args = (*args[:2], True, *args[3:])
    else:
        kwargs = {**kwargs, "output_attentions": True}
    return args, kwargs


# ---------------------------------------------------------------------------------- per-sequence numbers


@dataclass
class LayerStatistics:
    """One layer's geometry of each sequence of one batch (float64).

    Attributes:
        cones: ``(batch, 3)`` cone index of the layer input, the attention output, the layer output.
        heads: ``(batch, heads)`` cone index of each head's output.
        entropy: ``(batch, heads)`` attention row entropy per head, or ``None`` (``attention=False``).
    """

    cones: Tensor
    heads: Tensor
    entropy: Tensor | None

    @property
    def num_heads(self) -> int:
        return int(self.heads.shape[1])

    def __len__(self) -> int:
        return int(self.cones.shape[0])

    def take(self, n: int) -> LayerStatistics:
        """The first ``n`` sequences."""
        return LayerStatistics(
            self.cones[:n], self.heads[:n], None if self.entropy is None else self.entropy[:n]
        )


def layer_statistics(
    cap: LayerCapture, normalize: bool = True, attention: bool = True, rows: int | None = None
) -> LayerStatistics:
    """Per-sequence cone indices (four sites) and attention entropy of one layer's capture.

    Args:
        cap: a :class:`LayerCapture`.
        normalize: cone indices divided by the number of tokens (``[0, 1]``).
        attention: also the attention row entropy (from the model's probabilities, else from the
            Q/K scores without forming the probabilities).
        rows: only the first ``rows`` sequences (``None``: all).

    Raises:
        ValueError: a sequence whose mask has no valid position (from the score functions).
    """
    n = cap.mask.shape[0] if rows is None else rows
    mask = cap.mask[:n]
    cones = torch.stack(
        [
            cone_index(cap.layer_input[:n].float(), mask, normalize),
            cone_index(cap.attention_output[:n].float(), mask, normalize),
            cone_index(cap.layer_output[:n].float(), mask, normalize),
        ],
        dim=1,
    ).double()
    heads = cone_index_per_head(cap.context[:n].float(), cap.num_heads, mask, normalize).double()
    entropy = None
    if attention:
        if cap.probs is None:  # recomputed: straight from the scores, no probabilities formed
            logits = cap.attention_logits() if rows is None else _rows(cap, n).attention_logits()
            entropy = attention_entropy_from_logits(logits.float(), mask)
        else:
            entropy = attention_entropy(cap.probs[:n].float(), mask)
        entropy = entropy.double()
    return LayerStatistics(cones, heads, entropy)


def _rows(cap: LayerCapture, n: int) -> LayerCapture:
    return LayerCapture(
        cap.layer_input[:n], cap.context[:n], cap.attention_output[:n], cap.layer_output[:n], cap.mask[:n],
        cap.num_heads, None if cap.probs is None else cap.probs[:n],
        None if cap.query is None else cap.query[:n], None if cap.key is None else cap.key[:n], cap.scaling,
    )  # fmt: skip


def weight_geometry(model: nn.Module, layers: Sequence[int]) -> dict[int, dict[str, Tensor]]:
    """Directionality and Q/K spectral entropy of every head of the given encoder layers.

    Args:
        model: a supported model (:func:`attention_sites`).
        layers: encoder layers ``1..L`` (hidden-state indices).

    Returns:
        ``{layer: {"directionality": (heads,), "qk_spectral_entropy": (heads,)}}`` as float64 on
        the CPU, computed without gradients from the current weights (for DeBERTa the
        content-to-content projections ``query_proj``/``key_proj``).
    """
    _, _, sites = attention_sites(model)
    out = {}
    with torch.no_grad():
        for i in layers:
            site = sites[i - 1]
            w_q = site.query.weight.detach().double().cpu()
            w_k = site.key.weight.detach().double().cpu()
            heads = site.num_heads
            out[i] = {
                "directionality": directionality(w_q, w_k, heads),
                "qk_spectral_entropy": qk_spectral_entropy(w_q, w_k, heads),
            }
    return out
