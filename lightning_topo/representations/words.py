"""A capped, seeded sample of whole sentences' word vectors, collected batch by batch.

Used by :class:`~lightning_topo.callbacks.TreeProbeMonitor`: during the validation loop each
batch's :class:`~lightning_topo.encoding.EncodedBatch` is offered to
:class:`WordVectorSample`, which keeps at most ``max_sentences`` sentences (a bottom-k sample
by seeded random keys: uniform over the split) and
their word vectors at the selected layers. A sentence's key depends only on its tokens
(:func:`~lightning_topo.scores.tree_probe.sentence_keys`), so the sample is the same whatever the
batching or the sharding over processes (``finalize(gather=...)`` merges the shards). Word pieces are mean-pooled into words by the
WordPiece rule of :func:`lightning_topo.scores.tree_probe.wordpiece_word_ids` (the tree probe's
pooling; the concept lens's :mod:`lightning_topo.representations.tokens` takes a word's last piece instead).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_topo.encoding import EncodedBatch
from lightning_topo.scores.tree_probe import pool_wordpieces, sentence_keys, wordpiece_word_ids

__all__ = ["WordVectorSample", "token_word_ids"]


def token_word_ids(attention_mask: Tensor) -> Tensor:
    """Every real token its own word (no tokenizer known): ``(batch, seq)`` ids, ``-1`` = padding."""
    real = attention_mask != 0
    ids = real.long().cumsum(1) - 1
    return torch.where(real, ids, torch.full_like(ids, -1))


class WordVectorSample:
    """Bottom-k sample of sentences with their word vectors at several layers.

    Args:
        layers: hidden-state indices to keep (0 = embeddings), non-negative.
        max_sentences: keep at most this many sentences.
        min_words: sentences with fewer words are skipped (a tree needs 2). Default 2.
        seed: seed of the sentence keys; the same seed and batches give the same sample.
        continuation, special: ``(vocab,)`` bool tables (``vocab_tables(tokenizer)``); ``None``:
            each non-padding token is a word.
    """

    def __init__(
        self,
        layers: Sequence[int],
        max_sentences: int,
        min_words: int = 2,
        seed: int = 0,
        continuation: Tensor | None = None,
        special: Tensor | None = None,
    ) -> None:
        self.layers = [int(i) for i in layers]
        self.max_sentences = int(max_sentences)
        self.min_words = int(min_words)
        self.continuation = continuation
        self.special = special
        self.seed = int(seed)
        self._keys = torch.empty(0, dtype=torch.float64)
        self._words: list[dict[int, Tensor]] = []
        self.num_batches = 0
        self.num_sentences_seen = 0

    def word_ids(self, encoded: EncodedBatch, batch: Mapping[str, Any]) -> Tensor:
        """``(batch, seq)`` word index of each token of ``encoded`` (``-1`` = none)."""
        mask = encoded.attention_mask.detach().cpu()
        if self.continuation is None or self.special is None:
            return token_word_ids(mask)
        return wordpiece_word_ids(batch["input_ids"].detach().cpu(), self.continuation, self.special, mask)

    def add(self, encoded: EncodedBatch, batch: Mapping[str, Any]) -> None:
        """Offer one batch; keeps the sentences whose key is among the ``max_sentences`` smallest."""
        word_ids = self.word_ids(encoded, batch)
        n = word_ids.shape[0]
        keys = sentence_keys(batch["input_ids"], encoded.attention_mask, self.seed)
        self.num_batches += 1
        self.num_sentences_seen += n
        eligible = (word_ids.max(1).values + 1) >= self.min_words
        rows = eligible.nonzero().flatten()
        if rows.numel() == 0:
            return
        all_keys = torch.cat([self._keys, keys[rows]])
        keep = torch.sort(all_keys, stable=True).indices[: self.max_sentences]
        old = len(self._keys)
        new_keep = keep[keep >= old]
        new_rows = rows[new_keep - old]
        pooled = {}
        for layer in self.layers:
            hidden = encoded.hidden_states[layer].detach()
            words, mask = pool_wordpieces(
                hidden[new_rows.to(hidden.device)].float().cpu(), word_ids[new_rows]
            )
            pooled[layer] = (words, mask.sum(1))
        fresh = {}
        for j, k in enumerate(new_keep.tolist()):
            count = int(pooled[self.layers[0]][1][j])
            fresh[k] = {layer: pooled[layer][0][j, :count].clone() for layer in self.layers}
        self._words = [self._words[k] if k < old else fresh[k] for k in keep.tolist()]
        self._keys = all_keys[keep]

    def __len__(self) -> int:
        return len(self._words)

    def finalize(self, gather: Callable[[Tensor], Tensor] | None = None) -> dict[int, tuple[Tensor, Tensor]]:
        """``{layer: (words (n, max_words, d) float32, mask (n, max_words) bool)}`` in key order.

        Args:
            gather: under several processes, ``partial(gather_variable, all_gather=
                trainer.strategy.all_gather)``: every process's sample is gathered and the
                ``max_sentences`` smallest keys of the union are kept (a sentence seen twice,
                e.g. repeated by a ``DistributedSampler`` to even out the shards, counts once).
                Every process must call it.
        """
        lengths = torch.tensor([e[self.layers[0]].shape[0] for e in self._words], dtype=torch.long)
        width = int(lengths.max()) if len(lengths) else 0
        if gather is not None:
            width = int(gather(torch.tensor([width])).max())
        out, keys = {}, self._keys
        for layer in self.layers:
            dim = self._words[0][layer].shape[1] if self._words else 0
            if gather is not None:
                dim = int(gather(torch.tensor([dim])).max())
            words = torch.zeros(len(self._words), width, dim)
            for i, entry in enumerate(self._words):
                words[i, : entry[layer].shape[0]] = entry[layer]
            out[layer] = gather(words) if gather is not None else words
        counts = gather(lengths) if gather is not None else lengths
        if gather is not None:
            keys = gather(self._keys)
        order = torch.sort(keys, stable=True).indices
        first = torch.ones(len(order), dtype=torch.bool)
        first[1:] = keys[order][1:] != keys[order][:-1]  # drop repeats of a sentence
        order = order[first][: self.max_sentences]
        mask = torch.arange(width)[None, :] < counts[order][:, None]
        return {layer: (words[order], mask) for layer, words in out.items()}
