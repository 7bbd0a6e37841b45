r"""
Geometry monitor
================

Log the geometry of BERT (Bonino et al. 2025) during fine-tuning: the cone index of each
layer's input, head outputs, attention output and layer output, the entropy of the attention
rows and the directionality of every head's ``W_q W_kᵀ``.

The callback only decides *when* to measure and *what* to log: hooks and running means come
from :mod:`lightning_topo.representations.geometry`, the numbers from
:mod:`lightning_topo.scores.geometry`, the figures from :mod:`lightning_topo.plots.geometry`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lightning_topo import plots
from lightning_topo.callbacks.lens import LensMonitor
from lightning_topo.encoding import EncodedBatch, encode_batch
from lightning_topo.plots import geometry as plots_geometry
from lightning_topo.representations.geometry import (
    ATTENTION_SOURCES,
    GeometryAccumulator,
    GeometryCapture,
    LayerCapture,
    weight_geometry,
)
from lightning_topo.scores.checks import check_bool, check_choice, check_int
from lightning_topo.scores.geometry import geometry_metrics

__all__ = ["GeometryMonitor"]


class GeometryMonitor(LensMonitor):
    r"""Measure cone index, attention entropy and directionality of every layer at validation.

    At every validation run of a measured epoch (also the mid-epoch runs of
    ``val_check_interval < 1``; never the sanity check), forward hooks are registered on the
    model at the start of validation and removed at its end; every validation forward of the model is reduced on the fly to
    per-sequence numbers, so when ``validation_step`` runs the model (as
    :class:`~lightning_topo.models.SequenceClassifier`'s does, returning its ``EncodedBatch``)
    **no second pass** over the validation set is made. Only if the hooks saw no forward is
    the validation dataloader read again. Logged from ``on_validation_epoch_end`` for every
    selected layer ``i`` (1-based; means over validation sequences, cones normalised to
    ``[0, 1]`` unless ``normalize=False``):

    * ``geometry/cone/layer_{i}`` -- cone index of the layer output;
    * ``geometry/cone/layer_{i}/input``, ``.../heads`` (mean over heads of each head's output),
      ``.../attention_output`` (after the output projection, residual and LayerNorm);
    * ``geometry/attention_entropy/layer_{i}`` -- row entropy (nats) of the attention
      probabilities, mean over valid queries and heads (not with ``attention="none"``);
    * ``geometry/directionality/layer_{i}`` -- symmetric share of ``W_q^h W_k^hᵀ``, mean over
      heads; ``geometry/qk_spectral_entropy/layer_{i}`` -- entropy of its singular values;
    * once 3 measurements exist, ``{metric}/pearson_{m}`` and ``{metric}/spearman_{m}``
      (``m`` = ``monitor_against`` with ``/`` -> ``_``), the correlation over measurements with
      ``monitor_against``, logged from ``on_train_epoch_end``.

    Per-head values go into the history (``heads``, layers x heads) and the figures: at the end
    of ``fit`` (global rank 0) PNGs under ``<trainer.log_dir>/geometry/``: the last layer's cone
    index against the epoch and against ``monitor_against``, the cone index of every layer and
    site against the epoch, and per measurement layers x heads heat maps (attention entropy,
    directionality, cone index of head outputs, spectral entropy); with a ``WandbLogger`` also
    as W&B images and a ``geometry/history`` table. The history survives a resume. The shared
    machinery (history, correlations, figures, state) is
    :class:`~lightning_topo.callbacks.lens.LensMonitor`'s.

    Nothing is measured while ``trainer.sanity_checking``. Under DDP every rank reduces its
    shard and the sums are added with ``trainer.strategy.reduce``, so all ranks log the same.

    Args:
        every_n_epochs: measure when ``(current_epoch + 1) % every_n_epochs == 0``.
        layers: ``"all"`` (default), a 1-based encoder layer or a list (negative from the end).
        attention: where attention probabilities come from: ``"auto"`` (default; the model's
            own under eager attention, otherwise recomputed from the query/key projections the
            forward computed), ``"model"`` (eager attention required) or ``"none"`` (no entropy).
        normalize: divide each cone index by the sequence's token count. Default ``True``.
        max_sequences: stop measuring once this many validation sequences were measured in an
            epoch (per rank; whole batches, so a few more may be used; ``None``: all). Default
            512, about half the quickstart's validation split, to keep the cost small
            (docs/geometry.md).
        max_batches: measure at most this many validation batches per epoch (per rank;
            ``None``: all).
        monitor_against: metric recorded with each measurement and correlated with the
            scores (``None``: none).
        plots: write the figures at the end of ``fit``.
        log_prefix: first component of every metric name. Default ``"geometry"``.

    Raises:
        TypeError, ValueError: a bad argument (the message names it); at ``setup``: a model that
            is not a BERT-family encoder, ``attention="model"`` without eager attention (the
            message says how to enable it), or a validation sequence with no valid position.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_topo.callbacks import GeometryMonitor
        >>> trainer = Trainer(callbacks=[GeometryMonitor(layers="all", every_n_epochs=1)])
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        layers: int | list[int] | str = "all",
        attention: str = "auto",
        normalize: bool = True,
        max_sequences: int | None = 512,
        max_batches: int | None = None,
        monitor_against: str | None = "val/acc",
        plots: bool = True,
        log_prefix: str = "geometry",
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs, monitor_against=monitor_against, plots=plots, log_prefix=log_prefix
        )
        self.layers = _check_layer_spec(layers)
        self.attention = check_choice(attention, "attention", ATTENTION_SOURCES)
        self.normalize = check_bool(normalize, "normalize")
        self.max_sequences = check_int(max_sequences, "max_sequences", minimum=1, allow_none=True)
        self.max_batches = check_int(max_batches, "max_batches", minimum=1, allow_none=True)
        #: One record per measurement: ``{"epoch", "step", "scores", "monitor", "layers", "heads",
        #: "sequences"}`` (``heads``: per-head values, layers x heads; ``sequences``: how many were measured).
        self.history: list[dict[str, Any]]
        self._capture: GeometryCapture | None = None
        self._acc: GeometryAccumulator | None = None
        self._batches = 0
        self._measured: dict[str, Any] = {}  # the record fields of the last measurement
        self._warned_nan = False

    # ------------------------------------------------------------------ Lightning plumbing

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            layers=self.layers,
            normalize=self.normalize,
            log_prefix=self.log_prefix,
            monitor_against=self.monitor_against,
        )

    @override
    def _settings(self) -> dict[str, Any]:
        return {
            **super()._settings(),
            "layers": self.layers,
            "normalize": self.normalize,
            "attention": self.attention,
        }

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Everything that can be refused is refused here, before any training step.
        GeometryCapture(pl_module, layers=self.layers, attention=self.attention)
        if stage in ("fit", "validate"):
            self._check_validation_masks(trainer)

    def _check_validation_masks(self, trainer: pl.Trainer) -> None:
        """Refuse validation sequences without any valid position (their cone index is undefined)."""
        datamodule = getattr(trainer, "datamodule", None)
        make_loader = getattr(datamodule, "val_dataloader", None)
        if not callable(make_loader):
            return  # checked batch by batch when measured
        try:
            loader = make_loader()
        except (NotImplementedError, MisconfigurationException):  # no validation split: nothing to measure
            return
        loader = loader[0] if isinstance(loader, list | tuple) and loader else loader
        for i, batch in enumerate(loader or []):
            if self.max_batches is not None and i >= self.max_batches:
                break
            mask = batch.get("attention_mask") if isinstance(batch, dict) else None
            if isinstance(mask, torch.Tensor) and mask.dim() == 2:
                empty = (mask.sum(dim=1) == 0).nonzero().flatten().tolist()
                if empty:
                    raise ValueError(
                        f"GeometryMonitor: validation batch {i} has sequence(s) {empty[:10]} whose attention_mask "
                        "has no valid position (all 0); the cone index and attention entropy are undefined for "
                        "them. Remove empty texts from the validation data"
                    )

    # ------------------------------------------------------------------ capture during validation

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release()
        if not self._should_measure(trainer):
            return
        # rebuilt every measurement: a callback such as pruning may have changed the heads
        self._capture = GeometryCapture(
            pl_module, layers=self.layers, attention=self.attention, on_layer=self._on_layer
        )
        heads = [
            int(self._capture.encoder_layers[i - 1].attention.self.num_attention_heads)
            for i in self._capture.layers
        ]
        self._acc = GeometryAccumulator(
            self._capture.layers, heads, normalize=self.normalize, attention=self.attention != "none"
        )
        self._batches = 0
        self._capture.attach()  # removed at the end of this validation epoch

    def _on_layer(self, layer: int, cap: LayerCapture) -> None:
        """Called by the forward hooks with each layer's capture: reduce it at once."""
        if self._acc is not None:
            self._acc.add(layer, cap)

    @override
    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._capture is None:
            return
        if dataloader_idx == 0 and not self._enough():
            self._capture.attach()  # a no-op while attached
        else:
            self._capture.detach()  # other dataloaders and batches beyond the caps are not measured

    def _enough(self) -> bool:
        """Whether this epoch's caps (``max_batches``, ``max_sequences``) are reached."""
        if self.max_batches is not None and self._batches >= self.max_batches:
            return True
        return (
            self.max_sequences is not None
            and self._acc is not None
            and self._acc.num_sequences >= self.max_sequences
        )

    @override
    def _on_validation_batch(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, encoded: EncodedBatch | None, batch: Any
    ) -> None:
        if self._capture is not None and self._capture.attached:
            self._batches += 1

    def _release(self) -> None:
        if self._capture is not None:
            self._capture.detach()
        self._capture = None

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._release()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._release()

    # ------------------------------------------------------------------ measurement

    @override
    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float] | None:
        capture, acc = self._capture, self._acc
        self._release()
        if capture is None or acc is None:
            return None
        if acc.num_sequences == 0:  # validation_step did not run the model: read the data once more
            self._reread(trainer, pl_module, capture)
        strategy = trainer.strategy
        means = acc.result(reduce=lambda t: strategy.reduce(t, reduce_op="sum"))  # every process
        result = geometry_metrics(means, weight_geometry(pl_module, capture.layers))
        values = {self._name(n): float(v) for n, v in result.values.items()}
        self._warn_if_not_finite(values)
        self._measured = {
            "layers": list(result.layers),
            "heads": {k: [[float(v) for v in t] for t in per_layer] for k, per_layer in result.heads.items()},
            "sequences": int(means[result.layers[0]]["sequences"]),
        }
        return values

    @override
    def _record_fields(self, trainer: pl.Trainer) -> dict[str, Any]:
        measured, self._measured = self._measured, {}
        return measured

    def _warn_if_not_finite(self, values: dict[str, float]) -> None:
        bad = [n for n, v in values.items() if not math.isfinite(v)]
        if bad and not self._warned_nan:
            self._warned_nan = True
            rank_zero_warn(
                f"GeometryMonitor logs NaN/inf for {len(bad)} metrics (e.g. {bad[0]}): the hidden states or "
                "weights are not finite. EarlyStopping(check_finite=True) stops on it."
            )

    def _reread(self, trainer: pl.Trainer, pl_module: pl.LightningModule, capture: GeometryCapture) -> None:
        loader = trainer.val_dataloaders
        loader = loader[0] if isinstance(loader, list | tuple) and loader else loader
        if loader is None:
            raise RuntimeError(
                "GeometryMonitor: the validation loop ran no forward of the model and has no dataloader"
            )
        self._batches = 0
        with capture, torch.no_grad():
            for batch in loader:
                if self._enough():
                    break
                encode_batch(pl_module, batch)
                self._batches += 1

    # ------------------------------------------------------------------ figures

    @override
    def _write_figures(self, trainer: pl.Trainer, out: Path) -> dict[str, Path]:
        """Headline score vs epoch / vs the monitored metric, cone index per layer, per-head heat maps."""
        monitor = self.monitor_against if any(r["monitor"] is not None for r in self.history) else None
        last_layer = self.history[-1]["layers"][-1]
        images = plots.write_history_figures(
            self.history,
            out,
            score=self._name("cone", f"layer_{last_layer}"),
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


def _check_layer_spec(layers: object) -> int | list[int] | str:
    """``"all"``, a non-zero int or a non-empty list of distinct non-zero ints (range checked at setup)."""
    if layers == "all":
        return "all"
    items = [layers] if not isinstance(layers, list | tuple) else list(layers)
    if not items or any(isinstance(x, bool) or not isinstance(x, int) or x == 0 for x in items):
        raise ValueError(
            f"layers must be 'all', a 1-based encoder layer (negative from the end) or a list of them; got {layers!r}"
        )
    if len(set(items)) != len(items):
        raise ValueError(f"layers has duplicates: {layers!r}")
    return items[0] if isinstance(layers, int) else items
