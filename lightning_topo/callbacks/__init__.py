"""Lightning callbacks: thin shells that decide when to compute a score and what to log.

Each callback lives in its own module and is imported on first use (PEP 562), so that
``import lightning_topo.callbacks`` stays cheap and importing one callback does not import the
others' dependencies. A new callback adds one line to ``_EXPORTS`` (and to the
``TYPE_CHECKING`` block for type checkers); see ``docs/extending.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_topo.callbacks.concept_monitor import (
        ConceptAlignmentMonitor as ConceptAlignmentMonitor,
    )
    from lightning_topo.callbacks.geometry_monitor import GeometryMonitor as GeometryMonitor
    from lightning_topo.callbacks.lens import LensMonitor as LensMonitor
    from lightning_topo.callbacks.persistence_monitor import (
        PersistenceScoreMonitor as PersistenceScoreMonitor,
    )
    from lightning_topo.callbacks.pruning import TopologicalPruning as TopologicalPruning
    from lightning_topo.callbacks.psf_early_stopping import PSFEarlyStopping as PSFEarlyStopping
    from lightning_topo.callbacks.tree_probe_loss import (
        TreeProbeRegularization as TreeProbeRegularization,
    )
    from lightning_topo.callbacks.tree_probe_monitor import TreeProbeMonitor as TreeProbeMonitor

_EXPORTS = {
    "LensMonitor": "lightning_topo.callbacks.lens",
    "PersistenceScoreMonitor": "lightning_topo.callbacks.persistence_monitor",
    "GeometryMonitor": "lightning_topo.callbacks.geometry_monitor",
    "ConceptAlignmentMonitor": "lightning_topo.callbacks.concept_monitor",
    "TreeProbeMonitor": "lightning_topo.callbacks.tree_probe_monitor",
    "TreeProbeRegularization": "lightning_topo.callbacks.tree_probe_loss",
    "TopologicalPruning": "lightning_topo.callbacks.pruning",
    "PSFEarlyStopping": "lightning_topo.callbacks.psf_early_stopping",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_topo.callbacks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*(n for n in globals() if not n.startswith("_")), *_EXPORTS])
