"""Fixtures for the application tests: a tiny saved BERT classifier + tokenizer and toy data."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._toy import save_tiny_model, toy_rows, write_csv


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Directory with a tiny random BertForSequenceClassification and its tokenizer (no hub)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture
def toy_csv(tmp_path) -> Path:
    """200 separable toy sentences, columns ``sentence,target,id`` with labels 0/1."""
    return write_csv(tmp_path / "toy.csv", toy_rows())


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """LightningCLI warns when it sees pytest's own argv next to ``args=``."""
    monkeypatch.setattr("sys.argv", ["lightning-topo"])


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The CLI's ``torch_threads`` changes a process-wide setting; put it back after each test."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
