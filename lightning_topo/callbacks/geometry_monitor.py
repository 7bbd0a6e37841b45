r"""
Geometry monitor
================

Log the geometry of BERT (Bonino et al. 2025) during fine-tuning: the cone index of each
layer's input, head outputs, attention output and layer output, the entropy of the attention
rows and the directionality of every head's ``W_q W_kᵀ``.

The callback only decides *when* to measure and *what* to log: hooks and running means come
from :mod:`lightning_topo.geometry_capture`, the numbers from
:mod:`lightning_topo.scores.geometry`, the figures from :mod:`lightning_topo.plots_geometry`.
"""

from __future__ import annotations

import math
import time
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

from lightning_topo.encoding import encode_batch
from lightning_topo.geometry_capture import (
    ATTENTION_SOURCES,
    GeometryAccumulator,
    GeometryCapture,
    LayerCapture,
    weight_geometry,
)
from lightning_topo.scores.checks import check_bool, check_choice, check_int
from lightning_topo.scores.correlation import correlation_metrics

__all__ = ["GeometryMonitor"]


class GeometryMonitor(Callback):
    r"""Measure cone index, attention entropy and directionality of every layer at validation.

    On a measured epoch, forward hooks are registered on the model at the start of validation
    and removed at its end; every validation forward of the model is reduced on the fly to
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

    Per-head values go into the history and the figures: at the end of ``fit`` (rank zero)
    PNGs under ``<trainer.log_dir>/geometry/``: layers x heads heat maps (attention entropy,
    directionality, cone index of head outputs, spectral entropy) per measurement and the cone
    index per layer against the epoch; with a ``WandbLogger`` also as W&B images and a table.

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
            512: the means over sequences are stable well before that, and the cost stays small
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
        super().__init__()
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs", minimum=1)
        self.layers = _check_layer_spec(layers)
        self.attention = check_choice(attention, "attention", ATTENTION_SOURCES)
        self.normalize = check_bool(normalize, "normalize")
        self.max_sequences = check_int(max_sequences, "max_sequences", minimum=1, allow_none=True)
        self.max_batches = check_int(max_batches, "max_batches", minimum=1, allow_none=True)
        if monitor_against is not None and not isinstance(monitor_against, str):
            raise TypeError(f"monitor_against must be a metric name or None; got {monitor_against!r}")
        self.monitor_against = monitor_against
        self.plots = check_bool(plots, "plots")
        if not isinstance(log_prefix, str) or not log_prefix.strip("/"):
            raise ValueError(f"log_prefix must be a non-empty string; got {log_prefix!r}")
        self.log_prefix = log_prefix.strip("/")
        #: One record per measurement: ``{"epoch", "step", "scores", "monitor", "layers", "heads",
        #: "sequences"}`` (``heads``: per-head values, layers x heads; ``sequences``: how many were measured).
        self.history: list[dict[str, Any]] = []
        #: Own wall time per measurement in this process: ``capture_s``, ``reread_s``, ``compute_s``.
        self.timings: list[dict[str, float]] = []
        #: Wall time of writing the figures at the end of fit (this process).
        self.plot_s = 0.0
        self._capture: GeometryCapture | None = None
        self._acc: GeometryAccumulator | None = None
        self._batches = 0
        self._capture_s = 0.0
        self._pending: dict[str, Any] | None = None
        self._pending_correlations: dict[str, float] = {}
        self._warned_missing_monitor = False

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
    def state_dict(self) -> dict[str, Any]:
        return {"history": deepcopy(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = deepcopy(state_dict.get("history", []))

    def _name(self, *parts: str) -> str:
        return "/".join([self.log_prefix, *parts])

    def _due(self, trainer: pl.Trainer) -> bool:
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

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
        loader = make_loader()
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
        if not self._due(trainer):
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
        self._capture_s = 0.0
        self._capture.attach()  # removed at the end of this validation epoch

    def _on_layer(self, layer: int, cap: LayerCapture) -> None:
        start = time.perf_counter()
        assert self._acc is not None
        self._acc.add(layer, cap)
        self._capture_s += time.perf_counter() - start

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
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._capture is not None and self._capture.attached and dataloader_idx == 0:
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
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        capture, acc = self._capture, self._acc
        self._release()
        if capture is None or acc is None:
            return
        reread_s = 0.0
        if acc.num_sequences == 0:  # validation_step did not run the model: read the data once more
            start = time.perf_counter()
            self._reread(trainer, pl_module, capture)
            reread_s = time.perf_counter() - start
        start = time.perf_counter()
        strategy = trainer.strategy
        means = acc.result(reduce=lambda t: strategy.reduce(t, reduce_op="sum"))
        record = self._record(means, weight_geometry(pl_module, capture.layers), capture.layers)
        for name, value in record["scores"].items():
            pl_module.log(
                name, value, logger=bool(trainer.loggers), on_step=False, on_epoch=True, sync_dist=True
            )
        record.update(epoch=int(trainer.current_epoch), step=int(trainer.global_step), monitor=None)
        self._pending = record
        self.timings.append(
            {"capture_s": self._capture_s, "reread_s": reread_s, "compute_s": time.perf_counter() - start}
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

    def _record(
        self, means: dict[int, dict[str, torch.Tensor]], weights: dict, layers: list[int]
    ) -> dict[str, Any]:
        """Scalars to log (means over heads) and per-head lists (layers x heads) for the figures."""
        scores: dict[str, float] = {}
        heads: dict[str, list[list[float]]] = {
            k: [] for k in ("cone_heads", "directionality", "qk_spectral_entropy")
        }
        if self.attention != "none":
            heads["attention_entropy"] = []
        for i in layers:
            m, w = means[i], weights[i]
            cone = self._name("cone", f"layer_{i}")
            scores[cone] = float(m["cone/output"])
            scores[f"{cone}/input"] = float(m["cone/input"])
            scores[f"{cone}/heads"] = float(m["cone/heads"].mean())
            scores[f"{cone}/attention_output"] = float(m["cone/attention_output"])
            per_head = {"cone_heads": m["cone/heads"], **w}
            if self.attention != "none":
                scores[self._name("attention_entropy", f"layer_{i}")] = float(m["attention_entropy"].mean())
                per_head["attention_entropy"] = m["attention_entropy"]
            scores[self._name("directionality", f"layer_{i}")] = float(w["directionality"].nanmean())
            scores[self._name("qk_spectral_entropy", f"layer_{i}")] = float(
                w["qk_spectral_entropy"].nanmean()
            )
            for key in heads:
                heads[key].append([float(v) for v in per_head[key]])
        sequences = int(means[layers[0]]["sequences"])
        return {"scores": scores, "heads": heads, "layers": list(layers), "sequences": sequences}

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record, self._pending = self._pending, None
        if record is None or trainer.state.fn != TrainerFn.FITTING:
            return  # a stand-alone trainer.validate() logs the scores but does not extend the history
        if self.monitor_against is not None:
            value = trainer.callback_metrics.get(self.monitor_against)
            if value is not None:
                record["monitor"] = float(value)
            elif not self._warned_missing_monitor:
                self._warned_missing_monitor = True
                available = sorted(k for k in trainer.callback_metrics if not k.startswith(self.log_prefix))
                rank_zero_warn(
                    f"GeometryMonitor(monitor_against={self.monitor_against!r}): that metric was not logged; "
                    f"available: {available}. Set monitor_against to one of them (or None)."
                )
        key = (record["epoch"], record["step"])  # a resumed run that repeats a measurement replaces it
        self.history = [r for r in self.history if (r["epoch"], r.get("step")) != key] + [record]
        self._pending_correlations = self._correlations()

    def _correlations(self) -> dict[str, float]:
        if self.monitor_against is None:
            return {}
        rows = [r for r in self.history if r.get("monitor") is not None]
        if len(rows) < 3:
            return {}
        series = {name: [r["scores"].get(name, math.nan) for r in rows] for name in rows[-1]["scores"]}
        target = [r["monitor"] for r in rows]
        out = correlation_metrics(series, target, target_name=self.monitor_against)
        return {name: float(v) for name, v in out.items()}

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
            start = time.perf_counter()
            self.write_plots(trainer)
            self.plot_s += time.perf_counter() - start

    def plot_dir(self, trainer: pl.Trainer) -> Path:
        """Where the figures go: ``<trainer.log_dir or default_root_dir>/<log_prefix>``."""
        try:
            root = trainer.log_dir
        except Exception:  # some loggers have no local directory
            root = None
        return Path(root or trainer.default_root_dir) / self.log_prefix

    @rank_zero_only
    def write_plots(self, trainer: pl.Trainer) -> dict[str, Path]:
        """Write the heat maps of every measurement and the cone index per layer vs epoch."""
        from lightning_topo.plots_geometry import plot_cone_vs_epoch, plot_head_heatmaps

        out = self.plot_dir(trainer)
        images = {
            self._name("plots", "cone_vs_epoch"): plot_cone_vs_epoch(
                self.history, self._name("cone"), out / "cone_vs_epoch.png"
            )
        }
        for r in self.history:
            tag = f"epoch{r['epoch']}_step{r['step']}"
            images[self._name("plots", f"heads_{tag}")] = plot_head_heatmaps(r, out / f"heads_{tag}.png")
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                self._log_wandb(logger, images)
        return images

    def _log_wandb(self, logger: Any, images: dict[str, Path]) -> None:
        for key, path in images.items():
            logger.log_image(key=key, images=[str(path)])
        names = list(self.history[-1]["scores"])
        columns = ["epoch", "step", *names, *([self.monitor_against] if self.monitor_against else [])]
        rows = [
            [r["epoch"], r["step"], *[r["scores"].get(n, math.nan) for n in names]]
            + ([r.get("monitor")] if self.monitor_against else [])
            for r in self.history
        ]
        logger.log_table(key=self._name("history"), columns=columns, data=rows)


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
