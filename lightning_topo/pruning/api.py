"""``prune_model``: scores -> keep-masks -> surgery, shared by the callback and the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from lightning_topo.pruning.importance import UNIT_KINDS, ImportanceTable, compute_importance
from lightning_topo.pruning.structured import KeepMasks, apply_keep_masks, plan_keep_masks

__all__ = ["prune_model", "PruneResult"]


class PruneResult(dict):
    """What :func:`prune_model` did (a ``dict`` for easy logging): ``table``, ``masks``, ``kept``."""

    @property
    def table(self) -> ImportanceTable:
        return self["table"]

    @property
    def masks(self) -> KeepMasks:
        return self["masks"]


def prune_model(
    model: nn.Module,
    dataloader: Iterable[Mapping[str, Any]] | None = None,
    *,
    method: str = "topological",
    ratio: float | None = 0.6,
    quantile: float | None = None,
    units: Sequence[str] = UNIT_KINDS,
    min_heads: int = 1,
    min_ffn: int = 1,
    ffn_multiple: int = 8,
    max_positions: int = 2048,
    max_batches: int | None = None,
    stat: str = "max",
    seed: int = 0,
    return_info: bool = False,
) -> nn.Module | tuple[nn.Module, PruneResult]:
    """Prune a BERT-family Hugging Face model in place to a physically smaller one.

    Args:
        model: e.g. ``BertForSequenceClassification`` (any model with ``base_model.encoder.layer``
            of BERT layers). Modified in place (its pruned ``nn.Linear`` modules are replaced).
        dataloader: calibration batches (dicts with ``input_ids``, ``attention_mask``, ...);
            not needed for ``method="magnitude"``/``"random"``.
        method: ``"topological"`` (default; alias of
            :data:`~lightning_topo.pruning.importance.DEFAULT_TOPOLOGICAL`),
            ``"topological-redundancy"``, ``"topological-1d"``, ``"magnitude"``, ``"activation"``,
            ``"random"``.
        ratio: fraction of the encoder's parameters to keep, in ``(0, 1]`` (default 0.6), relative
            to ``model`` as passed in.
        quantile: instead of ``ratio``, drop each layer's units below this per-layer score quantile.
        units: which kinds to prune, subset of ``("ffn", "heads")``.
        min_heads, min_ffn: floors per layer (``>= 1``).
        ffn_multiple: with ``ratio``, pruned FFN widths are rounded down to a multiple of this
            (default 8, for fast GEMMs; ``1`` keeps the exact budget). See
            :func:`~lightning_topo.pruning.structured.plan_keep_masks`.
        max_positions, max_batches: calibration size (token positions, batches).
        stat: reading B's summary (``"max"`` or ``"total"``).
        seed: calibration sampling and ``random`` scores.
        return_info: also return a :class:`PruneResult` with the scores and masks.

    Returns:
        ``model`` (same object, smaller), or ``(model, info)`` with ``return_info=True``.

    Raises:
        ValueError: bad ``ratio``/``quantile``, a calibration set without tokens, or a target that
            would remove every unit of a layer. The model is not modified when an error is raised.
        TypeError: not a BERT-family model.
    """
    if quantile is None and (ratio is None or isinstance(ratio, bool) or not 0.0 < float(ratio) <= 1.0):
        raise ValueError(f"ratio (fraction of encoder parameters kept) must be in (0, 1]; got {ratio!r}")
    table = compute_importance(
        model,
        dataloader,
        method=method,
        units=units,
        max_positions=max_positions,
        max_batches=max_batches,
        stat=stat,
        seed=seed,
    )
    masks = plan_keep_masks(
        model,
        table,
        ratio=ratio,
        quantile=quantile,
        units=units,
        min_heads=min_heads,
        min_ffn=min_ffn,
        ffn_multiple=ffn_multiple,
    )
    apply_keep_masks(model, masks)
    if return_info:
        return model, PruneResult(table=table, masks=masks, kept=masks.kept())
    return model
