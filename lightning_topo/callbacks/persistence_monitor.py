r"""
Persistence score monitor
=========================

Log BERTops' PSF and persistence statistics of the hidden representations every epoch, so that
:class:`~lightning.pytorch.callbacks.EarlyStopping` and
:class:`~lightning.pytorch.callbacks.ModelCheckpoint` can monitor ``topo/psf``.

The callback only decides *when* to measure and *where* to log: the hidden states come from
:func:`lightning_topo.representations.collect_representations` and the numbers from
:func:`lightning_topo.scores.persistence_summary`.
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

from lightning_topo.encoding import EncodedBatch
from lightning_topo.representations import (
    NonFiniteHiddenStatesError,
    RepresentationCollector,
    collect_representations,
    run_on_rank_zero_and_broadcast,
)
from lightning_topo.scores.presets import POOLINGS, PSFPreset, get_preset
from lightning_topo.scores.psf import persistence_summary

__all__ = ["PersistenceScoreMonitor", "SCORES"]

#: Scores the monitor can log.
SCORES: tuple[str, ...] = ("psf", "total_persistence", "entropy")
_SPLITS = ("val", "train")


class PersistenceScoreMonitor(Callback):
    r"""Measure PSF (and H0/H1 persistence statistics) of the hidden states at the end of validation.

    Each measured epoch it re-reads the validation (or training) dataloader, pools the selected
    layers (``[CLS]`` or mean), samples each class, computes the per-class persistence diagrams
    once and logs, with ``pl_module.log`` from ``on_validation_epoch_end``:

    * ``topo/psf`` -- PSF of the *primary* layer (the deepest selected layer);
    * ``topo/psf/layer_{i}`` -- PSF of every selected layer ``i`` (0 = embeddings);
    * ``topo/psf/class_{c}`` -- ``psf_c`` of class ``c`` (primary layer);
    * ``topo/h{k}/total_persistence``, ``topo/h{k}/entropy`` -- mean over classes of the total
      persistence (``Σ (d - b)``, raw units) and persistence entropy of the H\ :sub:`k` diagrams;
    * once 3 measured epochs exist, logged from ``on_train_epoch_end`` (``metric`` is
      ``monitor_against`` with ``/`` replaced by ``_``): ``{score}/pearson_{metric}`` and
      ``{score}/spearman_{metric}``, the correlation over epochs between a score's history and
      the history of ``monitor_against`` (e.g. ``topo/psf/pearson_val_acc``), for ``topo/psf``,
      the per-layer PSFs and the H0/H1 statistics.

    Nothing is computed while ``trainer.sanity_checking``. Because the values are logged before
    ``on_validation_end`` / ``on_train_epoch_end``, ``EarlyStopping(monitor="topo/psf")`` sees
    the current epoch's value. Under DDP every rank encodes its shard, the shards are gathered,
    rank 0 computes and broadcasts, so all ranks log the same value. At the end of ``fit``
    (rank zero) PNG figures are written to ``<trainer.log_dir>/topo/`` (``default_root_dir``
    without a logger): the score and the monitored metric per epoch, the score against the
    metric, and the per-class diagrams of the last measured epoch; with a ``WandbLogger`` they
    are also logged as ``wandb.Image`` together with a ``wandb.Table`` ``topo/history``.

    Args:
        every_n_epochs: measure when ``(current_epoch + 1) % every_n_epochs == 0``. With
            values > 1 give ``EarlyStopping`` ``strict=False`` (the metric is absent on the
            other epochs).
        split: ``"val"`` (``trainer.val_dataloaders``) or ``"train"`` (``trainer.train_dataloader``);
            ``None``: the preset's (``"val"`` for ``"default"``, ``"train"`` for ``"bertops"``).
            Either way the measurement runs at the end of validation.
        layers: hidden-state index, list of indices or ``"all"`` (negative indices count from
            the end; ``None``: the preset's layer, ``-1``).
        pooling: ``"cls"`` or ``"mean"`` (``None``: the preset's, ``"cls"``).
        scores: subset of ``("psf", "total_persistence", "entropy")``.
        homology_dims: dimensions (subset of ``(0, 1)``) for ``total_persistence``/``entropy``.
        max_points_per_class: cap per class (``None``: the preset's: 512 for ``"default"``,
            5,000 for ``"bertops"``).
        max_batches: read at most this many batches per measurement (per rank under DDP;
            ``None``: the whole dataloader).
        seed: sampling seed; the same seed and data give the same scores.
        preset: ``"default"`` (random subsample) or ``"bertops"`` (the paper's settings: last
            layer, ``[CLS]``, training split, KDE resample to 5,000 per class), or a
            :class:`~lightning_topo.scores.PSFPreset`.
        monitor_against: metric whose history is recorded next to the scores and correlated
            with them (``None``: do not record one). A rank-zero warning is raised if it is
            never logged.
        plots: write the figures at the end of ``fit``.
        log_prefix: first component of every metric name.
        prog_bar: also show ``topo/psf`` in the progress bar.
        backend: persistence backend passed to :func:`~lightning_topo.topology.persistence_diagrams`.

    Raises:
        ValueError: an invalid argument (the message names it).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.callbacks import EarlyStopping
        >>> from lightning_topo.callbacks import PersistenceScoreMonitor
        >>> monitor = PersistenceScoreMonitor(layers=-1, pooling="cls", max_points_per_class=400)
        >>> early_stopping = EarlyStopping(monitor="topo/psf", mode="min", patience=3)
        >>> trainer = Trainer(callbacks=[monitor, early_stopping])
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        split: str | None = None,
        layers: int | Sequence[int] | str | None = None,
        pooling: str | None = None,
        scores: Sequence[str] = SCORES,
        homology_dims: Sequence[int] = (0, 1),
        max_points_per_class: int | None = None,
        max_batches: int | None = None,
        seed: int = 0,
        preset: str | PSFPreset = "default",
        monitor_against: str | None = "val/acc",
        plots: bool = True,
        log_prefix: str = "topo",
        prog_bar: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive int; got {every_n_epochs!r}")
        settings = get_preset(preset)
        split = settings.split if split is None else split
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}; got {split!r}")
        settings = settings.override(pooling=pooling, max_points_per_class=max_points_per_class)
        if settings.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
        if settings.max_points_per_class is not None and settings.max_points_per_class < 2:
            raise ValueError(f"max_points_per_class must be >= 2 or None; got {max_points_per_class!r}")
        scores = (scores,) if isinstance(scores, str) else tuple(scores)
        unknown = [s for s in scores if s not in SCORES]
        if unknown or not scores:
            raise ValueError(f"scores must be a non-empty subset of {SCORES}; got {scores!r}")
        dims = tuple(sorted({int(d) for d in homology_dims}))
        if any(d not in (0, 1) for d in dims):
            raise ValueError(f"homology_dims must be a subset of (0, 1); got {tuple(homology_dims)!r}")
        if max_batches is not None and (isinstance(max_batches, bool) or max_batches < 1):
            raise ValueError(f"max_batches must be a positive int or None; got {max_batches!r}")
        if layers is not None and not isinstance(layers, int | str):
            layers = [int(x) for x in layers]
            if not layers:
                raise ValueError("layers must name at least one layer; got an empty list")
        if isinstance(layers, str) and layers != "all":
            raise ValueError(f"layers must be an int, a list of ints or 'all'; got {layers!r}")
        self.every_n_epochs = every_n_epochs
        self.split = split
        self.layers: int | list[int] | str = settings.layer if layers is None else layers
        self.pooling = settings.pooling
        self.scores = scores
        self.homology_dims = dims
        self.max_batches = max_batches
        self.seed = int(seed)
        self.preset = settings
        self.preset_name = preset if isinstance(preset, str) else "custom"
        self.monitor_against = monitor_against
        self.plots = plots
        self.log_prefix = log_prefix.rstrip("/")
        self.prog_bar = prog_bar
        self.backend = backend
        #: One record per measured epoch: ``{"epoch", "scores": {name: float}, "monitor": float | None}``.
        self.history: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None
        self._pending_correlations: dict[str, float] = {}
        self._last_diagrams: dict[int, list[Any]] | None = None
        self._last_layer: int | None = None
        self._warned_missing_monitor = False
        #: Wall time of each measurement in this process: ``{"collect_s", "compute_s"}`` (not saved).
        self.timings: list[dict[str, float]] = []
        self._collector: RepresentationCollector | None = None
        self._piggyback_s = 0.0

    # ------------------------------------------------------------------ Lightning plumbing

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            split=self.split,
            layers=self.layers,
            pooling=self.pooling,
            preset=self.preset_name,
            monitor_against=self.monitor_against,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"history": deepcopy(self.history), "monitor_against": self.monitor_against}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = deepcopy(state_dict.get("history", []))

    def _name(self, *parts: str) -> str:
        return "/".join([self.log_prefix, *parts])

    @property
    def score_name(self) -> str:
        """Name of the headline metric, ``topo/psf``."""
        return self._name("psf")

    def _should_measure(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _dataloader(self, trainer: pl.Trainer) -> Any:
        if self.split == "val":
            loaders = trainer.val_dataloaders
        else:
            loaders = trainer.train_dataloader
        if isinstance(loaders, list | tuple):
            loaders = loaders[0] if loaders else None
        elif isinstance(loaders, dict):
            loaders = next(iter(loaders.values()), None)
        return loaders

    # ------------------------------------------------------------------ measurement

    def measure(
        self, pl_module: torch.nn.Module, dataloader: Any, collector: RepresentationCollector | None = None
    ) -> dict[str, Any]:
        """Collect hidden states and compute every score (all ranks call it).

        Args:
            pl_module: the model (``encode`` or a Hugging Face model).
            dataloader: re-read when ``collector`` is ``None``.
            collector: hidden states already pooled during the validation loop (no second pass).

        Returns:
            ``{"scores": {metric name: float}, "diagrams": {class: [H0, H1] numpy}, "layer": int}``;
            identical on every rank.
        """
        settings = self.preset
        cap = settings.max_points_per_class if settings.sampling == "random" else None
        start = time.perf_counter() - self._piggyback_s
        if collector is not None:
            reps = collector.finalize(max_points_per_class=cap, seed=self.seed)
        else:
            reps = collect_representations(
                pl_module,
                dataloader,
                layers=self.layers,
                pooling=self.pooling,
                max_points_per_class=cap,
                max_batches=self.max_batches,
                seed=self.seed,
            )
        collected = time.perf_counter()
        result = run_on_rank_zero_and_broadcast(lambda: self._compute(reps))
        self.timings.append({"collect_s": collected - start, "compute_s": time.perf_counter() - collected})
        return result

    def _compute(self, reps: Any) -> dict[str, Any]:
        primary = max(reps.layers)
        scores: dict[str, float] = {}
        diagrams = None
        for layer in reps.layers:
            summary = persistence_summary(
                reps.points[layer],
                reps.labels,
                homology_dims=self.homology_dims,
                preset=self.preset,
                seed=self.seed,
                backend=self.backend,
            )
            if "psf" in self.scores:
                scores[self._name("psf", f"layer_{layer}")] = float(summary.psf)
            if layer != primary:
                continue
            diagrams = {c: [d.detach().cpu().numpy() for d in dg] for c, dg in summary.diagrams.items()}
            if "psf" in self.scores:
                scores[self.score_name] = float(summary.psf)
                for c, v in summary.psf_per_class.items():
                    scores[self._name("psf", f"class_{c}")] = float(v)
            for k in self.homology_dims:
                if "total_persistence" in self.scores:
                    scores[self._name(f"h{k}", "total_persistence")] = float(summary.total_persistence[k])
                if "entropy" in self.scores:
                    scores[self._name(f"h{k}", "entropy")] = float(summary.entropy[k])
        return {"scores": scores, "diagrams": diagrams, "layer": primary}

    def _nan_scores(self) -> dict[str, float]:
        scores = {}
        if "psf" in self.scores:
            scores[self.score_name] = math.nan
        for k in self.homology_dims:
            for s in ("total_persistence", "entropy"):
                if s in self.scores:
                    scores[self._name(f"h{k}", s)] = math.nan
        return scores

    # Reuse of the validation loop's own forward pass: when ``validation_step`` returns the
    # ``EncodedBatch`` it computed (or a mapping with it under ``"encoded"``), the selected layers
    # are pooled batch by batch here and the dataloader is not read a second time.

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collector = None
        self._piggyback_s = 0.0
        if self.split == "val" and self._should_measure(trainer):
            self._collector = RepresentationCollector(layers=self.layers, pooling=self.pooling)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._collector is None or dataloader_idx != 0:
            return
        encoded = outputs.get("encoded") if isinstance(outputs, dict) else outputs
        if not isinstance(encoded, EncodedBatch):
            self._collector = None  # validation_step does not share its hidden states: re-read later
            return
        if self.max_batches is not None and self._collector.num_batches >= self.max_batches:
            return
        start = time.perf_counter()
        self._collector.add(encoded, batch)
        self._piggyback_s += time.perf_counter() - start

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_measure(trainer):
            return
        collector, self._collector = self._collector, None
        if collector is not None and collector.num_batches == 0:
            collector = None
        loader = self._dataloader(trainer)
        if loader is None and collector is None:
            rank_zero_warn(
                f"PersistenceScoreMonitor(split={self.split!r}) found no dataloader on the trainer; "
                "nothing is logged. Give the trainer a datamodule with that split or change `split`."
            )
            return
        try:
            result = self.measure(pl_module, loader, collector)
        except NonFiniteHiddenStatesError as err:
            rank_zero_warn(
                f"PersistenceScoreMonitor logs NaN this epoch: {err}. EarlyStopping(check_finite=True) "
                "will stop on it."
            )
            result = {"scores": self._nan_scores(), "diagrams": None, "layer": None}
        for name, value in result["scores"].items():
            pl_module.log(
                name,
                value,
                prog_bar=self.prog_bar and name == self.score_name,
                logger=bool(trainer.loggers),
                on_step=False,
                on_epoch=True,
                sync_dist=True,
            )
        self._pending = {
            "epoch": int(trainer.current_epoch),
            "scores": dict(result["scores"]),
            "monitor": None,
        }
        if result["diagrams"] is not None:
            self._last_diagrams = result["diagrams"]
            self._last_layer = result["layer"]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._pending is None:
            return
        record, self._pending = self._pending, None
        if trainer.state.fn != TrainerFn.FITTING:
            return  # a stand-alone trainer.validate() logs the scores but does not extend the history
        if self.monitor_against is not None:
            value = trainer.callback_metrics.get(self.monitor_against)
            if value is None:
                if not self._warned_missing_monitor:
                    self._warned_missing_monitor = True
                    available = sorted(
                        k for k in trainer.callback_metrics if not k.startswith(self.log_prefix)
                    )
                    rank_zero_warn(
                        f"PersistenceScoreMonitor(monitor_against={self.monitor_against!r}): that metric "
                        f"was not logged; available metrics: {available}. Set monitor_against to one of "
                        "them (or None); no correlations are logged until then."
                    )
            else:
                record["monitor"] = float(value)
        # a resumed run that repeats an epoch replaces that epoch's record
        self.history = [r for r in self.history if r["epoch"] != record["epoch"]] + [record]
        self._pending_correlations = self._correlations()

    def _correlations(self) -> dict[str, float]:
        from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

        if self.monitor_against is None:
            return {}
        rows = [r for r in self.history if r.get("monitor") is not None and math.isfinite(r["monitor"])]
        if len(rows) < 3:
            return {}
        suffix = self.monitor_against.replace("/", "_")
        target = torch.tensor([r["monitor"] for r in rows], dtype=torch.float64)
        out: dict[str, float] = {}
        for name in rows[-1]["scores"]:
            if "/class_" in name:
                continue
            values = [r["scores"].get(name, math.nan) for r in rows]
            if not all(math.isfinite(v) for v in values):
                continue
            preds = torch.tensor(values, dtype=torch.float64)
            if float(preds.std()) == 0.0 or float(target.std()) == 0.0:
                pearson = spearman = math.nan  # undefined for a constant series
            else:
                pearson = float(pearson_corrcoef(preds, target))
                spearman = float(spearman_corrcoef(preds, target))
            out[f"{name}/pearson_{suffix}"] = pearson
            out[f"{name}/spearman_{suffix}"] = spearman
        return out

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        correlations, self._pending_correlations = self._pending_correlations, {}
        for name, value in correlations.items():
            pl_module.log(
                name, value, logger=bool(trainer.loggers), on_step=False, on_epoch=True, sync_dist=False
            )

    # ------------------------------------------------------------------ figures

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.plots and self.history:
            self._write_plots(trainer)

    def plot_dir(self, trainer: pl.Trainer) -> Path:
        """Where the figures go: ``<trainer.log_dir or default_root_dir>/topo``."""
        root = None
        try:
            root = trainer.log_dir
        except Exception:  # some loggers have no local directory
            root = None
        return Path(root or trainer.default_root_dir) / self.log_prefix

    @rank_zero_only
    def _write_plots(self, trainer: pl.Trainer) -> dict[str, Path]:
        from lightning_topo import plots as _plots

        out = self.plot_dir(trainer)
        monitor = self.monitor_against if any(r.get("monitor") is not None for r in self.history) else None
        score = self.score_name if "psf" in self.scores else next(iter(self.history[-1]["scores"]))
        safe = score.replace("/", "_")
        images: dict[str, Path] = {
            f"{self.log_prefix}/plots/{safe}_vs_epoch": _plots.plot_score_vs_epoch(
                self.history, score, monitor, out / f"{safe}_vs_epoch.png"
            )
        }
        if monitor is not None:
            mon_safe = monitor.replace("/", "_")
            images[f"{self.log_prefix}/plots/{safe}_vs_{mon_safe}"] = _plots.plot_score_vs_monitor(
                self.history, score, monitor, out / f"{safe}_vs_{mon_safe}.png"
            )
        if self._last_diagrams is not None:
            epoch = self.history[-1]["epoch"]
            images[f"{self.log_prefix}/plots/diagrams"] = _plots.plot_class_diagrams(
                self._last_diagrams,
                f"persistence diagrams, layer {self._last_layer}, {self.pooling}, epoch {epoch}",
                out / "diagrams_last_epoch.png",
            )
        columns, rows = _plots.history_table(self.history, monitor)
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                _plots.log_to_wandb(logger, images, columns, rows)
        return images
