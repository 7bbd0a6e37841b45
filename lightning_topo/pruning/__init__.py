"""Topology-guided structured pruning and compressed checkpoints (``docs/pruning.md``).

Public API (imported lazily, so ``import lightning_topo.pruning`` stays cheap):

    prune_model(model, dataloader, *, method="topological", ratio=0.6, units=("ffn", "heads"), ...)
    compute_importance(model, dataloader, *, method=...) -> ImportanceTable
    plan_keep_masks(model, table, *, ratio=..., quantile=...) -> KeepMasks
    apply_keep_masks(model, masks) -> model
    save_compressed(model, path, *, tokenizer=None, overwrite=False) / load_compressed(path)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PruningConfig": "lightning_topo.pruning.config",
    "DEFAULTS": "lightning_topo.pruning.config",
    "prune_model": "lightning_topo.pruning.api",
    "PruneResult": "lightning_topo.pruning.api",
    "compute_importance": "lightning_topo.pruning.importance",
    "collect_unit_outputs": "lightning_topo.pruning.importance",
    "ImportanceTable": "lightning_topo.pruning.importance",
    "METHODS": "lightning_topo.pruning.importance",
    "plan_keep_masks": "lightning_topo.pruning.structured",
    "apply_keep_masks": "lightning_topo.pruning.structured",
    "mask_units": "lightning_topo.pruning.structured",
    "KeepMasks": "lightning_topo.pruning.structured",
    "count_encoder_parameters": "lightning_topo.pruning.structured",
    "save_compressed": "lightning_topo.pruning.export",
    "load_compressed": "lightning_topo.pruning.export",
    "register_auto_classes": "lightning_topo.pruning.export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_topo.pruning' has no attribute {name!r}")
