"""Structured surgery: physically remove FFN units and attention heads of a BERT-family encoder.

Removing FFN unit ``j`` of a layer deletes row ``j`` of ``intermediate.dense`` (weight and bias) and
column ``j`` of ``output.dense``; removing head ``h`` deletes its ``head_size`` rows of
``attention.self.{query,key,value}`` and the matching columns of ``attention.output.dense``, and
updates ``num_attention_heads``/``all_head_size`` on the attention module (BERT reshapes with
``attention_head_size``, which is unchanged). The outputs of the kept units are exactly those of the
original model, so pruning equals zeroing the removed units' outgoing weights.

Budgets: ``ratio`` = fraction of the *encoder's* parameters kept (``base_model.encoder``; embeddings,
pooler and classifier are not counted), met with a uniform allocation (the same fraction of heads and
of FFN units in every layer; heads are rounded first, then the FFN width takes the rest of the
budget, rounded down to a multiple of ``ffn_multiple`` = 8 units for fast GEMMs); or ``quantile`` =
per layer, drop the units below that quantile of the layer's scores (the paper's Q1/Q2/Q3 levels). Every layer keeps at least ``min_heads`` heads (>= 1: a layer without heads
is not representable) and ``min_ffn`` FFN units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import prune_linear_layer

from lightning_topo.pruning.config import DEFAULTS, check_int, check_quantile, check_ratio, check_units
from lightning_topo.pruning.importance import ImportanceTable, encoder_layers

__all__ = [
    "KeepMasks",
    "count_encoder_parameters",
    "layer_widths",
    "plan_keep_masks",
    "apply_keep_masks",
    "mask_units",
]


@dataclass
class KeepMasks:
    """Boolean keep-masks per layer (``True`` = keep); ``None`` leaves that kind untouched.

    Attributes:
        ffn: per layer ``(intermediate_size_l,)`` bool.
        heads: per layer ``(num_heads_l,)`` bool.
    """

    ffn: list[Tensor] | None = None
    heads: list[Tensor] | None = None

    def kept(self) -> dict[str, list[int] | None]:
        """Number of kept units per layer, ``{"ffn": [...], "heads": [...]}``."""
        return {
            "ffn": None if self.ffn is None else [int(m.sum()) for m in self.ffn],
            "heads": None if self.heads is None else [int(m.sum()) for m in self.heads],
        }


def count_encoder_parameters(model: nn.Module) -> int:
    """Number of parameters in the encoder layers (``base_model.encoder``), the budget's unit."""
    layers = encoder_layers(model)
    return sum(p.numel() for layer in layers for p in layer.parameters())


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """Current ``{"ffn": [intermediate size per layer], "heads": [heads per layer]}``."""
    layers = encoder_layers(model)
    return {
        "ffn": [layer.intermediate.dense.out_features for layer in layers],
        "heads": [layer.attention.self.num_attention_heads for layer in layers],
    }


def _unit_costs(layer: nn.Module) -> tuple[int, int]:
    """Parameters removed with one head and with one FFN unit of ``layer``."""
    attn = layer.attention.self
    d = attn.attention_head_size
    hidden = attn.query.in_features
    head = (
        3 * (d * hidden + (d if attn.query.bias is not None else 0))
        + d * layer.attention.output.dense.out_features
    )
    inter = layer.intermediate.dense
    ffn = inter.in_features + (1 if inter.bias is not None else 0) + layer.output.dense.out_features
    return head, ffn


def _top_k_mask(scores: Tensor, k: int) -> Tensor:
    """Keep the ``k`` highest scores; ties keep the lower index (stable)."""
    n = scores.numel()
    s = torch.nan_to_num(scores.double(), nan=-math.inf)
    order = torch.sort(-s, stable=True).indices
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[:k]] = True
    return mask


def check_ffn_multiple(ffn_multiple: object) -> None:
    """Raise ``ValueError`` unless ``ffn_multiple`` is an ``int >= 1`` (``bool`` is refused)."""
    check_int("ffn_multiple", ffn_multiple, 1, hint=" (1 disables rounding)")


def plan_keep_masks(
    model: nn.Module,
    table: ImportanceTable,
    *,
    ratio: float | None = DEFAULTS.ratio,
    quantile: float | None = DEFAULTS.quantile,
    units: Sequence[str] = DEFAULTS.units,
    min_heads: int = DEFAULTS.min_heads,
    min_ffn: int = DEFAULTS.min_ffn,
    ffn_multiple: int = DEFAULTS.ffn_multiple,
) -> KeepMasks:
    """Turn scores into keep-masks that meet a budget.

    Args:
        model: the model the scores belong to (widths are read from it).
        table: scores from :func:`~lightning_topo.pruning.importance.compute_importance`.
        ratio: fraction of encoder parameters to keep, in ``(0, 1]`` (default 0.6). Ignored when
            ``quantile`` is given.
        quantile: per-layer quantile in ``[0, 1)``: each layer drops its ``floor(quantile * n)``
            lowest-scoring units of every kind in ``units`` (Q1/Q2/Q3 = 0.25/0.5/0.75).
        units: kinds that may be pruned, subset of ``("ffn", "heads")``.
        min_heads: floor of heads per layer (``>= 1``; removing every head is not supported).
        min_ffn: floor of FFN units per layer (``>= 1``).
        ffn_multiple: with ``ratio``, every pruned layer's FFN width is rounded down to a multiple
            of this (default 8; ``1`` disables). GEMMs on widths that are not a multiple of the
            SIMD width run markedly slower: on a 2-core AVX2 CPU, MiniLM pruned to 7 heads x 928
            units per layer ran about 1.8x faster than the full model, 7 x 933 only about 1.7x
            (``docs/pruning.md``, benchmark).
            Rounding down keeps the budget (the kept ratio may fall slightly below ``ratio``).
            A layer whose width is below ``ffn_multiple`` or not pruned keeps its width as is.

    Raises:
        ValueError: ``ratio`` outside ``(0, 1]``, ``quantile`` outside ``[0, 1)``, floors below 1, a
            kind in ``units`` that ``table`` did not score, or a budget below what the floors keep.
    """
    units = check_units(units)
    check_ffn_multiple(ffn_multiple)
    min_heads = check_int("min_heads", min_heads, 1, hint=" (a layer needs at least one head)")
    min_ffn = check_int("min_ffn", min_ffn, 1, hint=" (a layer needs at least one FFN unit)")
    quantile = check_quantile(quantile)
    if quantile is None:
        ratio = check_ratio(ratio)
    for kind in units:
        if table.scores(kind) is None:
            raise ValueError(
                f"the importance table has no {kind!r} scores; compute them with units including {kind!r}"
            )
    layers = encoder_layers(model)
    widths = layer_widths(model)
    n_layers = len(layers)
    for kind in units:
        got = [s.numel() for s in table.scores(kind)]  # type: ignore[union-attr]
        if got != widths[kind]:
            raise ValueError(f"{kind} scores have sizes {got} but the model's layers have {widths[kind]}")

    if quantile is not None:
        counts = {
            kind: [max(floor, n - math.floor(quantile * n)) for n in widths[kind]]
            for kind, floor in (("heads", min_heads), ("ffn", min_ffn))
        }
        counts = {k: [min(c, n) for c, n in zip(counts[k], widths[k], strict=True)] for k in counts}
    else:
        costs = [_unit_costs(layer) for layer in layers]
        total = count_encoder_parameters(model)
        target = float(ratio) * total

        def count(kind: str, f: float) -> list[int]:
            floor = min_heads if kind == "heads" else min_ffn
            if kind not in units:
                return list(widths[kind])
            kept = [min(n, max(floor, round(f * n))) for n in widths[kind]]
            if kind == "ffn" and ffn_multiple > 1:
                kept = [
                    k if k == n or k < ffn_multiple else max(floor, k - k % ffn_multiple)
                    for k, n in zip(kept, widths[kind], strict=True)
                ]
            return kept

        def size(heads: list[int], ffn: list[int]) -> float:
            removed = sum(
                (widths["heads"][i] - heads[i]) * costs[i][0] + (widths["ffn"][i] - ffn[i]) * costs[i][1]
                for i in range(n_layers)
            )
            return total - removed

        floor_size = size(count("heads", 0.0), count("ffn", 0.0))
        if floor_size > target + 1e-9:
            raise ValueError(
                f"ratio={ratio} keeps {target:.0f} of {total} encoder parameters, but the floors "
                f"(min_heads={min_heads}, min_ffn={min_ffn} per layer, units={units}) already keep "
                f"{floor_size:.0f} ({floor_size / total:.3f}); raise ratio, lower the floors or prune more unit kinds"
            )
        # 1) the largest common fraction f that fits; 2) heads fixed at f, FFN fills the rest.
        f = _bisect(lambda t: size(count("heads", t), count("ffn", t)) <= target)
        heads = count("heads", f)
        g = _bisect(lambda t: size(heads, count("ffn", t)) <= target, lo=f)
        counts = {"heads": heads, "ffn": count("ffn", g)}

    masks = KeepMasks()
    for kind in units:
        per_layer = table.scores(kind)
        sel = [_top_k_mask(per_layer[i], counts[kind][i]) for i in range(n_layers)]  # type: ignore[index]
        if kind == "ffn":
            masks.ffn = sel
        else:
            masks.heads = sel
    return masks


def _bisect(fits, lo: float = 0.0, hi: float = 1.0, iters: int = 40) -> float:
    """Largest ``t`` in ``[lo, hi]`` with ``fits(t)`` (``fits`` monotone, ``fits(lo)`` true)."""
    if fits(hi):
        return hi
    for _ in range(iters):
        mid = (lo + hi) / 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _indices(mask: Tensor, n: int, what: str, layer: int) -> Tensor:
    mask = torch.as_tensor(mask, dtype=torch.bool).flatten().cpu()
    if mask.numel() != n:
        raise ValueError(f"{what} keep-mask of layer {layer} has {mask.numel()} entries; the layer has {n}")
    if not bool(mask.any()):
        raise ValueError(
            f"the {what} keep-mask of layer {layer} removes every unit; keep at least one "
            "(removing a whole layer's heads or FFN is not supported)"
        )
    return mask.nonzero().squeeze(1)


@torch.no_grad()
def apply_keep_masks(model: nn.Module, masks: KeepMasks) -> nn.Module:
    """Physically remove the masked-out units of ``model`` in place and return it.

    Updates ``num_attention_heads``/``all_head_size`` of every attention module and records the new
    widths in ``model.config.intermediate_sizes`` / ``model.config.num_heads_per_layer`` (and
    ``intermediate_size`` when all layers share one width). Parameters of the new layers are new
    tensors: optimisers built before must be rebuilt.

    Raises:
        ValueError: a mask of the wrong length or one that removes every unit of a layer.
    """
    layers = encoder_layers(model)
    for kind, per_layer in (("ffn", masks.ffn), ("heads", masks.heads)):
        if per_layer is not None and len(per_layer) != len(layers):
            raise ValueError(f"{kind} masks cover {len(per_layer)} layers; the model has {len(layers)}")
    # validate everything before touching the model
    ffn_idx = heads_idx = None
    if masks.ffn is not None:
        ffn_idx = [
            _indices(m, layer.intermediate.dense.out_features, "ffn", i)
            for i, (m, layer) in enumerate(zip(masks.ffn, layers, strict=True))
        ]
    if masks.heads is not None:
        heads_idx = [
            _indices(m, layer.attention.self.num_attention_heads, "heads", i)
            for i, (m, layer) in enumerate(zip(masks.heads, layers, strict=True))
        ]
    for i, layer in enumerate(layers):
        if ffn_idx is not None and ffn_idx[i].numel() < layer.intermediate.dense.out_features:
            idx = ffn_idx[i]
            layer.intermediate.dense = _prune(layer.intermediate.dense, idx, 0)
            layer.output.dense = _prune(layer.output.dense, idx, 1)
        if heads_idx is not None and heads_idx[i].numel() < layer.attention.self.num_attention_heads:
            attn = layer.attention.self
            d = attn.attention_head_size
            rows = (heads_idx[i].unsqueeze(1) * d + torch.arange(d)).flatten()
            attn.query = _prune(attn.query, rows, 0)
            attn.key = _prune(attn.key, rows, 0)
            attn.value = _prune(attn.value, rows, 0)
            layer.attention.output.dense = _prune(layer.attention.output.dense, rows, 1)
            attn.num_attention_heads = int(heads_idx[i].numel())
            attn.all_head_size = attn.num_attention_heads * d
    _record_widths(model)
    return model


def _prune(linear: nn.Linear, index: Tensor, dim: int) -> nn.Linear:
    new = prune_linear_layer(linear, index, dim=dim)
    new = new.to(dtype=linear.weight.dtype)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if new.bias is not None and linear.bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


def _record_widths(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if config is None:
        return
    widths = layer_widths(model)
    config.intermediate_sizes = widths["ffn"]
    config.num_heads_per_layer = widths["heads"]
    if len(set(widths["ffn"])) == 1:
        config.intermediate_size = widths["ffn"][0]


@torch.no_grad()
def mask_units(model: nn.Module, masks: KeepMasks) -> nn.Module:
    """Zero the outgoing weights of masked-out units in place (no shape change); for comparisons.

    A masked FFN unit's column of ``output.dense`` and a masked head's columns of
    ``attention.output.dense`` become 0, so the model computes what the pruned one computes.
    """
    layers = encoder_layers(model)
    for i, layer in enumerate(layers):
        if masks.ffn is not None:
            drop = ~torch.as_tensor(masks.ffn[i], dtype=torch.bool).to(layer.output.dense.weight.device)
            layer.output.dense.weight[:, drop] = 0
        if masks.heads is not None:
            attn = layer.attention.self
            drop = ~torch.as_tensor(masks.heads[i], dtype=torch.bool)
            cols = drop.repeat_interleave(attn.attention_head_size).to(
                layer.attention.output.dense.weight.device
            )
            layer.attention.output.dense.weight[:, cols] = 0
    return model
