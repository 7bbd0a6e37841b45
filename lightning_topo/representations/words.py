"""Word-piece to word alignment shared by the tree probe's metric and its regulariser.

Word pieces are mean-pooled into words by the WordPiece rule of
:func:`lightning_topo.scores.tree_probe.wordpiece_word_ids` (the tree probe's pooling; the concept
lens's :mod:`lightning_topo.representations.tokens` takes a word's last piece instead). Without a
tokenizer, :func:`token_word_ids` makes every real token its own word.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["token_word_ids"]


def token_word_ids(attention_mask: Tensor) -> Tensor:
    """Every real token its own word (no tokenizer known): ``(batch, seq)`` ids, ``-1`` = padding."""
    real = attention_mask != 0
    ids = real.long().cumsum(1) - 1
    return torch.where(real, ids, torch.full_like(ids, -1))
