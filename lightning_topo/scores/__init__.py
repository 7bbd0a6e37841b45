"""Topological scores of hidden representations: plain, differentiable functions of tensors.

``psf`` (BERTops' persistence scoring function) with its per-class form, a one-pass summary
used by :class:`~lightning_topo.callbacks.PersistenceScoreMonitor`, an auxiliary-loss module,
and the named presets both use.
"""

from __future__ import annotations

from lightning_topo.scores.presets import PRESETS, PSFPreset, get_preset
from lightning_topo.scores.psf import (
    PersistenceSummary,
    PSFLoss,
    class_diagrams,
    persistence_summary,
    psf,
    psf_from_diagrams,
    psf_per_class,
)

__all__ = [
    "PRESETS",
    "PSFLoss",
    "PSFPreset",
    "PersistenceSummary",
    "class_diagrams",
    "get_preset",
    "persistence_summary",
    "psf",
    "psf_from_diagrams",
    "psf_per_class",
]
