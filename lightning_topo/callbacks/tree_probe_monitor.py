r"""
Tree probe monitor
==================

Log the tree topological probe metric (Li, Yin, Lin 2023) of every selected layer each measured
epoch: how well a linear probe's squared norms can fit self-supervised (``ssp``/``essp``) or
treebank (``sp``) tree depths of the words, after a fixed training budget.

The callback only decides *when* to measure and *what* to log: the word vectors come from
:class:`lightning_topo.representations.words.WordVectorSample` and the numbers from
:func:`lightning_topo.scores.tree_probe.fit_probe`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lightning_topo import plots
from lightning_topo.callbacks.lens import LensMonitor
from lightning_topo.encoding import EncodedBatch, encode_batch
from lightning_topo.plots import tree_probe as plots_tree_probe
from lightning_topo.representations import check_layers, resolve_layers
from lightning_topo.representations.words import WordVectorSample
from lightning_topo.scores.checks import check_bool, check_choice, check_int, check_real, check_seed
from lightning_topo.scores.tree_probe import (
    MONITOR_BUDGET,
    TARGET_KINDS,
    ProbeBudget,
    depths_from_conllu,
    fit_probe,
    pool_wordpieces,
    probe_metric_names,
    vocab_tables,
)

__all__ = ["TreeProbeMonitor"]


class TreeProbeMonitor(LensMonitor):
    r"""Fit a depth probe per layer on a sample of validation sentences and log its held-out loss.

    Each measured epoch it keeps a seeded sample of at most ``max_sentences`` validation
    sentences (of at least 2 words) from the validation loop's own forward pass (when
    ``validation_step`` returns the :class:`~lightning_topo.encoding.EncodedBatch`, as
    :class:`~lightning_topo.models.SequenceClassifier` does; otherwise it encodes each batch
    again), mean-pools word pieces into words, holds out ``probe_val_fraction`` of the sampled sentences,
    trains one probe per layer and target rule, and logs from ``on_validation_epoch_end``:

    * ``probe/ssp/layer_{i}``, ``probe/essp/layer_{i}`` -- held-out probe loss (lower = the
      layer's words are more tree-like along a linear projection);
    * ``probe/sp/layer_{i}`` -- with ``treebank``: the loss against the treebank's depths, on
      the treebank's sentences (encoded by the model at measurement time);
    * once 3 measured epochs exist, from ``on_train_epoch_end``: ``{metric}/pearson_{m}`` and
      ``{metric}/spearman_{m}`` over epochs against ``monitor_against`` (``m`` its name with
      ``_`` for ``/``).

    Nothing is measured while ``trainer.sanity_checking``. A sentence's place in the sample
    depends only on its tokens and ``seed``; under DDP the processes' samples are gathered
    (``trainer.strategy.all_gather``) into the sample one process would draw, global rank 0 fits
    the probes and ``trainer.strategy.broadcast`` hands the values to every process. With NaN/inf
    hidden states every name is logged as NaN (with a warning). At the
    end of ``fit`` (rank zero) a figure of the metric per layer, one line per epoch, is written
    to ``<trainer.log_dir>/probe/`` and logged to W&B when a ``WandbLogger`` is attached.
    The shared machinery (history, correlations, figures, state) is
    :class:`~lightning_topo.callbacks.lens.LensMonitor`'s.

    Args:
        every_n_epochs: measure when ``(current_epoch + 1) % every_n_epochs == 0``.
        layers: hidden-state index, list of indices or ``"all"`` (0 = embeddings; negative
            indices count from the end). Checked against the model at ``setup``.
        targets: subset of ``("ssp", "essp")``.
        treebank: optional CoNLL-U file: adds ``probe/sp/...`` on its sentences.
        max_sentences: sentences sampled per measurement (and treebank sentences used).
        probe_epochs, probe_lr, probe_batch_size, probe_val_fraction: the probe's budget
            (defaults :data:`~lightning_topo.scores.tree_probe.MONITOR_BUDGET`: 5 epochs, AdamW
            lr 1e-2, 32 sentences a step, 20% of the sample held out; the authors train 10
            epochs at lr 2e-5 on ~20k sentences; see docs/tree_probe.md for the choice).
        rank: probe rank (``None`` = hidden size // 2, as the paper).
        word_pooling: ``True`` pools word pieces into words with the datamodule's tokenizer
            (``trainer.datamodule.tokenizer``); ``False`` or no tokenizer: every non-padding token.
        seed: seed of the sentence sample and of the probes.
        monitor_against: metric recorded next to the scores and correlated with them.
        plots: write the figure at the end of ``fit``.
        log_prefix: first component of every metric name.

    Raises:
        ValueError: a bad argument (named in the message); at ``setup``, a layer out of range.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_topo.callbacks import TreeProbeMonitor
        >>> trainer = Trainer(callbacks=[TreeProbeMonitor(layers="all", max_sentences=256)])
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        layers: int | Sequence[int] | str = "all",
        targets: Sequence[str] = TARGET_KINDS,
        treebank: str | Path | None = None,
        max_sentences: int = 256,
        probe_epochs: int = MONITOR_BUDGET.epochs,
        probe_lr: float = MONITOR_BUDGET.lr,
        probe_batch_size: int = MONITOR_BUDGET.batch_size,
        probe_val_fraction: float = MONITOR_BUDGET.val_fraction,
        rank: int | None = None,
        word_pooling: bool = True,
        seed: int = 0,
        monitor_against: str | None = "val/acc",
        plots: bool = True,
        log_prefix: str = "probe",
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs, monitor_against=monitor_against, plots=plots, log_prefix=log_prefix
        )
        self.layers = check_layers(layers)
        targets = (targets,) if isinstance(targets, str) else tuple(targets)
        if not targets:
            raise ValueError(f"targets must be a non-empty subset of {TARGET_KINDS}; got an empty list")
        self.targets = tuple(check_choice(t, "targets", TARGET_KINDS) for t in dict.fromkeys(targets))
        self.treebank = None if treebank is None else Path(treebank)
        if self.treebank is not None and not self.treebank.is_file():
            raise FileNotFoundError(f"treebank: CoNLL-U file not found: {self.treebank}")
        self.max_sentences = check_int(max_sentences, "max_sentences", minimum=4)
        self.budget = ProbeBudget(
            epochs=check_int(probe_epochs, "probe_epochs", minimum=1),
            lr=check_real(probe_lr, "probe_lr", minimum=0.0, strict=True),
            batch_size=check_int(probe_batch_size, "probe_batch_size", minimum=1),
            val_fraction=check_real(probe_val_fraction, "probe_val_fraction", minimum=0.0, strict=True),
        )
        self.budget.check()
        self.rank = check_int(rank, "rank", minimum=1, allow_none=True)
        self.word_pooling = check_bool(word_pooling, "word_pooling")
        self.seed = check_seed(seed)
        self._layer_indices: list[int] | None = None
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None
        self._treebank_sentences: list[Any] | None = None
        self._sample: WordVectorSample | None = None

    # ------------------------------------------------------------------ state
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, targets=self.targets, log_prefix=self.log_prefix)

    # ------------------------------------------------------------------ names
    def metric_names(self) -> list[str]:
        """Every per-layer name logged each measurement (after ``setup`` resolved the layers)."""
        layers = self._layer_indices or []
        return [self._name(n) for n in probe_metric_names(layers, self.targets, self.treebank is not None)]

    # ------------------------------------------------------------------ when to measure
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        config = getattr(getattr(pl_module, "model", pl_module), "config", None)
        num_layers = getattr(config, "num_hidden_layers", None)
        if isinstance(num_layers, int):
            self._layer_indices = resolve_layers(self.layers, num_layers)
        tokenizer = getattr(getattr(trainer, "datamodule", None), "tokenizer", None)
        if self.word_pooling and tokenizer is not None:
            self._tables = vocab_tables(tokenizer)
        elif self.word_pooling:
            rank_zero_warn(
                "TreeProbeMonitor: no trainer.datamodule.tokenizer; every token is treated as a word"
            )
        if self.treebank is not None and self._treebank_sentences is None:
            if tokenizer is None:
                raise ValueError(
                    "TreeProbeMonitor(treebank=...) needs trainer.datamodule.tokenizer to encode the treebank"
                )
            self._treebank_sentences = depths_from_conllu(self.treebank)[: self.max_sentences]

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sample = None
        if self._should_measure(trainer):
            continuation, special = self._tables if self._tables is not None else (None, None)
            self._sample = WordVectorSample(
                self._layer_indices or [],
                self.max_sentences,
                seed=self.seed,
                continuation=continuation,
                special=special,
            )

    @override
    def _on_validation_batch(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, encoded: EncodedBatch | None, batch: Any
    ) -> None:
        if self._sample is None:
            return
        if encoded is None:  # validation_step does not share its forward pass
            with torch.no_grad():
                encoded = encode_batch(pl_module, batch)
        if not self._sample.layers:  # a model without a readable config: resolve on the first batch
            self._layer_indices = resolve_layers(self.layers, encoded.num_layers)
            self._sample.layers = list(self._layer_indices)
        self._sample.add(encoded, batch)

    # ------------------------------------------------------------------ what to log
    @override
    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float] | None:
        sample, self._sample = self._sample, None
        if sample is None or not sample.layers:
            return None
        words = sample.finalize(gather=self._gather(trainer))  # every process
        return self._on_rank_zero(trainer, partial(self._compute, words, pl_module))

    def _compute(
        self, words: dict[int, tuple[torch.Tensor, torch.Tensor]], pl_module: Any
    ) -> dict[str, float]:
        """Every logged value, prefixed (global rank 0 only); NaN for every name on NaN/inf states."""
        if any(not bool(torch.isfinite(h[m]).all()) for h, m in words.values()):
            rank_zero_warn(
                "TreeProbeMonitor logs NaN: the hidden states have NaN/inf entries; EarlyStopping(check_finite=True) stops on it"
            )
            return dict.fromkeys(self.metric_names(), math.nan)
        n_sentences = next(iter(words.values()))[0].shape[0]
        if n_sentences < 4:
            rank_zero_warn(
                f"TreeProbeMonitor logs NaN: only {n_sentences} validation sentences of >= 2 words (need 4)"
            )
            return dict.fromkeys(self.metric_names(), math.nan)
        values: dict[str, float] = {}
        for layer, (hidden, mask) in words.items():
            for kind in self.targets:
                result = fit_probe(hidden, mask, kind, budget=self.budget, rank=self.rank, seed=self.seed)
                values[self._name(kind, f"layer_{layer}")] = result.val_loss
        if self._treebank_sentences is not None:
            values.update(self._treebank_values(pl_module))
        return values

    def _treebank_values(self, pl_module: Any) -> dict[str, float]:
        """``sp`` losses on the treebank's sentences, encoded by the model now."""
        datamodule = pl_module.trainer.datamodule
        sentences = self._treebank_sentences or []
        enc = datamodule.tokenizer(
            [list(s.words) for s in sentences], is_split_into_words=True, truncation=True,
            max_length=getattr(datamodule, "max_length", 512), padding=True, return_tensors="pt",
        )  # fmt: skip
        word_ids = torch.tensor(
            [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(sentences))]
        )
        depths = torch.zeros(len(sentences), max(len(s.words) for s in sentences))
        for i, s in enumerate(sentences):
            depths[i, : len(s.depths)] = torch.tensor(s.depths, dtype=torch.float32)
        with torch.no_grad():
            encoded = encode_batch(pl_module, {k: v for k, v in enc.items() if k != "special_tokens_mask"})
        values = {}
        for layer in self._layer_indices or []:
            words, mask = pool_wordpieces(encoded.hidden_states[layer].detach().float().cpu(), word_ids)
            keep = mask.sum(1) >= 2
            target = depths[:, : words.shape[1]] * mask
            result = fit_probe(
                words[keep], mask[keep], target[keep], budget=self.budget, rank=self.rank, seed=self.seed
            )
            values[self._name("sp", f"layer_{layer}")] = result.val_loss
        return values

    @override
    def _write_figures(self, trainer: pl.Trainer, out: Path) -> dict[str, Path]:
        monitor = self.monitor_against if any(r["monitor"] is not None for r in self.history) else None
        layers = self._layer_indices or [0]
        headline = self._name(self.targets[0], f"layer_{layers[-1]}")
        images = plots.write_history_figures(
            self.history, out, score=headline, monitor=monitor, key_prefix=self.log_prefix
        )
        kinds = [*self.targets, *(["sp"] if self.treebank is not None else [])]
        images[f"{self.log_prefix}/plots/by_layer"] = plots_tree_probe.plot_probe_by_layer(
            self.history, kinds, out / "probe_by_layer.png", prefix=self.log_prefix
        )
        plots.publish_to_wandb(
            trainer.loggers, images, self.history, monitor, table_key=self._name("history")
        )
        return images
