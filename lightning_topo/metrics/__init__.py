"""The lenses as torchmetrics ``Metric`` objects: one per lens, shared by the monitors, ``analyze``
and a user's own ``validation_step``.

* :class:`PersistenceScore` -- BERTops' PSF and H0/H1 persistence statistics (``topo/...``).
* :class:`GeometryScore` -- cone index, attention entropy and directionality (``geometry/...``);
  fed from its own attention hooks (``make_capture(model)``, ``update(forward)``).
* :class:`TreeProbeScore` -- the tree topological probe's held-out loss per layer (``probe/...``).
* :class:`ConceptAlignment` -- latent concepts per layer: polar, aligned and matched shares (``concepts/...``).

Every lens takes ``update(hidden_states, attention_mask, labels, input_ids=None)`` and returns a
:class:`LensResult` from ``compute()``; states sync over DDP processes and ``reset`` through
torchmetrics.
"""

from lightning_topo.metrics.base import LensMetric, LensResult
from lightning_topo.metrics.concepts import ConceptAlignment
from lightning_topo.metrics.geometry import GeometryScore
from lightning_topo.metrics.persistence import PersistenceScore
from lightning_topo.metrics.tree_probe import TreeProbeScore

#: Lens name -> metric class (the names ``analyze(scores=...)`` and the CLI accept).
LENSES: dict[str, type[LensMetric]] = {
    "psf": PersistenceScore,
    "geometry": GeometryScore,
    "concepts": ConceptAlignment,
    "probe": TreeProbeScore,
}

__all__ = ["LENSES", "ConceptAlignment", "GeometryScore", "LensMetric", "LensResult", "PersistenceScore", "TreeProbeScore"]
