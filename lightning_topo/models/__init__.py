"""The reference LightningModule and DataModule used by the ``lightning-topo`` CLI.

- :class:`SequenceClassifier` — ``AutoModelForSequenceClassification`` fine-tuning with
  ``encode(batch) -> EncodedBatch`` and an auxiliary-loss hook.
- :class:`TextClassificationDataModule` — CSV/TSV/JSONL files or the embedded Rotten Tomatoes
  dataset, tokenised with the model's tokenizer. Reading files and sampling batches are library
  code in :mod:`lightning_topo.data` (``read_table``, ``LengthGroupedSampler``).
- :func:`embedded_model_path` — the local all-MiniLM-L6-v2 used when no model is named.

Exports are imported lazily so that ``import lightning_topo.models`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "SequenceClassifier": "lightning_topo.models.classifier",
    "AuxiliaryLoss": "lightning_topo.models.classifier",
    "TextClassificationDataModule": "lightning_topo.models.datamodule",
    "embedded_model_path": "lightning_topo.models.embedded",
    "resolve_model_path": "lightning_topo.models.embedded",
}

__all__ = [
    "AuxiliaryLoss",
    "SequenceClassifier",
    "TextClassificationDataModule",
    "embedded_model_path",
    "resolve_model_path",
]

if TYPE_CHECKING:  # pragma: no cover
    from lightning_topo.models.classifier import AuxiliaryLoss, SequenceClassifier
    from lightning_topo.models.datamodule import TextClassificationDataModule
    from lightning_topo.models.embedded import embedded_model_path, resolve_model_path


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_topo.models' has no attribute {name!r}")
