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
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lightning_topo import plots
from lightning_topo.callbacks.lens import LensMonitor
from lightning_topo.encoding import EncodedBatch
from lightning_topo.representations import (
    NonFiniteHiddenStatesError,
    RepresentationCollector,
    Representations,
    check_layers,
    collect_representations,
)
from lightning_topo.scores import (
    SCORES,
    PSFPreset,
    get_preset,
    metric_names,
    persistence_metrics,
)
from lightning_topo.scores.checks import check_bool, check_choice, check_int, check_seed
from lightning_topo.scores.sampling import check_resamples
from lightning_topo.scores.summary import check_homology_dims, check_scores
from lightning_topo.topology.diagrams import BACKENDS

__all__ = ["PersistenceScoreMonitor", "SCORES"]


class PersistenceScoreMonitor(LensMonitor):
    r"""Measure PSF (and H0/H1 persistence statistics) of the hidden states at each validation run.

    At the end of every validation run of a measured epoch (also the mid-epoch runs of
    ``val_check_interval < 1``; never the sanity check), it pools the selected layers
    (``[CLS]`` or mean) of the validation (or training) examples, samples each class, and logs
    with ``pl_module.log`` from ``on_validation_epoch_end``:

    * ``topo/psf`` -- PSF of the *primary* layer (the deepest selected layer), the mean over
      ``resamples`` seeded re-draws of the per-class sample;
    * ``topo/psf/std`` -- the standard error of that mean (with ``resamples > 1``; likewise
      ``topo/h{k}/total_persistence/std`` and ``topo/h{k}/entropy/std``), what
      :class:`~lightning_topo.callbacks.PSFEarlyStopping` compares changes with;
    * ``topo/psf/layer_{i}`` -- PSF of every selected layer ``i`` (0 = embeddings);
    * ``topo/psf/class_{c}`` -- ``psf_c`` of class ``c`` (primary layer);
    * ``topo/h{k}/total_persistence``, ``topo/h{k}/entropy`` -- mean over classes of the total
      persistence (``Σ (d - b)``, raw units) and persistence entropy of the H\ :sub:`k` diagrams;
    * from ``on_train_epoch_end``, once 3 measurements with a value of ``monitor_against``
      exist: ``{score}/pearson_{metric}`` and ``{score}/spearman_{metric}`` (``metric`` is
      ``monitor_against`` with ``/`` replaced by ``_``, e.g. ``topo/psf/pearson_val_acc``) for
      every score but the per-class ones and the standard errors.

    ``topo`` is ``log_prefix``. **One forward pass**: when ``validation_step`` returns the
    :class:`~lightning_topo.encoding.EncodedBatch` it computed (or a mapping with it under
    ``"encoded"``), the monitor pools it batch by batch and does not read the data again;
    otherwise it re-reads the dataloader in eval mode. **DDP**: every process pools its shard,
    the shards are gathered with ``trainer.strategy.all_gather``, global rank 0 computes and
    ``trainer.strategy.broadcast`` hands the values to every process, so all log the same.
    **Figures** (global rank 0, end of ``fit``) go to ``<trainer.log_dir>/topo/`` and, with a
    ``WandbLogger``, to W&B with a ``topo/history`` table (:mod:`lightning_topo.plots`).
    The history of measurements (``state_dict``) survives a resume from a checkpoint.
    The shared machinery (history, correlations, figures, state) is
    :class:`~lightning_topo.callbacks.lens.LensMonitor`'s.

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
        resamples: int >= 1 (default 5): every logged value is the mean over this many seeded
            re-draws of each class's sample (:func:`~lightning_topo.scores.persistence_metrics`)
            and ``.../std`` holds the standard errors. With ``resamples > 1`` and random
            sampling the monitor keeps every collected example (``max_batches`` bounds them)
            and draws the per-class samples from all of them; classes at or below
            ``max_points_per_class`` are used whole, so when no class exceeds the cap every
            draw is the same and the std is 0. ``resamples=1`` logs one draw and no std.

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
        resamples: int = 5,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs, monitor_against=monitor_against, plots=plots, log_prefix=log_prefix
        )
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
        self.prog_bar = check_bool(prog_bar, "prog_bar")
        self.backend = check_choice(backend, "backend", BACKENDS)
        self.resamples = check_resamples(resamples)
        self._collector: RepresentationCollector | None = None
        self._last_diagrams: dict[int, list[Any]] | None = None
        self._last_layer: int | None = None

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
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.history = [{"step": None, **record} for record in self.history]  # saved before steps were

    # ------------------------------------------------------------------ names

    @property
    def score_name(self) -> str:
        """Name of the headline metric, ``topo/psf``."""
        return self._name("psf")

    # ------------------------------------------------------------------ collection

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collector = None
        if self.split == "val" and self._should_measure(trainer):
            self._collector = RepresentationCollector(self.layers, self.pooling, self.max_batches)

    @override
    def _on_validation_batch(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, encoded: EncodedBatch | None, batch: Any
    ) -> None:
        if self._collector is None:
            return
        if encoded is not None:
            self._collector.add(encoded, batch)
        else:
            self._collector = None  # validation_step does not share its hidden states: re-read later

    # ------------------------------------------------------------------ what to log

    @override
    def _in_prog_bar(self, name: str) -> bool:
        return self.prog_bar and name == self.score_name

    @override
    def _correlated(self, names: list[str]) -> list[str]:
        # every score but the per-class ones and the standard errors
        return [n for n in names if "/class_" not in n and not n.endswith("/std")]

    @override
    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float] | None:
        collector, self._collector = self._collector, None
        reps = self._collect(trainer, pl_module, collector)
        return None if reps is None else self._on_rank_zero(trainer, partial(self._compute, reps))

    def _collect(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, collector: RepresentationCollector | None
    ) -> Representations | None:
        """Hidden states of this validation run, gathered over all processes (every process calls it)."""
        gather = self._gather(trainer)
        # with re-draws the per-class samples are drawn by persistence_metrics from every example
        random_once = self.preset.sampling == "random" and self.resamples == 1
        cap = self.preset.max_points_per_class if random_once else None
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
                reps.layers,
                list(reps.class_counts()),
                scores=self.scores,
                homology_dims=self.homology_dims,
                resamples=self.resamples,
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
            resamples=self.resamples,
        )
        self._last_diagrams = {c: [d.detach().cpu() for d in dg] for c, dg in result.diagrams.items()}
        self._last_layer = result.layer
        return {self._name(n): float(v) for n, v in result.values.items()}

    @override
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
