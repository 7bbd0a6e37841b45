r"""The tree topological probe (Li, Yin, Lin 2023) as a torchmetrics ``Metric``.

Per batch, :meth:`TreeProbeScore.update` pools word pieces into words (the WordPiece rule of
:func:`~lightning_topo.scores.tree_probe.wordpiece_word_ids`, from ``input_ids`` and the
tokenizer's vocabulary) and keeps each sentence's word vectors at the selected layers with a
seeded key that depends only on its tokens (:func:`~lightning_topo.scores.tree_probe.sentence_keys`).
:meth:`TreeProbeScore.compute` gathers every process's sentences, keeps the ``max_samples``
smallest keys (a uniform sample of the split, the same whatever the batching or sharding; a
sentence repeated by a ``DistributedSampler`` counts once) and fits one probe per layer and
target rule, all in one batched problem (:func:`~lightning_topo.scores.tree_probe.fit_probes`);
the metric of a layer is the probe's held-out loss. Fitting probes is costly, so the monitor
computes on global rank 0 and broadcasts (``compute_on_rank_zero``).

Sentence pairs (``token_type_ids`` with a second segment): each segment is its own sentence.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

from lightning_topo.loading import load_tokenizer
from lightning_topo.metrics.base import LensMetric, LensResult
from lightning_topo.scores.checks import LayerSpec, check_choice, check_int
from lightning_topo.scores.tree_probe import (
    MONITOR_BUDGET,
    TARGET_KINDS,
    ProbeBudget,
    fit_probes,
    packed_rows,
    pool_wordpieces,
    probe_metric_names,
    sentence_keys,
    token_word_ids,
    vocab_tables,
    wordpiece_word_ids,
)

__all__ = ["TreeProbeScore"]


def _segments(attention_mask: Tensor, token_type_ids: Tensor | None) -> list[Tensor]:
    """One ``(batch, seq)`` mask per segment: the real tokens of segment 0, and of segment 1 where present."""
    real = attention_mask != 0
    if token_type_ids is None or not bool((token_type_ids[real] > 0).any()):
        return [real]
    return [real & (token_type_ids == 0), real & (token_type_ids > 0)]


class TreeProbeScore(LensMetric):
    r"""Held-out loss of a depth probe per layer and target rule, on a seeded sample of sentences.

    ``compute()`` returns a :class:`~lightning_topo.metrics.LensResult` with (names without the
    ``probe`` prefix) ``{rule}/layer_{i}`` for every rule in ``targets`` (``ssp``, ``essp``) and
    layer ``i``, and the headline ``{targets[0]}`` (the deepest selected layer's value). Lower =
    the layer's words are more tree-like along a linear projection. ``extras["sentences"]`` is the
    number of sentences used.

    Args:
        layers: hidden-state indices (default ``"all"``).
        targets: non-empty subset of ``("ssp", "essp")``.
        max_samples: sentences in the sample (default 256; >= 4).
        budget: the probe's training budget (default
            :data:`~lightning_topo.scores.tree_probe.MONITOR_BUDGET`).
        rank: probe rank (``None`` = hidden size // 2, as the paper).
        tokenizer: a Hugging Face WordPiece tokenizer or a folder to load it from (only through
            :func:`~lightning_topo.loading.load_tokenizer`, never running a folder's code);
            ``None``: the model's own (``name_or_path``) when :meth:`check_model` finds one, else
            every non-padding token is a word (with a warning).
        seed, kwargs: as :class:`~lightning_topo.metrics.LensMetric`.

    Example::

        >>> import torch
        >>> from lightning_topo.metrics import TreeProbeScore
        >>> probe = TreeProbeScore(layers=[1], targets=("ssp",), max_samples=8)
        >>> hidden = tuple(torch.randn(8, 6, 4) for _ in range(2))
        >>> probe.update(hidden, torch.ones(8, 6), None, torch.randint(5, 50, (8, 6)))
        >>> sorted(probe.compute().metrics())
        ['probe/ssp', 'probe/ssp/layer_1']
    """

    prefix = "probe"
    headline = "ssp"
    compute_on_rank_zero = True
    needs_labels = False

    def __init__(
        self,
        layers: LayerSpec = "all",
        targets: Sequence[str] = TARGET_KINDS,
        max_samples: int = 256,
        budget: ProbeBudget = MONITOR_BUDGET,
        rank: int | None = None,
        tokenizer: Any = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(layers=layers, max_samples=check_int(max_samples, "max_samples", minimum=4), seed=seed, **kwargs)
        targets = (targets,) if isinstance(targets, str) else tuple(targets)
        if not targets:
            raise ValueError(f"targets must be a non-empty subset of {TARGET_KINDS}; got an empty list")
        self.targets = tuple(check_choice(t, "targets", TARGET_KINDS) for t in dict.fromkeys(targets))
        if not isinstance(budget, ProbeBudget):
            raise TypeError(f"budget must be a ProbeBudget; got {type(budget).__name__}")
        budget.check()
        self.budget = budget
        self.rank = check_int(rank, "rank", minimum=1, allow_none=True)
        if tokenizer is not None and not isinstance(tokenizer, str | os.PathLike) and not hasattr(tokenizer, "get_vocab"):
            raise TypeError(f"tokenizer must be a Hugging Face tokenizer, a folder path or None; got {tokenizer!r}")
        self._tables: tuple[Tensor, Tensor] | None = None
        if tokenizer is not None:
            self._tables = vocab_tables(load_tokenizer(tokenizer) if isinstance(tokenizer, str | os.PathLike) else tokenizer)
        self._warned_words = False
        self.add_state("keys", default=[], dist_reduce_fx="cat")
        self.add_state("lengths", default=[], dist_reduce_fx="cat")
        self.add_state("words", default=[], dist_reduce_fx="cat")  # (words, layers, hidden), sentence by sentence

    @property
    def headline_score(self) -> str:
        return self.targets[0]

    def check_model(self, model: Any) -> None:
        """Resolve ``layers`` for ``model`` and, without a tokenizer, load the model's own.

        Raises:
            ValueError: ``layers`` out of range.
        """
        super().check_model(model)
        if self._tables is None:
            path = getattr(getattr(model, "config", None), "_name_or_path", "") or getattr(model, "name_or_path", "")
            if path and os.path.isdir(str(path)):
                try:
                    self._tables = vocab_tables(load_tokenizer(path))
                except (OSError, ValueError) as err:
                    warnings.warn(f"TreeProbeScore: the model's tokenizer at {path} could not be loaded ({err})", stacklevel=2)

    def _word_ids(self, input_ids: Tensor | None, mask: Tensor) -> Tensor:
        if self._tables is None or input_ids is None:
            if not self._warned_words:
                self._warned_words = True
                warnings.warn(
                    "TreeProbeScore: no tokenizer (pass tokenizer= or use a model saved with one), so every "
                    "non-padding token is treated as a word",
                    stacklevel=3,
                )
            return token_word_ids(mask.long().cpu())
        continuation, special = self._tables
        return wordpiece_word_ids(input_ids.detach().cpu(), continuation, special, mask.long().cpu())

    def update(
        self,
        hidden_states: Sequence[Tensor | None],
        attention_mask: Tensor | None,
        labels: Tensor | None = None,
        input_ids: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> None:
        """Keep the word vectors of the batch's sentences of at least 2 words.

        Args:
            hidden_states: ``num_layers + 1`` tensors ``(batch, seq, hidden)``.
            attention_mask: ``(batch, seq)`` (``None``: all real).
            labels: unused.
            input_ids: ``(batch, seq)`` token ids (for word pieces and the sentence keys).
            token_type_ids: ``(batch, seq)`` segment ids; a second segment is its own sentence.
        """
        if self.num_layers is None:
            self.bind(len(hidden_states) - 1)
        layers = self.selected_layers
        first = hidden_states[layers[0]]
        batch, seq = first.shape[:2]
        mask = torch.ones(batch, seq, dtype=torch.long) if attention_mask is None else attention_mask.detach().cpu()
        ids = input_ids if input_ids is not None else torch.zeros(batch, seq, dtype=torch.long)
        types = None if token_type_ids is None else token_type_ids.detach().cpu()
        for seg in _segments(mask, types):
            word_ids = self._word_ids(input_ids, seg)
            n_words = word_ids.max(1).values + 1
            rows = (n_words >= 2).nonzero().flatten()
            if rows.numel() == 0:
                continue
            keys = sentence_keys(ids.detach().cpu()[rows], seg[rows].long(), self.seed)
            per_layer = []
            for layer in layers:
                words, wmask = pool_wordpieces(
                    hidden_states[layer].detach()[rows.to(first.device)].float().cpu(), word_ids[rows]
                )
                per_layer.append(words[wmask])  # (words of these sentences, hidden), sentence by sentence
            self.words.append(torch.stack(per_layer, dim=1))
            self.keys.append(keys)
            self.lengths.append(n_words[rows])
        if sum(k.numel() for k in self.keys) > 2 * self.max_samples:
            self._keep_smallest()

    def _keep_smallest(self) -> None:
        """Drop every sentence whose key is not among the ``max_samples`` smallest (bounded memory)."""
        keys, lengths, flat = torch.cat(self.keys), torch.cat(self.lengths), torch.cat(self.words)
        keep = torch.sort(keys, stable=True).indices[: self.max_samples].sort().values
        self.keys, self.lengths = [keys[keep]], [lengths[keep]]
        self.words = [flat[packed_rows(lengths, keep)]]

    def _packed_sample(self) -> tuple[Tensor, Tensor] | None:
        """The sample in the packed layout of :func:`~lightning_topo.scores.tree_probe.fit_probes`:
        ``(words (total_words, layers, hidden), lengths (sentences,))``; ``None`` before any sentence."""
        keys = dim_zero_cat(self.keys).cpu() if len(self.keys) else torch.empty(0, dtype=torch.float64)
        if keys.numel() == 0:
            return None
        lengths = dim_zero_cat(self.lengths).long().cpu()
        order = torch.sort(keys, stable=True).indices
        first = torch.ones(len(order), dtype=torch.bool)
        first[1:] = keys[order][1:] != keys[order][:-1]  # a sentence seen twice counts once
        order = order[first][: self.max_samples]
        lens = lengths[order]
        rows = packed_rows(lengths, order)
        return dim_zero_cat(self.words).cpu()[rows], lens

    def word_sample(self) -> dict[int, tuple[Tensor, Tensor]]:
        """The sentences the probes are fitted on: the ``max_samples`` smallest keys (a sentence
        seen twice counts once), ``{layer: (words (sentences, max_words, hidden), mask
        (sentences, max_words))}`` for every selected layer; ``{}`` before any sentence."""
        packed = self._packed_sample()
        if packed is None:
            return {}
        flat, lengths = packed
        mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
        sample = {}
        for j, layer in enumerate(self.selected_layers):
            words = flat.new_zeros(*mask.shape, flat.shape[-1])
            words[mask] = flat[:, j]
            sample[layer] = (words, mask)
        return sample

    def compute(self) -> LensResult:
        """Fit the probes on :meth:`word_sample`: every layer and rule in one batched problem
        (:func:`~lightning_topo.scores.tree_probe.fit_probes`).

        NaN under every name with NaN/inf hidden states or fewer than 4 sentences (with a warning).
        """
        layers = self.selected_layers
        names = probe_metric_names(layers, self.targets)
        headline = self.headline_score
        packed = self._packed_sample()
        sentences = 0 if packed is None else len(packed[1])
        if sentences < 4:
            warnings.warn(f"TreeProbeScore logs NaN: only {sentences} sentences of >= 2 words (need 4)", stacklevel=2)
            return self._with_headline(LensResult.nan(names, headline, layers, self.prefix))
        words, lengths = packed
        if not bool(torch.isfinite(words).all()):
            warnings.warn("TreeProbeScore logs NaN: the hidden states have NaN/inf entries", stacklevel=2)
            return self._with_headline(LensResult.nan(names, headline, layers, self.prefix))
        fitted = fit_probes(words, lengths, self.targets, budget=self.budget, rank=self.rank, seed=self.seed)
        values: dict[str, Tensor] = {
            f"{kind}/layer_{layer}": torch.tensor(fitted[i][j].val_loss)
            for i, layer in enumerate(layers)
            for j, kind in enumerate(self.targets)
        }
        return self._with_headline(LensResult(values, headline, layers, self.prefix, {"sentences": sentences}))

    def _with_headline(self, result: LensResult) -> LensResult:
        deepest = max(result.layers)
        value = result.values.get(f"{self.headline_score}/layer_{deepest}", torch.tensor(math.nan))
        result.values = {self.headline_score: value, **result.values}
        return result

    def update_from(self, captured: Any, labels: Tensor | None) -> None:
        self.update(
            captured.hidden_states, captured.attention_mask, labels, captured.input_ids, captured.token_type_ids
        )
