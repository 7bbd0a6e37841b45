r"""
Geometry monitor
================

Log the geometry of BERT (Bonino et al. 2025) during fine-tuning: the cone index of each
layer's input, head outputs, attention output and layer output, the entropy of the attention
rows and the directionality of every head's ``W_q W_kᵀ``.

The callback decides *when* to measure, *what* to log and draws the figures, nothing more: the
lens is :class:`lightning_topo.metrics.GeometryScore` (a torchmetrics ``Metric``), fed by its
forward hooks on the Hugging Face encoder inside any LightningModule
(:class:`~lightning_topo.callbacks.lens.MetricMonitor`); the figures come from
:mod:`lightning_topo.plots.geometry` and :mod:`lightning_topo.plots`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_topo import plots
from lightning_topo.callbacks.lens import MetricMonitor
from lightning_topo.metrics import GeometryScore
from lightning_topo.plots import geometry as plots_geometry

__all__ = ["GeometryMonitor"]


class GeometryMonitor(MetricMonitor):
    r"""Measure cone index, attention entropy and directionality of every layer at validation.

    At every validation run of a measured epoch (also the mid-epoch runs of
    ``val_check_interval < 1``; never the sanity check), forward hooks on the Hugging Face
    encoder found in the module reduce every validation forward of it on the fly to
    per-sequence numbers: **no second pass** over the validation set, nothing asked of
    ``forward`` or of what ``validation_step`` returns. Logged from ``on_validation_epoch_end``
    (means over the measured sequences of all processes, cones normalised to ``[0, 1]`` unless
    ``normalize=False``; ``geometry`` is ``log_prefix``):

    * ``geometry/cone`` -- the headline: cone index of the deepest selected layer's output, for
      ``EarlyStopping(monitor="geometry/cone")`` / ``ModelCheckpoint`` without a layer count;
    * for every selected layer ``i`` (hidden-state index: the output of encoder layer ``i``):
      ``geometry/cone/layer_{i}`` (layer output), ``.../input``, ``.../heads`` (mean over heads
      of each head's output), ``.../attention_output`` (after the output projection, residual
      and LayerNorm);
    * ``geometry/attention_entropy/layer_{i}`` -- row entropy (nats) of the attention
      probabilities, mean over valid queries and heads (not with ``attention="none"``);
    * ``geometry/directionality/layer_{i}`` -- symmetric share of ``W_q^h W_k^hᵀ``, mean over
      heads; ``geometry/qk_spectral_entropy/layer_{i}`` -- entropy of its singular values;
    * once 3 measurements exist, ``{metric}/pearson_{m}`` and ``{metric}/spearman_{m}``
      (``m`` = ``monitor_against`` with ``/`` -> ``_``), the correlation over measurements with
      ``monitor_against``, logged from ``on_train_epoch_end``.

    Per-head values (layers x heads) go into the history (``heads``) and the figures: at the end
    of ``fit`` (global rank 0) PNGs under ``<trainer.log_dir>/geometry/``: the headline against
    the epoch and against ``monitor_against``, the cone index of every layer and site against
    the epoch (``cone_vs_epoch.png``), and per measurement layers x heads heat maps
    (``heads_epoch{e}_step{s}.png``: attention entropy, directionality, cone index of head
    outputs, spectral entropy); with a ``WandbLogger`` also as W&B images and a
    ``geometry/history`` table. The history survives a resume; the ``state_key`` is built from
    every setting, so a checkpoint measured with other settings is not restored into this monitor
    (one rule for every lens: one series is never measured two ways).

    **DDP**: every process reduces its shard; the sums are synchronised by torchmetrics, so every
    process logs the same values (with ``sync_dist=True``: no Lightning warning); the weight
    scores come from the (replicated) weights. Nothing is computed on rank 0 alone.

    Models: BERT-family encoders (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM), DistilBERT and
    DeBERTa-v2/v3 (:mod:`lightning_topo.representations.geometry`); others are refused at
    ``setup`` with one line naming them.

    Args:
        every_n_epochs: measure when ``(current_epoch + 1) % every_n_epochs == 0``.
        layers: ``"all"`` (default: every encoder layer ``1..L``), an encoder layer or a list
            (hidden-state indices, negative from the end; 0, the embeddings, has no attention).
        attention: where attention probabilities come from: ``"auto"`` (default; the model's
            own under eager attention, otherwise recomputed from the query/key projections the
            forward computed), ``"model"`` (eager attention required) or ``"none"`` (no entropy).
        normalize: divide each cone index by the sequence's token count. Default ``True``.
        max_samples: the most sequences one measurement reads per process (``None``: all).
            Default 512, about half the quickstart's validation split, to keep the cost small
            (docs/geometry.md).
        split: ``"val"`` (default; the validation forwards) or ``"train"`` (the training
            dataloader re-read through the encoder at the end of validation, eval mode).
        model_attr: dotted path of the Hugging Face model in the LightningModule (``None``: found).
        labels_fn: accepted for the one API of every lens; the geometry lens needs no labels.
        monitor_against: metric recorded with each measurement and correlated with the scores
            (``None``: none).
        plots: write the figures at the end of ``fit``.
        log_prefix: first component of every metric name. Default ``"geometry"``.

    Raises:
        TypeError, ValueError: a bad argument (the message names it); at ``setup``: an
            unsupported model, layers out of range, ``attention="model"`` without eager attention
            (the message says how to enable it); in ``on_train_start``, before any training step:
            a sequence of the measured split whose attention mask has no valid position, or
            non-finite or identical hidden states on its first batch.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.callbacks import EarlyStopping
        >>> from lightning_topo.callbacks import GeometryMonitor
        >>> trainer = Trainer(callbacks=[GeometryMonitor(layers="all"),
        ...                              EarlyStopping(monitor="geometry/cone", mode="min", patience=3)])
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        layers: int | Sequence[int] | str = "all",
        attention: str = "auto",
        normalize: bool = True,
        max_samples: int | None = 512,
        split: str = "val",
        model_attr: str | None = None,
        labels_fn: Callable[[Any], Any] | None = None,
        monitor_against: str | None = "val/acc",
        plots: bool = True,
        log_prefix: str = "geometry",
    ) -> None:
        # the lens checks its own arguments: errors come at construction
        template = GeometryScore(
            layers=layers, attention=attention, normalize=normalize, max_samples=max_samples
        )
        super().__init__(
            layers=template.layers,
            split=split,
            max_samples=max_samples,
            model_attr=model_attr,
            labels_fn=labels_fn,
            every_n_epochs=every_n_epochs,
            monitor_against=monitor_against,
            plots=plots,
            log_prefix=log_prefix,
        )
        self.attention = template.attention
        self.normalize = template.normalize
        self._template = template
        self._warned_nan = False

    # ------------------------------------------------------------------ the lens

    @override
    def _build_metric(self, hf_model: Any) -> GeometryScore:
        return self._template

    @override
    def _settings(self) -> dict[str, Any]:
        return {**super()._settings(), "attention": self.attention, "normalize": self.normalize}

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.metric is not None and self._should_measure(trainer):
            # hooks rebuilt every measurement: a callback such as pruning may have changed the heads
            if self._capture is not None:
                self._capture.detach()
            self.metric.reset()
            self._capture = self.metric.make_capture(self._hf_model)
        super().on_validation_epoch_start(trainer, pl_module)

    @override
    def _scan_labels(self, loader: Any) -> tuple[dict[int, int], Any]:
        """No labels needed; refuses a sequence without any valid position (its cone index and
        attention entropy are undefined) in the batches one measurement reads, before training."""
        first = None
        seen = 0
        for i, batch in enumerate(loader):
            first = batch if first is None else first
            mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
            if not isinstance(mask, Tensor) or mask.dim() != 2:
                break  # a batch without a 2-D mask: every position is valid
            empty = (mask.sum(dim=1) == 0).nonzero().flatten().tolist()
            if empty:
                raise ValueError(
                    f"GeometryMonitor: {self.split} batch {i} has sequence(s) {empty[:10]} whose attention_mask "
                    "has no valid position (all 0); the cone index and attention entropy are undefined for "
                    f"them. Remove empty texts from the {self.split} data"
                )
            seen += int(mask.shape[0])
            if self.max_samples is not None and seen >= self.max_samples:
                break
        return {}, first

    @override
    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float] | None:
        values = super()._measure(trainer, pl_module)
        if values is not None and self.last_result is not None and not self.last_result.extras["finite"]:
            if not self._warned_nan:
                self._warned_nan = True
                bad = next(n for n, v in values.items() if v != v or abs(v) == float("inf"))
                rank_zero_warn(
                    f"GeometryMonitor logs NaN/inf (e.g. {bad}): the hidden states or weights are not finite. "
                    "EarlyStopping(check_finite=True) stops on it."
                )
        return values

    @override
    def _record_fields(self, trainer: pl.Trainer) -> dict[str, Any]:
        result = self.last_result
        if result is None:
            return {}
        return {
            "layers": list(result.layers),
            "heads": result.extras["heads"],
            "sequences": result.extras["sequences"],
        }

    # ------------------------------------------------------------------ figures

    @override
    def _write_figures(self, trainer: pl.Trainer, out: Path) -> dict[str, Path]:
        """Headline vs epoch / vs the monitored metric, cone index per layer, per-head heat maps."""
        monitor = self.monitor_against if any(r["monitor"] is not None for r in self.history) else None
        images = plots.write_history_figures(
            self.history,
            out,
            score=self._name(GeometryScore.headline),
            monitor=monitor,
            key_prefix=self.log_prefix,
        )
        images[self._name("plots", "cone_vs_epoch")] = plots_geometry.plot_cone_vs_epoch(
            self.history, self._name("cone"), out / "cone_vs_epoch.png"
        )
        for r in self.history:
            tag = f"epoch{r['epoch']}_step{r['step']}"
            images[self._name("plots", f"heads_{tag}")] = plots_geometry.plot_head_heatmaps(
                r, out / f"heads_{tag}.png"
            )
        plots.publish_to_wandb(
            trainer.loggers, images, self.history, monitor, table_key=self._name("history")
        )
        return images
