r"""
Tree probe monitor
==================

Log the tree topological probe metric (Li, Yin, Lin 2023) of every selected layer each measured
epoch: how well a linear probe's squared norms can fit self-supervised (``ssp``/``essp``) or
treebank (``sp``) tree depths of the words, after a fixed training budget.

The callback only decides *when* to measure and *what* to log: the word vectors come from
:class:`lightning_topo.word_vectors.WordVectorSample` and the numbers from
:func:`lightning_topo.scores.tree_probe.fit_probe`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lightning_topo.encoding import EncodedBatch, encode_batch
from lightning_topo.representations import run_on_rank_zero_and_broadcast
from lightning_topo.scores.correlation import correlation_metrics
from lightning_topo.scores.tree_probe import (
    MONITOR_BUDGET,
    TARGET_KINDS,
    ProbeBudget,
    depths_from_conllu,
    fit_probe,
    pool_wordpieces,
    vocab_tables,
)
from lightning_topo.word_vectors import WordVectorSample

__all__ = ["TreeProbeMonitor"]


class TreeProbeMonitor(Callback):
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

    Nothing is measured while ``trainer.sanity_checking``. Under DDP rank 0 fits the probes on
    its own shard's sample and broadcasts the values, so all ranks log the same numbers. At the
    end of ``fit`` (rank zero) a figure of the metric per layer, one line per epoch, is written
    to ``<trainer.log_dir>/probe/`` and logged to W&B when a ``WandbLogger`` is attached.

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
        super().__init__()
        _check_positive_int(every_n_epochs, "every_n_epochs")
        _check_positive_int(max_sentences, "max_sentences", minimum=4)
        targets = (targets,) if isinstance(targets, str) else tuple(targets)
        if not targets or any(t not in TARGET_KINDS for t in targets):
            raise ValueError(f"targets must be a non-empty subset of {TARGET_KINDS}; got {targets!r}")
        if rank is not None:
            _check_positive_int(rank, "rank")
        self.budget = ProbeBudget(
            epochs=probe_epochs, lr=probe_lr, batch_size=probe_batch_size, val_fraction=probe_val_fraction
        )
        self.budget.check()
        self.layers_arg = _check_layers(layers)
        self.treebank = None if treebank is None else Path(treebank)
        if self.treebank is not None and not self.treebank.is_file():
            raise FileNotFoundError(f"treebank: CoNLL-U file not found: {self.treebank}")
        self.every_n_epochs = every_n_epochs
        self.targets = targets
        self.max_sentences = max_sentences
        self.rank = rank
        self.word_pooling = word_pooling
        self.seed = int(seed)
        self.monitor_against = monitor_against
        self.plots = plots
        self.log_prefix = log_prefix.rstrip("/")
        #: One record per measured epoch: ``{"epoch", "step", "scores": {name: float}, "monitor"}``.
        self.history: list[dict[str, Any]] = []
        #: Wall time of each measurement in this process: ``{"collect_s", "fit_s"}`` (not saved).
        self.timings: list[dict[str, float]] = []
        self.layers: list[int] = []
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None
        self._sample: WordVectorSample | None = None
        self._collect_s = 0.0
        self._pending: dict[str, Any] | None = None
        self._pending_correlations: dict[str, float] = {}
        self._treebank_sentences: list[Any] | None = None

    # ------------------------------------------------------------------ Lightning plumbing
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            layers=self.layers_arg, targets=self.targets, log_prefix=self.log_prefix
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": deepcopy(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = deepcopy(state_dict.get("history", []))

    def _name(self, *parts: str) -> str:
        return "/".join([self.log_prefix, *parts])

    def _should_measure(self, trainer: pl.Trainer) -> bool:
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        num_layers = _num_hidden_layers(pl_module)
        if num_layers is not None:
            self.layers = _resolve_layers(self.layers_arg, num_layers)
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

    # ------------------------------------------------------------------ collection
    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sample, self._collect_s = None, 0.0
        if self._should_measure(trainer):
            continuation, special = self._tables if self._tables is not None else (None, None)
            self._sample = WordVectorSample(
                self.layers, self.max_sentences, seed=self.seed, continuation=continuation, special=special
            )

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._sample is None or dataloader_idx != 0:
            return
        start = time.perf_counter()
        encoded = outputs.get("encoded") if isinstance(outputs, dict) else outputs
        if not isinstance(encoded, EncodedBatch):
            with torch.no_grad():
                encoded = encode_batch(pl_module, batch)
        if not self.layers:  # a model without a readable config: resolve on the first batch
            self.layers = _resolve_layers(self.layers_arg, encoded.num_layers)
            self._sample.layers = list(self.layers)
        self._sample.add(encoded, batch)
        self._collect_s += time.perf_counter() - start

    # ------------------------------------------------------------------ measurement
    def measure(
        self, sample: WordVectorSample, pl_module: pl.LightningModule | None = None
    ) -> dict[str, float]:
        """Fit the probes on ``sample`` (and the treebank) and return ``{metric name: loss}``."""
        scores: dict[str, float] = {}
        words = sample.finalize()
        for layer in self.layers:
            hidden, mask = words[layer]
            for kind in self.targets:
                result = fit_probe(hidden, mask, kind, budget=self.budget, rank=self.rank, seed=self.seed)
                scores[self._name(kind, f"layer_{layer}")] = result.val_loss
        if self._treebank_sentences is not None and pl_module is not None:
            scores.update(self._measure_treebank(pl_module))
        return scores

    def _measure_treebank(self, pl_module: pl.LightningModule) -> dict[str, float]:
        trainer = pl_module.trainer
        tokenizer = trainer.datamodule.tokenizer
        sentences = self._treebank_sentences or []
        enc = tokenizer(
            [list(s.words) for s in sentences],
            is_split_into_words=True,
            truncation=True,
            max_length=getattr(trainer.datamodule, "max_length", 512),
            padding=True,
            return_tensors="pt",
        )
        word_ids = torch.tensor(
            [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(sentences))]
        )
        depths = torch.zeros(len(sentences), max(len(s.words) for s in sentences))
        for i, s in enumerate(sentences):
            depths[i, : len(s.depths)] = torch.tensor(s.depths, dtype=torch.float32)
        with torch.no_grad():
            encoded = encode_batch(pl_module, {k: v for k, v in enc.items() if k != "special_tokens_mask"})
        scores = {}
        for layer in self.layers:
            words, mask = pool_wordpieces(encoded.hidden_states[layer].detach().float().cpu(), word_ids)
            keep = mask.sum(1) >= 2
            target = depths[:, : words.shape[1]] * mask
            result = fit_probe(
                words[keep], mask[keep], target[keep], budget=self.budget, rank=self.rank, seed=self.seed
            )
            scores[self._name("sp", f"layer_{layer}")] = result.val_loss
        return scores

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sample, self._sample = self._sample, None
        if sample is None or not self._should_measure(trainer):
            return
        if len(sample) < 4:
            rank_zero_warn(
                f"TreeProbeMonitor: only {len(sample)} validation sentences of >= 2 words; need 4; nothing is logged"
            )
            return
        start = time.perf_counter()
        scores = run_on_rank_zero_and_broadcast(
            lambda: self.measure(sample, pl_module),
            is_global_zero=trainer.is_global_zero,
            broadcast=trainer.strategy.broadcast,
        )
        self.timings.append({"collect_s": self._collect_s, "fit_s": time.perf_counter() - start})
        for name, value in scores.items():
            pl_module.log(
                name, value, logger=bool(trainer.loggers), on_step=False, on_epoch=True, sync_dist=False
            )
        self._pending = {
            "epoch": int(trainer.current_epoch),
            "step": int(trainer.global_step),
            "scores": scores,
        }

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record, self._pending = self._pending, None
        if trainer.sanity_checking or record is None or trainer.state.fn != TrainerFn.FITTING:
            return
        value = trainer.callback_metrics.get(self.monitor_against) if self.monitor_against else None
        record["monitor"] = None if value is None else float(value)
        key = (record["epoch"], record["step"])
        self.history = [r for r in self.history if (r["epoch"], r.get("step")) != key] + [record]
        self._pending_correlations = self._correlations()

    def _correlations(self) -> dict[str, float]:
        rows = [r for r in self.history if r.get("monitor") is not None]
        if self.monitor_against is None or len(rows) < 3:
            return {}
        names = list(rows[-1]["scores"])
        series = {n: [r["scores"].get(n, math.nan) for r in rows] for n in names}
        target = [r["monitor"] for r in rows]
        out = correlation_metrics(series, target, target_name=self.monitor_against)
        return {k: float(v) for k, v in out.items()}

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        correlations, self._pending_correlations = self._pending_correlations, {}
        for name, value in correlations.items():
            pl_module.log(
                name, value, logger=bool(trainer.loggers), on_step=False, on_epoch=True, sync_dist=False
            )

    # ------------------------------------------------------------------ figures
    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.plots and self.history:
            self._write_plots(trainer)

    def plot_dir(self, trainer: pl.Trainer) -> Path:
        """Where the figure goes: ``<trainer.log_dir or default_root_dir>/probe``."""
        try:
            root = trainer.log_dir
        except Exception:  # noqa: BLE001 - some loggers have no local directory
            root = None
        return Path(root or trainer.default_root_dir) / self.log_prefix

    @rank_zero_only
    def _write_plots(self, trainer: pl.Trainer) -> Path:
        from lightning_topo import plots_tree_probe

        kinds = [
            k for k in (*self.targets, "sp") if any(f"/{k}/" in n for r in self.history for n in r["scores"])
        ]
        path = plots_tree_probe.plot_probe_by_layer(
            self.history, kinds, self.plot_dir(trainer) / "probe_by_layer.png", prefix=self.log_prefix
        )
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                plots_tree_probe.log_probe_to_wandb(logger, path, self.history, prefix=self.log_prefix)
        return path


# ---------------------------------------------------------------------------- argument checks
def _check_positive_int(value: Any, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")


def _check_layers(layers: int | Sequence[int] | str) -> int | list[int] | str:
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be an int, a list of ints or 'all'; got {layers!r}")
        return layers
    if isinstance(layers, int) and not isinstance(layers, bool):
        return layers
    out = [int(x) for x in layers]
    if not out:
        raise ValueError("layers must name at least one layer; got an empty list")
    return out


def _resolve_layers(layers: int | list[int] | str, num_layers: int) -> list[int]:
    """Non-negative hidden-state indices; ``num_layers`` encoder layers give indices 0..num_layers."""
    if layers == "all":
        return list(range(num_layers + 1))
    chosen = [layers] if isinstance(layers, int) else list(layers)
    out = []
    for layer in chosen:
        if not -(num_layers + 1) <= layer <= num_layers:
            raise ValueError(
                f"layers: {layer} is out of range; the model has hidden states 0..{num_layers} "
                f"(0 = embeddings, {num_layers} = last layer; negative counts from the end)"
            )
        out.append(layer % (num_layers + 1))
    return sorted(set(out))


def _num_hidden_layers(pl_module: torch.nn.Module) -> int | None:
    config = getattr(getattr(pl_module, "model", pl_module), "config", None)
    value = getattr(config, "num_hidden_layers", None)
    return int(value) if isinstance(value, int) else None
