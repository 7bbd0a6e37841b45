r"""
Tree probe monitor
==================

Log the tree topological probe metric (Li, Yin, Lin 2023) of every selected layer each measured
epoch: how well a linear probe's squared norms can fit self-supervised (``ssp``/``essp``) or
treebank (``sp``) tree depths of the words, after a fixed training budget.

The callback only decides *when* to measure and *what* to log: the lens is
:class:`lightning_topo.metrics.TreeProbeScore` (a torchmetrics ``Metric``), fed by forward hooks on
the Hugging Face encoder inside any LightningModule (:class:`~lightning_topo.callbacks.lens.MetricMonitor`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_topo import plots
from lightning_topo.callbacks.lens import MetricMonitor
from lightning_topo.encoding import model_inputs, module_device
from lightning_topo.loading import load_tokenizer
from lightning_topo.metrics.tree_probe import TreeProbeScore
from lightning_topo.plots import tree_probe as plots_tree_probe
from lightning_topo.representations.capture import HiddenStateCapture
from lightning_topo.scores.checks import check_int, check_real
from lightning_topo.scores.tree_probe import (
    MONITOR_BUDGET,
    TARGET_KINDS,
    ProbeBudget,
    depths_from_conllu,
    fit_probes,
    pack_words,
    pool_wordpieces,
    probe_metric_names,
)

__all__ = ["TreeProbeMonitor"]


class TreeProbeMonitor(MetricMonitor):
    r"""Fit a depth probe per layer on a sample of validation sentences and log its held-out loss.

    Each measured epoch it keeps a seeded sample of at most ``max_samples`` validation
    sentences (of at least 2 words) read by forward hooks on the Hugging Face encoder during the
    module's own validation forward (any LightningModule; see
    :class:`~lightning_topo.callbacks.lens.MetricMonitor`), mean-pools word pieces into words
    (the tokenizer: ``tokenizer=`` or the model's own from its ``name_or_path``), holds out
    ``probe_val_fraction`` of the sampled sentences, trains one probe per layer and target rule
    (:class:`~lightning_topo.metrics.TreeProbeScore`), and logs from ``on_validation_epoch_end``:

    * ``probe/ssp`` -- the headline: ``probe/ssp/layer_{i}`` of the deepest selected layer (the
      first of ``targets``), for ``EarlyStopping``/``ModelCheckpoint``;
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
        split: ``"val"`` (default) or ``"train"``.
        max_samples: sentences sampled per measurement (and treebank sentences used); >= 4.
        probe_epochs, probe_lr, probe_batch_size, probe_val_fraction: the probe's budget
            (defaults :data:`~lightning_topo.scores.tree_probe.MONITOR_BUDGET`: 5 epochs, AdamW
            lr 1e-2, 32 sentences a step, 20% of the sample held out; the authors train 10
            epochs at lr 2e-5 on ~20k sentences; see docs/tree_probe.md for the choice).
        rank: probe rank (``None`` = hidden size // 2, as the paper).
        tokenizer: a Hugging Face WordPiece tokenizer or a folder (loaded without running code);
            ``None``: the model's own, found from its ``name_or_path``; without one every
            non-padding token is a word (with a warning).
        model_attr: dotted path of the Hugging Face model in the LightningModule (``None``: found).
        seed: seed of the sentence sample and of the probes.
        monitor_against: metric recorded next to the scores and correlated with them.
        plots: write the figure at the end of ``fit``.
        log_prefix: first component of every metric name.

    Raises:
        TypeError / ValueError: a bad argument (named in the message); at ``setup``, a layer out of range.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_topo.callbacks import TreeProbeMonitor
        >>> trainer = Trainer(callbacks=[TreeProbeMonitor(layers="all", max_samples=256)])
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        layers: int | Sequence[int] | str = "all",
        targets: Sequence[str] = TARGET_KINDS,
        treebank: str | Path | None = None,
        split: str = "val",
        max_samples: int = 256,
        probe_epochs: int = MONITOR_BUDGET.epochs,
        probe_lr: float = MONITOR_BUDGET.lr,
        probe_batch_size: int = MONITOR_BUDGET.batch_size,
        probe_val_fraction: float = MONITOR_BUDGET.val_fraction,
        rank: int | None = None,
        tokenizer: Any = None,
        seed: int = 0,
        monitor_against: str | None = "val/acc",
        plots: bool = True,
        log_prefix: str = "probe",
        model_attr: str | None = None,
    ) -> None:
        budget = ProbeBudget(
            epochs=check_int(probe_epochs, "probe_epochs", minimum=1),
            lr=check_real(probe_lr, "probe_lr", minimum=0.0, strict=True),
            batch_size=check_int(probe_batch_size, "probe_batch_size", minimum=1),
            val_fraction=check_real(probe_val_fraction, "probe_val_fraction", minimum=0.0, strict=True),
        )
        self._template = TreeProbeScore(
            layers=layers, targets=targets, max_samples=max_samples, budget=budget, rank=rank,
            tokenizer=tokenizer, seed=seed, sync_on_compute=False,  # the monitor syncs, rank 0 computes
        )  # fmt: skip
        super().__init__(
            layers=layers,
            split=split,
            max_samples=max_samples,
            model_attr=model_attr,
            every_n_epochs=every_n_epochs,
            monitor_against=monitor_against,
            plots=plots,
            log_prefix=log_prefix,
        )
        self.targets = self._template.targets
        self.budget = budget
        self.rank = self._template.rank
        self.seed = self._template.seed
        self.tokenizer = tokenizer
        self.treebank = None if treebank is None else Path(treebank)
        if self.treebank is not None and not self.treebank.is_file():
            raise FileNotFoundError(f"treebank: CoNLL-U file not found: {self.treebank}")
        self._treebank_sentences: list[Any] | None = None

    @override
    def _build_metric(self, hf_model: Any) -> TreeProbeScore:
        return self._template

    @override
    def _settings(self) -> dict[str, Any]:
        return {
            **super()._settings(),
            "targets": list(self.targets),
            "treebank": None if self.treebank is None else str(self.treebank),
            "budget": [self.budget.epochs, self.budget.lr, self.budget.batch_size, self.budget.val_fraction],
            "rank": self.rank,
            "seed": self.seed,
        }

    def metric_names(self) -> list[str]:
        """Every per-layer name logged each measurement (after ``setup`` resolved the layers)."""
        layers = self._template.selected_layers if self._template.num_layers is not None else []
        return [self._name(n) for n in probe_metric_names(layers, self.targets, self.treebank is not None)]

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.treebank is not None and self._treebank_sentences is None:
            if self._template._tables is None or self._tokenizer() is None:
                raise ValueError(
                    "TreeProbeMonitor(treebank=...) needs the model's tokenizer to encode the treebank: pass "
                    "tokenizer= (a Hugging Face tokenizer or its folder)"
                )
            self._treebank_sentences = depths_from_conllu(self.treebank)[: self.max_samples]

    def _tokenizer(self) -> Any:
        if self.tokenizer is not None and not isinstance(self.tokenizer, str | Path):
            return self.tokenizer
        path = self.tokenizer or getattr(getattr(self._hf_model, "config", None), "_name_or_path", "")
        return load_tokenizer(path) if path and Path(str(path)).is_dir() else None

    @override
    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float] | None:
        values = super()._measure(trainer, pl_module)
        if values is not None and self._treebank_sentences:
            values.update(self._on_rank_zero(trainer, self._treebank_values))
        return values

    def _treebank_values(self) -> dict[str, float]:
        """``sp`` losses on the treebank's sentences, encoded by the model now."""
        tokenizer = self._tokenizer()
        sentences = self._treebank_sentences or []
        enc = tokenizer(
            [list(s.words) for s in sentences], is_split_into_words=True, truncation=True,
            max_length=512, padding=True, return_tensors="pt",
        )  # fmt: skip
        word_ids = torch.tensor([[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(sentences))])
        depths = torch.zeros(len(sentences), max(len(s.words) for s in sentences))
        for i, s in enumerate(sentences):
            depths[i, : len(s.depths)] = torch.tensor(s.depths, dtype=torch.float32)
        capture = HiddenStateCapture(self._hf_model, keep=self._template.selected_layers)
        device = module_device(self._hf_model)
        with capture, torch.no_grad():
            self._hf_model(**{k: v.to(device) for k, v in model_inputs(enc).items()})
        hidden = capture.pop()[-1].hidden_states
        layers = self._template.selected_layers
        pooled = [pool_wordpieces(hidden[layer].detach().float().cpu(), word_ids) for layer in layers]
        mask = pooled[0][1]
        keep = mask.sum(1) >= 2
        words = pack_words(torch.stack([w[keep] for w, _ in pooled], dim=2), mask[keep])[0]  # (words, layers, d)
        target = (depths[:, : mask.shape[1]] * mask)[keep][mask[keep]]
        fitted = fit_probes(
            words, mask[keep].sum(1), [target], budget=self.budget, rank=self.rank, seed=self.seed
        )  # every layer in one batched problem
        return {self._name("sp", f"layer_{layer}"): fitted[i][0].val_loss for i, layer in enumerate(layers)}

    @override
    def _write_figures(self, trainer: pl.Trainer, out: Path) -> dict[str, Path]:
        monitor = self.monitor_against if any(r["monitor"] is not None for r in self.history) else None
        images = plots.write_history_figures(
            self.history, out, score=self.headline_name, monitor=monitor, key_prefix=self.log_prefix
        )
        kinds = [*self.targets, *(["sp"] if self.treebank is not None else [])]
        images[f"{self.log_prefix}/plots/by_layer"] = plots_tree_probe.plot_probe_by_layer(
            self.history, kinds, out / "probe_by_layer.png", prefix=self.log_prefix
        )
        plots.publish_to_wandb(
            trainer.loggers, images, self.history, monitor, table_key=self._name("history")
        )
        return images
