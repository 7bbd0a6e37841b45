r"""
Persistence score monitor
=========================

Log BERTops' PSF and persistence statistics of the hidden representations at every
validation run, so that :class:`~lightning.pytorch.callbacks.EarlyStopping` and
:class:`~lightning.pytorch.callbacks.ModelCheckpoint` can monitor ``topo/psf``.

The callback decides *when* to measure and *what* to log, nothing more: the lens is
:class:`lightning_topo.metrics.PersistenceScore` (a torchmetrics ``Metric``), fed by forward
hooks on the Hugging Face encoder inside any LightningModule
(:class:`~lightning_topo.callbacks.lens.MetricMonitor`); the figures come from
:mod:`lightning_topo.plots`. ``docs/extending.md`` describes this pattern for new lenses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

from lightning_topo import plots
from lightning_topo.callbacks.lens import MetricMonitor
from lightning_topo.metrics import PersistenceScore
from lightning_topo.scores import SCORES, PSFPreset, get_preset
from lightning_topo.scores.checks import check_bool
from lightning_topo.scores.correlation import correlation_names

__all__ = ["PersistenceScoreMonitor", "SCORES"]


class PersistenceScoreMonitor(MetricMonitor):
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

    ``topo`` is ``log_prefix``. **One forward pass, any LightningModule**: forward hooks on the
    Hugging Face encoder found inside the module (any attribute; ``model_attr`` when several)
    read its hidden states during the module's own validation forward; nothing is asked of
    ``forward`` or of what ``validation_step`` returns. Labels come from ``batch["labels"]`` /
    ``batch["label"]`` or ``labels_fn(batch)``. Missing labels, a single class, a class with one
    example and identical or non-finite hidden states are refused in ``on_train_start``, before
    the first training step. **DDP**: the lens's states are synchronised by torchmetrics and
    every process computes the same values, logged with ``sync_dist=True``.
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
        max_samples: read at most this many examples per measurement (per process under DDP;
            ``None``: the whole split).
        model_attr: dotted path of the Hugging Face model in the LightningModule (``None``: found).
        labels_fn: ``labels_fn(batch) -> (batch,)`` labels for batches without ``labels``/``label``.
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
            sampling the monitor keeps every collected example (``max_samples`` bounds them)
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
        max_samples: int | None = None,
        seed: int = 0,
        preset: str | PSFPreset = "default",
        monitor_against: str | None = "val/acc",
        plots: bool = True,
        log_prefix: str = "topo",
        prog_bar: bool = True,
        backend: str = "torch",
        resamples: int = 5,
        model_attr: str | None = None,
        labels_fn: Callable[[Any], Any] | None = None,
    ) -> None:
        self.preset = get_preset(preset).override(
            split=split, pooling=pooling, max_points_per_class=max_points_per_class
        )
        self.preset_name = preset if isinstance(preset, str) else "custom"
        # the lens checks its own arguments; built once here so that errors come at construction
        self._template = PersistenceScore(
            layers=self.preset.layer if layers is None else layers,
            scores=scores,
            homology_dims=homology_dims,
            preset=self.preset,
            resamples=resamples,
            backend=backend,
            max_samples=max_samples,
            seed=seed,
        )
        super().__init__(
            layers=self._template.layers,
            split=self.preset.split,
            max_samples=max_samples,
            model_attr=model_attr,
            labels_fn=labels_fn,
            every_n_epochs=every_n_epochs,
            monitor_against=monitor_against,
            plots=plots,
            log_prefix=log_prefix,
        )
        self.pooling = self._template.pooling
        self.scores = self._template.scores
        self.homology_dims = self._template.homology_dims
        self.seed = self._template.seed
        self.backend = self._template.backend
        self.resamples = self._template.resamples
        self.prog_bar = check_bool(prog_bar, "prog_bar")

    @override
    def _build_metric(self, hf_model: Any) -> PersistenceScore:
        return self._template

    @override
    def _settings(self) -> dict[str, Any]:
        return {
            **super()._settings(),
            "preset": self.preset_name,
            "pooling": self.pooling,
            "scores": list(self.scores),
            "homology_dims": list(self.homology_dims),
            "max_points_per_class": self.preset.max_points_per_class,
            "sampling": self.preset.sampling,
            "resamples": self.resamples,
            "seed": self.seed,
        }

    @property
    def score_name(self) -> str:
        """Name of the headline metric, ``topo/psf``."""
        return self._name(self._template.headline_score)

    @override
    def _in_prog_bar(self, name: str) -> bool:
        return self.prog_bar and name == self.score_name

    @override
    def _correlated(self, names: list[str]) -> list[str]:
        # every score but the per-class ones and the standard errors
        return [n for n in names if "/class_" not in n and not n.endswith("/std")]

    @override
    def expected_names(self) -> set[str] | None:
        if self.metric is None or self.metric.num_layers is None or not self._classes:
            return None
        names = [self._name(n) for n in self._template.metric_names(self._classes)]
        correlations: list[str] = []
        if self.monitor_against is not None:
            correlations = [c for n in self._correlated(names) for c in correlation_names(n, self.monitor_against)]
        return {*names, *correlations}

    @override
    def _write_figures(self, trainer: pl.Trainer, out: Path) -> dict[str, Path]:
        monitor = self.monitor_against if any(r["monitor"] is not None for r in self.history) else None
        score = self.score_name if "psf" in self.scores else next(iter(self.history[-1]["scores"]))
        last = self.history[-1]
        extras = self.last_result.extras if self.last_result is not None else {}
        images = plots.write_history_figures(
            self.history,
            out,
            score=score,
            monitor=monitor,
            diagrams=extras.get("diagrams"),
            diagram_title=f"persistence diagrams, layer {extras.get('layer')}, {self.pooling}, "
            f"epoch {last['epoch']}, step {last['step']}",
            key_prefix=self.log_prefix,
        )
        plots.publish_to_wandb(
            trainer.loggers, images, self.history, monitor, table_key=self._name("history")
        )
        return images
