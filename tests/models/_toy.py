"""Helpers for the application tests: toy sentences, CSV writing, a tiny saved BERT + tokenizer."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import torch

POSITIVE = ["good", "great", "superb", "nice", "lovely", "fine"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "worse"]
FILLER = ["the", "movie", "film", "was", "a", "plot", "story", "and", "it", "is", "this", "actors"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + POSITIVE + NEGATIVE + FILLER


def toy_rows(n: int = 200, seed: int = 0, string_labels: bool = False) -> list[dict[str, str]]:
    """Linearly separable toy sentences: filler words plus one or two sentiment words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        y = i % 2
        words = rng.sample(FILLER, 4) + rng.sample(POSITIVE if y else NEGATIVE, rng.randint(1, 2))
        rng.shuffle(words)
        label = ("pos" if y else "neg") if string_labels else str(y)
        rows.append({"sentence": " ".join(words), "target": label, "id": str(i)})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def save_tiny_model(path: Path, num_labels: int = 2) -> Path:
    """A random 2-layer BERT classifier and a word-level BertTokenizer saved to ``path``."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForSequenceClassification(config)
    model.save_pretrained(path)
    return path
