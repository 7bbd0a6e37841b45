"""Topological scores of hidden representations: plain, differentiable functions of tensors.

Modules, bottom to top (an import only points down; nothing here imports
``representations``, ``callbacks``, ``models`` or the CLI):

* ``checks`` -- argument checks (leaf); ``sampling`` -- per-class sampling (leaf);
* ``presets`` -- named settings (:data:`PRESETS`);
* ``psf`` -- BERTops' persistence scoring function and :class:`PSFLoss`;
* ``summary`` -- everything a persistence lens logs from one diagram pass per layer;
* ``correlation`` -- Pearson / Spearman of score histories against a monitored metric;
* one module per lens, imported by name (``from lightning_topo.scores.geometry import
  cone_index``): ``geometry`` (cone index, attention entropy, Q/K directionality),
  ``concepts`` (latent concepts and their alignment), ``tree_probe`` (the tree topological
  probe and its auxiliary loss).
"""

from __future__ import annotations

from lightning_topo.scores.correlation import correlation_metrics, pearson_spearman
from lightning_topo.scores.presets import POOLINGS, PRESETS, SPLITS, PSFPreset, get_preset
from lightning_topo.scores.psf import (
    PSFLoss,
    class_diagrams,
    prepare_classes,
    psf,
    psf_from_diagrams,
    psf_per_class,
)
from lightning_topo.scores.sampling import SAMPLING_METHODS, canonical_order, sample_per_class
from lightning_topo.scores.summary import (
    SCORES,
    PersistenceMetrics,
    PersistenceSummary,
    metric_names,
    persistence_metrics,
    persistence_summary,
)

__all__ = [
    "POOLINGS",
    "PRESETS",
    "PSFLoss",
    "PSFPreset",
    "PersistenceMetrics",
    "PersistenceSummary",
    "SAMPLING_METHODS",
    "SCORES",
    "SPLITS",
    "canonical_order",
    "class_diagrams",
    "correlation_metrics",
    "get_preset",
    "metric_names",
    "pearson_spearman",
    "persistence_metrics",
    "persistence_summary",
    "prepare_classes",
    "psf",
    "psf_from_diagrams",
    "psf_per_class",
    "sample_per_class",
]
