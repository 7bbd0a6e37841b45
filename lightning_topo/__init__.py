"""lightning-topo: topological data analysis for fine-tuning BERT-family models with Lightning.

Subpackages:
    topology         persistent-homology engine (diagrams, H0 MST, H1 via giotto-ph, vectorisations)
    scores           pure functions on tensors (PSF, ...)
    representations  forward hooks that capture hidden states, pooling, layer selections
    metrics          the lenses as torchmetrics Metrics (PSF, geometry, concepts, tree probe)
    pruning          topology-guided structured pruning and compressed checkpoints
    callbacks        Lightning callbacks over the above
    models           the reference LightningModule and DataModule used by the CLI

``analyze`` / ``AnalysisResult`` (:mod:`lightning_topo.analysis`) are imported on first use
(PEP 562), so ``import lightning_topo`` stays light.
"""

from typing import Any

from lightning_topo.encoding import EncodedBatch, encode_batch

__version__ = "0.1.0"

__all__ = ["AnalysisResult", "EncodedBatch", "analyze", "encode_batch", "__version__"]

_LAZY = {"analyze": "lightning_topo.analysis", "AnalysisResult": "lightning_topo.analysis"}


def __getattr__(name: str) -> Any:
    """Import ``analyze`` and ``AnalysisResult`` on first access."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_topo' has no attribute {name!r}")
