"""``prune_model``: scores -> keep-masks -> surgery, the one pruning step shared by the callback and the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from lightning_topo.pruning.config import DEFAULTS, PruningConfig
from lightning_topo.pruning.importance import ImportanceFn, ImportanceTable, compute_importance
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
    method: str | ImportanceFn = DEFAULTS.method,  # type: ignore[assignment]
    ratio: float | None = DEFAULTS.ratio,
    quantile: float | None = DEFAULTS.quantile,
    units: Sequence[str] = DEFAULTS.units,
    min_heads: int = DEFAULTS.min_heads,
    min_ffn: int = DEFAULTS.min_ffn,
    ffn_multiple: int = DEFAULTS.ffn_multiple,
    max_positions: int = DEFAULTS.max_positions,
    max_batches: int | None = DEFAULTS.max_batches,
    stat: str | None = DEFAULTS.stat,
    seed: int = DEFAULTS.seed,
    return_info: bool = False,
) -> nn.Module | tuple[nn.Module, PruneResult]:
    """Prune a BERT-family Hugging Face model in place to a physically smaller one.

    Scores every unit (:func:`~lightning_topo.pruning.importance.compute_importance`), turns the
    scores into per-layer keep-masks that meet the budget
    (:func:`~lightning_topo.pruning.structured.plan_keep_masks`) and removes the other units
    (:func:`~lightning_topo.pruning.structured.apply_keep_masks`). Every setting is checked first
    (:class:`~lightning_topo.pruning.config.PruningConfig`, whose fields and defaults these
    arguments are), so a bad one fails before the model is read or changed.

    Args:
        model: e.g. ``BertForSequenceClassification`` or ``RobertaForSequenceClassification`` (any
            model with the layer layout of :mod:`lightning_topo.pruning.layout`). Modified in place:
            its pruned ``nn.Linear`` modules are replaced, so optimisers must be rebuilt.
        dataloader: calibration batches (dicts with ``input_ids``, ``attention_mask``, ...); not
            needed for ``method="magnitude"``/``"random"``.
        method: a name from :data:`~lightning_topo.pruning.config.METHODS` or an importance
            callable (:data:`~lightning_topo.pruning.importance.ImportanceFn`).
        ratio: fraction of the encoder's parameters to keep, in ``(0, 1]``, relative to ``model``
            as passed in.
        quantile: instead of ``ratio``, drop each layer's units below this per-layer score quantile.
        units: which kinds to prune, subset of ``("ffn", "heads")`` (a string is one kind).
        min_heads, min_ffn: floors per layer (``>= 1``).
        ffn_multiple: with ``ratio``, pruned FFN widths are rounded down to a multiple of this.
        max_positions, max_batches: calibration size (token positions, batches).
        stat: H0 summary of the topological readings (``"max"``: longest finite bar; ``"total"``:
            sum of bars); ``None`` (default) = the method's own
            (:data:`~lightning_topo.pruning.config.METHOD_STATS`).
        seed: calibration sampling and ``random`` scores.
        return_info: also return a :class:`PruneResult` with the scores and masks.

    Returns:
        ``model`` (same object, smaller), or ``(model, info)`` with ``return_info=True``.

    Raises:
        ValueError: a bad setting (message names it), a calibration set without tokens, or a target
            that would remove every unit of a layer. The model is not modified when an error is raised.
        TypeError: not a BERT-family model.
    """
    cfg = PruningConfig(
        method=method,
        ratio=ratio,
        quantile=quantile,
        units=units,  # type: ignore[arg-type]
        min_heads=min_heads,
        min_ffn=min_ffn,
        ffn_multiple=ffn_multiple,
        max_positions=max_positions,
        max_batches=max_batches,
        stat=stat,
        seed=seed,
    )
    table = compute_importance(model, dataloader, **cfg.importance_kwargs())
    masks = plan_keep_masks(model, table, **cfg.plan_kwargs())
    apply_keep_masks(model, masks)
    if return_info:
        return model, PruneResult(table=table, masks=masks, kept=masks.kept())
    return model
