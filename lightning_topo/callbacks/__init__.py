"""Lightning callbacks: thin shells that decide when to compute a score and what to log.

Each callback lives in its own module; a new callback adds its import here and its name to
``__all__`` (see ``docs/extending.md``).
"""

from lightning_topo.callbacks.concept_monitor import ConceptAlignmentMonitor
from lightning_topo.callbacks.geometry_monitor import GeometryMonitor
from lightning_topo.callbacks.lens import LensMonitor
from lightning_topo.callbacks.persistence_monitor import PersistenceScoreMonitor
from lightning_topo.callbacks.pruning import TopologicalPruning
from lightning_topo.callbacks.psf_early_stopping import PSFEarlyStopping
from lightning_topo.callbacks.tree_probe_loss import TreeProbeRegularization
from lightning_topo.callbacks.tree_probe_monitor import TreeProbeMonitor

__all__ = [
    "ConceptAlignmentMonitor",
    "GeometryMonitor",
    "LensMonitor",
    "PSFEarlyStopping",
    "PersistenceScoreMonitor",
    "TopologicalPruning",
    "TreeProbeMonitor",
    "TreeProbeRegularization",
]
