"""Structured surgery: physically remove FFN units and attention heads of a BERT-family encoder.

Removing FFN unit ``j`` of a layer deletes row ``j`` of the FFN input projection (BERT's
``intermediate.dense``: weight and bias) and column ``j`` of the FFN output projection
(``output.dense``); removing head ``h`` deletes its ``head_size`` rows of every head-row projection
(query/key/value, and DeBERTa's relative-position projections) and the matching columns of the
attention output projection, and updates the head counts on the attention module (the head size is
unchanged). Module names per family are :mod:`lightning_topo.pruning.layout`'s. The outputs of the kept units are exactly those of the
original model, so pruning equals zeroing the removed units' outgoing weights.

Budgets: ``ratio`` = fraction of the *encoder's* parameters kept (``base_model.encoder``; embeddings,
pooler and classifier are not counted), met with a uniform allocation (the same fraction of heads and
of FFN units in every layer; heads are rounded first, then the FFN width takes the rest of the
budget, rounded down to a multiple of ``ffn_multiple`` for fast matrix products); or ``quantile``
= per layer, drop the units below that quantile of the layer's scores (the paper's Q1/Q2/Q3 levels).
Every layer keeps at least ``min_heads`` heads (>= 1: a layer without heads is not representable)
and ``min_ffn`` FFN units. Which tensors belong to which unit is :mod:`lightning_topo.pruning.layout`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import prune_linear_layer

from lightning_topo.pruning import layout
from lightning_topo.pruning.config import DEFAULTS, UNIT_KINDS, PruningConfig
from lightning_topo.pruning.importance import ImportanceTable
from lightning_topo.pruning.layout import encoder_layers, layer_widths

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


def _unit_costs(layer: nn.Module) -> tuple[int, int]:
    """Parameters removed with one head and with one FFN unit of ``layer``."""
    d = layout.head_size(layer)
    head = sum(
        d * (lin.in_features + (lin.bias is not None)) for _, lin in layout.head_row_projections(layer)
    )
    head += d * layout.attention_output(layer).out_features
    ffn_in = layout.ffn_input(layer)
    ffn = ffn_in.in_features + (ffn_in.bias is not None) + layout.ffn_output(layer).out_features
    return head, ffn


def _top_k_mask(scores: Tensor, k: int) -> Tensor:
    """Keep the ``k`` highest scores; ties keep the lower index (stable)."""
    n = scores.numel()
    s = torch.nan_to_num(scores.double(), nan=-math.inf)
    order = torch.sort(-s, stable=True).indices
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[:k]] = True
    return mask


def _check_table(model: nn.Module, table: ImportanceTable, units: tuple[str, ...]) -> dict[str, list[int]]:
    """The model's widths, after checking that ``table`` scores every unit of every kind in ``units``."""
    widths = layer_widths(model)
    for kind in units:
        scores = table.scores(kind)
        if scores is None:
            raise ValueError(
                f"the importance table has no {kind!r} scores; compute them with units including {kind!r}"
            )
        got = [s.numel() for s in scores]
        if got != widths[kind]:
            raise ValueError(f"{kind} scores have sizes {got} but the model's layers have {widths[kind]}")
    return widths


def _quantile_counts(
    widths: dict[str, list[int]], quantile: float, floors: dict[str, int]
) -> dict[str, list[int]]:
    """Per layer, keep ``n - floor(quantile * n)`` units of each kind (at least the floor, at most ``n``)."""
    return {
        kind: [min(n, max(floors[kind], n - math.floor(quantile * n))) for n in widths[kind]]
        for kind in widths
    }


@dataclass(frozen=True)
class _Budget:
    """Unit counts as a function of a common kept fraction, and the encoder size they give."""

    widths: dict[str, list[int]]
    costs: list[tuple[int, int]]  # per layer: parameters of one head, of one FFN unit
    total: int
    units: tuple[str, ...]
    floors: dict[str, int]
    ffn_multiple: int

    def counts(self, kind: str, fraction: float) -> list[int]:
        widths, floor = self.widths[kind], self.floors[kind]
        if kind not in self.units:
            return list(widths)
        kept = [min(n, max(floor, round(fraction * n))) for n in widths]
        if kind == "ffn" and self.ffn_multiple > 1:  # round pruned widths down, SIMD-friendly
            m = self.ffn_multiple
            kept = [
                k if k == n or k < m else max(floor, k - k % m) for k, n in zip(kept, widths, strict=True)
            ]
        return kept

    def size(self, heads: list[int], ffn: list[int]) -> int:
        removed = sum(
            (self.widths["heads"][i] - heads[i]) * head + (self.widths["ffn"][i] - ffn[i]) * unit
            for i, (head, unit) in enumerate(self.costs)
        )
        return self.total - removed


def _ratio_counts(budget: _Budget, ratio: float) -> dict[str, list[int]]:
    """Uniform allocation: the largest common fraction of heads and FFN units that fits
    ``ratio * total``; heads are fixed at that fraction, then the FFN width takes the rest."""
    target = ratio * budget.total
    floor_size = budget.size(budget.counts("heads", 0.0), budget.counts("ffn", 0.0))
    if floor_size > target + 1e-9:
        raise ValueError(
            f"ratio={ratio} keeps {target:.0f} of {budget.total} encoder parameters, but the floors "
            f"(min_heads={budget.floors['heads']}, min_ffn={budget.floors['ffn']} per layer, units={budget.units}) "
            f"already keep {floor_size:.0f} ({floor_size / budget.total:.3f}); raise ratio, lower the floors "
            "or prune more unit kinds"
        )
    f = _bisect(lambda t: budget.size(budget.counts("heads", t), budget.counts("ffn", t)) <= target)
    heads = budget.counts("heads", f)
    g = _bisect(lambda t: budget.size(heads, budget.counts("ffn", t)) <= target, lo=f)
    return {"heads": heads, "ffn": budget.counts("ffn", g)}


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
    """Turn scores into keep-masks that meet a budget; in each layer the highest scores are kept.

    Args:
        model: the model the scores belong to (widths are read from it).
        table: scores from :func:`~lightning_topo.pruning.importance.compute_importance`.
        ratio: fraction of encoder parameters to keep, in ``(0, 1]``. Ignored when ``quantile`` is given.
        quantile: per-layer quantile in ``[0, 1)``: each layer drops its ``floor(quantile * n)``
            lowest-scoring units of every kind in ``units`` (Q1/Q2/Q3 = 0.25/0.5/0.75).
        units: kinds that may be pruned, subset of ``("ffn", "heads")``.
        min_heads, min_ffn: floors per layer (``>= 1``; a layer without heads or FFN is not supported).
        ffn_multiple: with ``ratio``, every pruned layer's FFN width is rounded down to a multiple of
            this, because matrix products on such widths run faster (``1`` disables; the kept ratio
            may then fall slightly below ``ratio``). A layer that is not pruned, or whose width is
            below ``ffn_multiple``, keeps its width as is.

    Defaults come from :data:`~lightning_topo.pruning.config.DEFAULTS`.

    Raises:
        ValueError: a bad setting, a kind in ``units`` that ``table`` did not score, scores that do
            not match the model's widths, or a budget below what the floors keep.
    """
    cfg = PruningConfig(
        ratio=ratio,
        quantile=quantile,
        units=units,
        min_heads=min_heads,
        min_ffn=min_ffn,
        ffn_multiple=ffn_multiple,
    )
    layers = encoder_layers(model)
    widths = _check_table(model, table, cfg.units)
    floors = {"heads": cfg.min_heads, "ffn": cfg.min_ffn}
    if cfg.quantile is not None:
        counts = _quantile_counts(widths, cfg.quantile, floors)
    else:
        costs = [_unit_costs(layer) for layer in layers]
        budget = _Budget(widths, costs, count_encoder_parameters(model), cfg.units, floors, cfg.ffn_multiple)
        counts = _ratio_counts(budget, cfg.ratio)  # type: ignore[arg-type]
    masks = KeepMasks()
    for kind in cfg.units:
        per_layer = table.scores(kind)
        sel = [_top_k_mask(per_layer[i], counts[kind][i]) for i in range(len(layers))]  # type: ignore[index]
        setattr(masks, kind, sel)
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


def _kept_indices(model: nn.Module, masks: KeepMasks) -> tuple[list[Tensor] | None, list[Tensor] | None]:
    """Indices of the kept FFN units and heads per layer, after checking every mask."""
    layers = encoder_layers(model)
    widths = layer_widths(model)
    out: dict[str, list[Tensor] | None] = {"ffn": None, "heads": None}
    for kind in UNIT_KINDS:
        per_layer = getattr(masks, kind)
        if per_layer is None:
            continue
        if len(per_layer) != len(layers):
            raise ValueError(f"{kind} masks cover {len(per_layer)} layers; the model has {len(layers)}")
        out[kind] = [
            _indices(m, n, kind, i) for i, (m, n) in enumerate(zip(per_layer, widths[kind], strict=True))
        ]
    return out["ffn"], out["heads"]


def _shrink_heads(layer: nn.Module, keep: Tensor) -> None:
    d = layout.head_size(layer)
    rows = (keep.unsqueeze(1) * d + torch.arange(d)).flatten()
    new_rows = {path: _prune(lin, rows, 0) for path, lin in layout.head_row_projections(layer)}
    layout.replace_heads(layer, new_rows, _prune(layout.attention_output(layer), rows, 1), keep.numel())


@torch.no_grad()
def apply_keep_masks(model: nn.Module, masks: KeepMasks) -> nn.Module:
    """Physically remove the masked-out units of ``model`` in place and return it.

    FFN unit ``j``: row ``j`` of ``intermediate.dense`` (weight and bias) and column ``j`` of
    ``output.dense``. Head ``h``: its ``head_size`` rows of query/key/value and columns of
    ``attention.output.dense``; the attention module's head counts are updated. Records the new
    widths in ``model.config.intermediate_sizes`` / ``model.config.num_heads_per_layer`` (and
    ``intermediate_size`` when all layers share one width). Parameters of the shrunk layers are
    new tensors: optimisers built before must be rebuilt.

    Raises:
        ValueError: a mask of the wrong length or one that removes every unit of a layer (checked for
            every layer before the model is changed).
    """
    ffn_idx, heads_idx = _kept_indices(model, masks)
    for i, layer in enumerate(encoder_layers(model)):
        if ffn_idx is not None and ffn_idx[i].numel() < layout.ffn_input(layer).out_features:
            new_in = _prune(layout.ffn_input(layer), ffn_idx[i], 0)
            layout.replace_ffn(layer, new_in, _prune(layout.ffn_output(layer), ffn_idx[i], 1))
        if heads_idx is not None and heads_idx[i].numel() < layout.num_heads(layer):
            _shrink_heads(layer, heads_idx[i])
    layout.record_widths(model)
    return model


def _prune(linear: nn.Linear, index: Tensor, dim: int) -> nn.Linear:
    new = prune_linear_layer(linear, index, dim=dim)
    new = new.to(dtype=linear.weight.dtype)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if new.bias is not None and linear.bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


@torch.no_grad()
def mask_units(model: nn.Module, masks: KeepMasks) -> nn.Module:
    """Zero the outgoing weights of masked-out units in place (no shape change); for comparisons.

    A masked FFN unit's column of ``output.dense`` and a masked head's columns of
    ``attention.output.dense`` become 0, so the model computes what the pruned one computes.
    """
    for i, layer in enumerate(encoder_layers(model)):
        if masks.ffn is not None:
            weight = layout.ffn_output(layer).weight
            weight[:, ~torch.as_tensor(masks.ffn[i], dtype=torch.bool).to(weight.device)] = 0
        if masks.heads is not None:
            weight = layout.attention_output(layer).weight
            drop = ~torch.as_tensor(masks.heads[i], dtype=torch.bool)
            weight[:, drop.repeat_interleave(layout.head_size(layer)).to(weight.device)] = 0
    return model
