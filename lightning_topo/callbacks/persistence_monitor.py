r"""
Persistence score monitor
=========================

Log BERTops' PSF and persistence statistics of the hidden representations at every
validation run, so that :class:`~lightning.pytorch.callbacks.EarlyStopping` and
:class:`~lightning.pytorch.callbacks.ModelCheckpoint` can monitor ``topo/psf``.

The callback decides *when* to measure and *what* to log, nothing more: hidden states come
from :mod:`lightning_topo.representations`, the numbers from
:func:`lightning_topo.scores.persistence_metrics` and
:func:`lightning_topo.scores.correlation_metrics`, the figures from :mod:`lightning_topo.plots`.
``docs/extending.md`` describes this pattern for new lenses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from copy import deepcopy
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lightning_topo import plots
from lightning_topo.encoding import EncodedBatch
from lightning_topo.representations import (
    GatherFn,
    NonFiniteHiddenStatesError,
    RepresentationCollector,
    Representations,
    check_layers,
    collect_representations,
    gather_variable,
    run_on_rank_zero_and_broadcast,
)
from lightning_topo.scores import (
    SCORES,
    PSFPreset,
    correlation_metrics,
    get_preset,
    metric_names,
    persistence_metrics,
)
from lightning_topo.scores.checks import check_bool, check_choice, check_int, check_seed
from lightning_topo.scores.summary import check_homology_dims, check_scores
from lightning_topo.topology.diagrams import BACKENDS

__all__ = ["PersistenceScoreMonitor", "SCORES"]


class PersistenceScoreMonitor(Callback):
    r"""Measure PSF (and H0/H1 persistence statistics) of the hidden states at each validation run.

    At the end of every validation run of a measured epoch (also the mid-epoch runs of
    ``val_check_interval < 1``; never the sanity check), it pools the selected layers
    (``[CLS]`` or mean) of the validation (or training) examples, samples each class, and logs
    with ``pl_module.log`` from ``on_validation_epoch_end``:

    * ``topo/psf`` -- PSF of the *primary* layer (the deepest selected layer);
    * ``topo/psf/layer_{i}`` -- PSF of every selected layer ``i`` (0 = embeddings);
    * ``topo/psf/class_{c}`` -- ``psf_c`` of class ``c`` (primary layer);
    * ``topo/h{k}/total_persistence``, ``topo/h{k}/entropy`` -- mean over classes of the total
      persistence (``Σ (d - b)``, raw units) and persistence entropy of the H\ :sub:`k` diagrams;
    * from ``on_train_epoch_end``, once 3 measurements with a value of ``monitor_against``
      exist: ``{score}/pearson_{metric}`` and ``{score}/spearman_{metric}`` (``metric`` is
      ``monitor_against`` with ``/`` replaced by ``_``, e.g. ``topo/psf/pearson_val_acc``) for
      every score but the per-class ones.

    ``topo`` is ``log_prefix``. **One forward pass**: when ``validation_step`` returns the
    :class:`~lightning_topo.encoding.EncodedBatch` it computed (or a mapping with it under
    ``"encoded"``), the monitor pools it batch by batch and does not read the data again;
    otherwise it re-reads the dataloader in eval mode. **DDP**: every process pools its shard,
    the shards are gathered with ``trainer.strategy.all_gather``, global rank 0 computes and
    ``trainer.strategy.broadcast`` hands the values to every process, so all log the same.
    **Figures** (global rank 0, end of ``fit``) go to ``<trainer.log_dir>/topo/`` and, with a
    ``WandbLogger``, to W&B with a ``topo/history`` table (:mod:`lightning_topo.plots`).
    The history of measurements (``state_dict``) survives a resume from a checkpoint.

    Args:
        every_n_epochs: measure in epochs where ``(current_epoch + 1) % every_n_epochs == 0``
            (default 1). With values > 1 give ``EarlyStopping`` ``strict=False``.
        split: ``"val"`` (``trainer.val_dataloaders``) or ``"train"``
            (``trainer.train_dataloader``, re-read at the end of validation); ``None``: the
            preset's (``"val"`` for ``"default"``, ``"train"`` for ``"bertops"``).
        layers: hidden-state index, list of indices or ``"all"``; negative indices count from
            the end; ``None``: the preset's (``-1``, the last layer).
        pooling: ``"cls"`` or ``"mean"`` (``None``: the preset's, ``"cls"``).
        scores: non-empty subset of ``("psf", "total_persistence", "entropy")`` (default all).
        homology_dims: non-empty subset of ``(0, 1)`` for ``total_persistence`` / ``entropy``.
        max_points_per_class: int >= 2, cap per class (``None``: the preset's: 512 for
            ``"default"``, 5,000 for ``"bertops"``).
        max_batches: read at most this many batches per measurement (per process under DDP;
            ``None``: the whole dataloader).
        seed: sampling seed, int >= 0 (default 0); the same seed and data give the same scores.
        preset: ``"default"``, ``"bertops"`` (the paper's settings: last layer, ``[CLS]``,
            training split, KDE resample to 5,000 per class) or a
            :class:`~lightning_topo.scores.PSFPreset`.
        monitor_against: metric recorded next to the scores and correlated with them
            (default ``"val/acc"``; ``None``: none). A rank-zero warning names the logged
            metrics if it is never logged.
        plots: write the figures at the end of ``fit`` (default ``True``).
        log_prefix: first component of every metric name (default ``"topo"``).
        prog_bar: also show ``topo/psf`` in the progress bar (default ``True``).
        backend: persistence backend, see :func:`~lightning_topo.topology.persistence_diagrams`.

    Raises:
        TypeError / ValueError: an invalid argument, at construction (the message names it).

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
        backend: str = "torch",
    ) -> None:
        super().__init__()
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs", minimum=1)
        self.preset = get_preset(preset).override(
            split=split, pooling=pooling, max_points_per_class=max_points_per_class
        )
        self.preset_name = preset if isinstance(preset, str) else "custom"
        self.split = self.preset.split
        self.pooling = self.preset.pooling
        self.layers = check_layers(self.preset.layer if layers is None else layers)
        self.scores = check_scores(scores)
        self.homology_dims = check_homology_dims(homology_dims)
        self.max_batches = check_int(max_batches, "max_batches", minimum=1, allow_none=True)
        self.seed = check_seed(seed)
        if monitor_against is not None and (not isinstance(monitor_against, str) or not monitor_against):
            raise ValueError(
                f"monitor_against must be a metric name such as 'val/acc', or None; got {monitor_against!r}"
            )
        self.monitor_against = monitor_against
        self.plots = check_bool(plots, "plots")
        if not isinstance(log_prefix, str) or not log_prefix.strip("/"):
            raise ValueError(f"log_prefix must be a non-empty string such as 'topo'; got {log_prefix!r}")
        self.log_prefix = log_prefix.strip("/")
        self.prog_bar = check_bool(prog_bar, "prog_bar")
        self.backend = check_choice(backend, "backend", BACKENDS)
        #: One record per measurement: ``{"epoch", "step", "scores": {name: float}, "monitor": float | None}``.
        self.history: list[dict[str, Any]] = []
        self._collector: RepresentationCollector | None = None
        self._pending: dict[str, Any] | None = None
        self._pending_correlations: dict[str, float] = {}
        self._last_diagrams: dict[int, list[Any]] | None = None
        self._last_layer: int | None = None
        self._warned_missing_monitor = False

    # ------------------------------------------------------------------ state

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            split=self.split,
            layers=self.layers,
            pooling=self.pooling,
            preset=self.preset_name,
            monitor_against=self.monitor_against,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": deepcopy(self.history), "monitor_against": self.monitor_against}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("monitor_against", self.monitor_against)
        if saved != self.monitor_against:
            rank_zero_warn(
                f"PersistenceScoreMonitor: the checkpoint recorded monitor_against={saved!r}, not "
                f"{self.monitor_against!r}; the saved one is restored so that the history stays one series"
            )
        self.monitor_against = saved
        self.history = [{"step": None, **record} for record in deepcopy(state_dict.get("history", []))]

    # ------------------------------------------------------------------ names

    def _name(self, *parts: str) -> str:
        return "/".join([self.log_prefix, *parts])

    @property
    def score_name(self) -> str:
        """Name of the headline metric, ``topo/psf``."""
        return self._name("psf")

    def plot_dir(self, trainer: pl.Trainer) -> Path:
        """Where the figures go: ``<trainer.log_dir or default_root_dir>/<log_prefix>``."""
        try:
            root = trainer.log_dir
        except Exception:  # some loggers have no local directory
            root = None
        return Path(root or trainer.default_root_dir) / self.log_prefix

    # ------------------------------------------------------------------ when to measure

    def _should_measure(self, trainer: pl.Trainer) -> bool:
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collector = None
        if self.split == "val" and self._should_measure(trainer):
            self._collector = RepresentationCollector(self.layers, self.pooling, self.max_batches)

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
        if self._collector is None or dataloader_idx != 0:
            return
        encoded = outputs.get("encoded") if isinstance(outputs, Mapping) else outputs
        if isinstance(encoded, EncodedBatch):
            self._collector.add(encoded, batch)
        else:
            self._collector = None  # validation_step does not share its hidden states: re-read later

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_measure(trainer):
            return
        collector, self._collector = self._collector, None
        reps = self._collect(trainer, pl_module, collector)
        if reps is None:
            return
        values = run_on_rank_zero_and_broadcast(
            partial(self._compute, reps),
            is_global_zero=trainer.is_global_zero,
            broadcast=trainer.strategy.broadcast,
        )
        for name, value in values.items():
            pl_module.log(
                name,
                value,
                prog_bar=self.prog_bar and name == self.score_name,
                logger=bool(trainer.loggers),
                on_step=False,
                on_epoch=True,
                sync_dist=True,  # equal on every process already; keeps Lightning's DDP check quiet
            )
        self._pending = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "scores": values,
            "monitor": None,
        }

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record, self._pending = self._pending, None
        if record is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return  # a stand-alone trainer.validate() logs the scores but does not extend the history
        record["monitor"] = self._monitor_value(trainer)
        key = (record["epoch"], record["step"])  # a resumed run repeating a validation replaces it
        self.history = [r for r in self.history if (r["epoch"], r["step"]) != key] + [record]
        self._pending_correlations = self._correlations()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        correlations, self._pending_correlations = self._pending_correlations, {}
        for name, value in correlations.items():
            pl_module.log(
                name, value, logger=bool(trainer.loggers), on_step=False, on_epoch=True, sync_dist=False
            )

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self.plots and self.history):
            return
        out = self.plot_dir(trainer)  # on every process: trainer.log_dir is a collective call under DDP
        if trainer.is_global_zero:
            self._write_figures(trainer, out)

    # ------------------------------------------------------------------ what to log

    def _collect(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, collector: RepresentationCollector | None
    ) -> Representations | None:
        """Hidden states of this validation run, gathered over all processes (every process calls it)."""
        gather: GatherFn | None = None
        if trainer.world_size > 1:
            gather = partial(gather_variable, all_gather=trainer.strategy.all_gather)
        cap = self.preset.max_points_per_class if self.preset.sampling == "random" else None
        if collector is not None and collector.num_batches > 0:
            return collector.finalize(
                max_points_per_class=cap, seed=self.seed, gather=gather, check_finite=False
            )
        loaders = trainer.val_dataloaders if self.split == "val" else trainer.train_dataloader
        if isinstance(loaders, Mapping):
            loaders = next(iter(loaders.values()), None)
        elif isinstance(loaders, list | tuple):
            loaders = loaders[0] if loaders else None
        if loaders is None:
            rank_zero_warn(
                f"PersistenceScoreMonitor(split={self.split!r}) found no dataloader on the trainer; "
                "nothing is logged. Give the trainer a datamodule with that split or change `split`."
            )
            return None
        return collect_representations(
            pl_module,
            loaders,
            layers=self.layers,
            pooling=self.pooling,
            max_points_per_class=cap,
            max_batches=self.max_batches,
            seed=self.seed,
            gather=gather,
            check_finite=False,
        )

    def _compute(self, reps: Representations) -> dict[str, float]:
        """All logged values, prefixed (global rank 0 only); NaN for every name on NaN/inf states."""
        try:
            reps.check_finite()
        except NonFiniteHiddenStatesError as err:
            rank_zero_warn(
                f"PersistenceScoreMonitor logs NaN: {err}. EarlyStopping(check_finite=True) stops on it."
            )
            names = metric_names(
                reps.layers, list(reps.class_counts()), scores=self.scores, homology_dims=self.homology_dims
            )
            return {self._name(n): math.nan for n in names}
        result = persistence_metrics(
            reps.points,
            reps.labels,
            scores=self.scores,
            homology_dims=self.homology_dims,
            preset=self.preset,
            seed=self.seed,
            backend=self.backend,
        )
        self._last_diagrams = {c: [d.detach().cpu() for d in dg] for c, dg in result.diagrams.items()}
        self._last_layer = result.layer
        return {self._name(n): float(v) for n, v in result.values.items()}

    def _monitor_value(self, trainer: pl.Trainer) -> float | None:
        if self.monitor_against is None:
            return None
        value = trainer.callback_metrics.get(self.monitor_against)
        if value is None and not self._warned_missing_monitor:
            self._warned_missing_monitor = True
            available = sorted(k for k in trainer.callback_metrics if not k.startswith(self.log_prefix + "/"))
            rank_zero_warn(
                f"PersistenceScoreMonitor(monitor_against={self.monitor_against!r}): that metric was not "
                f"logged; available metrics: {available}. Set monitor_against to one of them (or None); "
                "no correlations are logged until then."
            )
        return None if value is None else float(value)

    def _correlations(self) -> dict[str, float]:
        if self.monitor_against is None or not self.history:
            return {}
        names = [n for n in self.history[-1]["scores"] if "/class_" not in n]
        series = {n: [r["scores"].get(n, math.nan) for r in self.history] for n in names}
        target = [math.nan if r["monitor"] is None else r["monitor"] for r in self.history]
        values = correlation_metrics(series, target, target_name=self.monitor_against)
        return {name: float(value) for name, value in values.items()}

    def _write_figures(self, trainer: pl.Trainer, out: Path) -> dict[str, Path]:
        monitor = self.monitor_against if any(r["monitor"] is not None for r in self.history) else None
        score = self.score_name if "psf" in self.scores else next(iter(self.history[-1]["scores"]))
        last = self.history[-1]
        images = plots.write_history_figures(
            self.history,
            out,
            score=score,
            monitor=monitor,
            diagrams=self._last_diagrams,
            diagram_title=f"persistence diagrams, layer {self._last_layer}, {self.pooling}, "
            f"epoch {last['epoch']}, step {last['step']}",
            key_prefix=self.log_prefix,
        )
        plots.publish_to_wandb(
            trainer.loggers, images, self.history, monitor, table_key=self._name("history")
        )
        return images
