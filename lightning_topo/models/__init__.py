"""The reference LightningModule and DataModule used by the ``lightning-topo`` CLI.

- :class:`SequenceClassifier` — ``AutoModelForSequenceClassification`` fine-tuning with
  ``encode(batch) -> EncodedBatch`` and an auxiliary-loss hook.
- :class:`TextClassificationDataModule` — CSV/TSV/JSONL files or the embedded Rotten Tomatoes
  dataset, tokenised with the model's tokenizer. Reading files and sampling batches are library
  code in :mod:`lightning_topo.data` (``read_table``, ``LengthGroupedSampler``).
- :func:`embedded_model_path` — the local all-MiniLM-L6-v2 used when no model is named.
"""

from lightning_topo.models.classifier import AuxiliaryLoss, SequenceClassifier
from lightning_topo.models.datamodule import TextClassificationDataModule
from lightning_topo.models.embedded import embedded_model_path, resolve_model_path

__all__ = [
    "AuxiliaryLoss",
    "SequenceClassifier",
    "TextClassificationDataModule",
    "embedded_model_path",
    "resolve_model_path",
]
