"""The lenses as torchmetrics ``Metric`` objects: one per lens, shared by the monitors, ``analyze``
and a user's own ``validation_step``.

* :class:`PersistenceScore` -- BERTops' PSF and H0/H1 persistence statistics (``topo/...``).
* :class:`GeometryScore` -- cone index, attention entropy and directionality (``geometry/...``);
  fed from its own attention hooks (``make_capture(model)``, ``update(forward)``).

Every lens takes ``update(hidden_states, attention_mask, labels, input_ids=None)`` and returns a
:class:`LensResult` from ``compute()``; states sync over DDP processes and ``reset`` through
torchmetrics.
"""

from lightning_topo.metrics.base import LensMetric, LensResult
from lightning_topo.metrics.geometry import GeometryScore
from lightning_topo.metrics.persistence import PersistenceScore

__all__ = ["GeometryScore", "LensMetric", "LensResult", "PersistenceScore"]
