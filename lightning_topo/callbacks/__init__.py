"""Lightning callbacks: thin shells that decide when to compute a score and where to log it.

Imported lazily so that ``import lightning_topo.callbacks`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PersistenceScoreMonitor": "lightning_topo.callbacks.persistence_monitor",
    "TopologicalPruning": "lightning_topo.callbacks.pruning",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_topo.callbacks' has no attribute {name!r}")
