r"""
Lens monitor
============

The base class of every lens callback (:class:`~lightning_topo.callbacks.PersistenceScoreMonitor`,
:class:`~lightning_topo.callbacks.GeometryMonitor`,
:class:`~lightning_topo.callbacks.ConceptAlignmentMonitor`,
:class:`~lightning_topo.callbacks.TreeProbeMonitor`): the machinery they share -- when a
validation run is measured, logging, the history of measurements, correlation with a monitored
metric, figures at the end of ``fit``, the checkpoint state and the distributed helpers -- so that
a lens keeps only its arguments, its collection, its computation and its figures.
``docs/extending.md`` is the recipe for a new lens.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from copy import deepcopy
from pathlib import Path
from typing import Any, TypeVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_topo.callbacks.run_dir import pruning_epochs, record_settings, run_dir
from lightning_topo.encoding import EncodedBatch, model_inputs, module_device
from lightning_topo.metrics.base import LensMetric, LensResult
from lightning_topo.plots import wandb_loggers
from lightning_topo.plots.wandb import define_lens_metrics, log_score_vs_monitor
from lightning_topo.representations import run_on_rank_zero_and_broadcast
from lightning_topo.representations.capture import CapturedBatch, HiddenStateCapture, batch_labels
from lightning_topo.representations.modules import find_hf_model
from lightning_topo.scores.checks import check_bool, check_choice, check_int, check_layers, check_text
from lightning_topo.scores.correlation import correlation_metrics
from lightning_topo.scores.presets import SPLITS

__all__ = ["LensMonitor", "MetricMonitor"]

T = TypeVar("T")

#: Rows of the first batch the pre-training dry run forwards (checks NaN / identical hidden states).
DRY_RUN_ROWS = 4

#: The hooks and state methods :class:`LensMonitor` implements for every lens.
_SHARED = (
    "on_validation_batch_end",
    "on_validation_epoch_end",
    "on_validation_end",
    "on_train_epoch_end",
    "on_fit_end",
    "state_dict",
    "load_state_dict",
)


class LensMonitor(Callback):
    r"""Base class of the lens callbacks: measure at validation, log, keep a history, plot at fit end.

    What a subclass **gets** (all ``@override`` hooks, no private Lightning API):

    * ``on_validation_batch_end``: for each batch of the first validation dataloader, calls
      :meth:`_on_validation_batch` with the :class:`~lightning_topo.encoding.EncodedBatch` that
      ``validation_step`` returned (itself or under ``"encoded"``; ``None`` if it returned none),
      so that a lens reuses the validation forward instead of running its own.
    * ``on_validation_epoch_end``: when :meth:`_should_measure` (default: not
      ``trainer.sanity_checking`` and ``(current_epoch + 1) % every_n_epochs == 0``), calls
      :meth:`_measure` on every process and logs each returned value with
      ``pl_module.log(name, value, on_epoch=True, sync_dist=True)`` (values must already be
      equal on every process: compute them with :meth:`_on_rank_zero`). A *pending* record
      ``{"epoch", "step", "scores", "monitor": None, **_record_fields(trainer)}`` is kept.
    * ``on_validation_end``: only while fitting (not a stand-alone ``trainer.validate()``, not
      the sanity check) the pending record gets ``monitor`` (the value of ``monitor_against``,
      with one warning naming the logged metrics if it is missing) and joins :attr:`history`,
      keyed by ``(epoch, step)``: a resumed run that repeats a validation replaces its record.
      The correlations of the scores (:meth:`_correlated` picks which) with ``monitor_against``
      over the history are computed (:func:`~lightning_topo.scores.correlation_metrics`) ...
    * ``on_train_epoch_end``: ... and logged here (Lightning forbids ``log`` in ``on_validation_end``).
    * ``on_fit_end``: with ``plots=True`` and a non-empty history, asks :meth:`plot_dir` on every
      process (``trainer.log_dir`` is a collective call under DDP) and calls
      :meth:`_write_figures` on global rank 0.
    * ``state_dict`` / ``load_state_dict``: the history and :meth:`_settings` (default
      ``monitor_against``); a checkpoint with other settings warns and its history is not
      restored, so that one series is never measured two ways (the rule of every monitor).
    * helpers: :meth:`_name` (``{log_prefix}/...``), :meth:`_on_rank_zero` (compute on global
      rank 0, ``trainer.strategy.broadcast`` the result), :meth:`_log_values`.

    What a subclass **implements**:

    * ``__init__``: validate its own arguments, then ``super().__init__(every_n_epochs=...,
      monitor_against=..., plots=..., log_prefix=...)`` (validated here, errors name them);
    * ``state_key`` (``@property @override``, from ``self._generate_state_key(...)`` with the
      settings that tell two instances apart);
    * its collection: ``on_validation_epoch_start`` (start collecting when
      ``self._should_measure(trainer)``) and :meth:`_on_validation_batch`;
    * :meth:`_measure` -> ``{name: float}`` or ``None`` (nothing to log this time);
    * :meth:`_write_figures`;
    * optionally :meth:`_should_measure`, :meth:`_record_fields`, :meth:`_correlated`,
      :meth:`_settings`, :meth:`_in_prog_bar`.

    Args:
        every_n_epochs: measure in epochs where ``(current_epoch + 1) % every_n_epochs == 0``.
        monitor_against: metric recorded with each measurement and correlated with the scores
            (``None``: none).
        plots: write the figures at the end of ``fit``.
        log_prefix: first component of every metric name, of the figure folder and W&B keys.

    Raises:
        TypeError / ValueError: an invalid argument (the message names it).

    Example::

        >>> class NormMonitor(LensMonitor):  # the mean norm of the last hidden state
        ...     def __init__(self, monitor_against="val/acc", log_prefix="norm"):
        ...         super().__init__(monitor_against=monitor_against, log_prefix=log_prefix)
        ...     def _measure(self, trainer, pl_module):
        ...         return {self._name("mean"): float(pl_module.last_norm)}
        ...     def _write_figures(self, trainer, out):
        ...         return {}
    """

    def __init__(
        self,
        *,
        every_n_epochs: int = 1,
        monitor_against: str | None = "val/acc",
        plots: bool = True,
        log_prefix: str,
    ) -> None:
        super().__init__()
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs", minimum=1)
        if monitor_against is not None and not isinstance(monitor_against, str):
            raise TypeError(
                f"monitor_against must be a metric name such as 'val/acc', or None; got {monitor_against!r}"
            )
        if monitor_against == "":
            raise ValueError("monitor_against must be a metric name such as 'val/acc', or None; got ''")
        self.monitor_against = monitor_against
        self.plots = check_bool(plots, "plots")
        what = f"a non-empty string such as {type(self)._default_prefix()!r}"
        if not check_text(log_prefix, "log_prefix", what).strip("/"):
            raise ValueError(f"log_prefix must be {what}; got {log_prefix!r}")
        self.log_prefix = log_prefix.strip("/")
        #: One record per measurement: ``{"epoch", "step", "scores": {name: float}, "monitor": float | None, ...}``.
        self.history: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None
        self._pending_correlations: dict[str, float] = {}
        self._warned_missing_monitor = False

    @classmethod
    def _default_prefix(cls) -> str:
        """The ``log_prefix`` default of the subclass's ``__init__`` (for error messages)."""
        default = inspect.signature(cls.__init__).parameters.get("log_prefix")
        return default.default if default is not None and isinstance(default.default, str) else "topo"

    # ------------------------------------------------------------------ to implement

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float] | None:
        """Every value to log now, ``{self._name(...): float}`` equal on every process; ``None``: skip.

        Called on every process at the end of a measured validation run.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement _measure(trainer, pl_module)")

    def _write_figures(self, trainer: pl.Trainer, out: Path) -> dict[str, Path]:
        """Write the figures under ``out`` (global rank 0, end of ``fit``); returns ``{image key: path}``."""
        raise NotImplementedError(f"{type(self).__name__} must implement _write_figures(trainer, out)")

    def _on_validation_batch(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, encoded: EncodedBatch | None, batch: Any
    ) -> None:
        """Collect from one validation batch (first dataloader); ``encoded`` is ``None`` when
        ``validation_step`` did not return its forward pass (encode again or re-read later)."""

    def _should_measure(self, trainer: pl.Trainer) -> bool:
        """Whether this validation run is measured (never the sanity check)."""
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _record_fields(self, trainer: pl.Trainer) -> dict[str, Any]:
        """Extra fields of the record of the measurement :meth:`_measure` just made (default none)."""
        return {}

    def _correlated(self, names: list[str]) -> list[str]:
        """Which of the last record's score names are correlated with ``monitor_against`` (default all)."""
        return names

    def _settings(self) -> dict[str, Any]:
        """The settings the history depends on, saved with it and restored from a checkpoint."""
        return {"monitor_against": self.monitor_against}

    def _in_prog_bar(self, name: str) -> bool:
        """Whether the metric ``name`` also goes to the progress bar (default: none)."""
        return False

    # ------------------------------------------------------------------ helpers

    def _name(self, *parts: str) -> str:
        return "/".join([self.log_prefix, *parts])

    def plot_dir(self, trainer: pl.Trainer) -> Path:
        """Where the figures go: ``<run folder>/<log_prefix>`` (:func:`~lightning_topo.callbacks.run_dir.run_dir`:
        one versioned folder per run whatever the loggers, never shared with an earlier run)."""
        return run_dir(trainer) / self.log_prefix

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        define_lens_metrics(trainer.loggers, [self.log_prefix])
        if not (trainer.loggers or self._writes_files()):
            return  # no logger and no files of its own (plots=False): the run gets no folder from us
        # on every process: the run folder is chosen on rank 0 and broadcast
        run_dir(trainer)
        record_settings(
            trainer,
            f"{type(self).__name__}/{self.log_prefix}",
            {**self._settings(), "log_prefix": self.log_prefix, "headline": self._headline_for_report()},
        )

    def _writes_files(self) -> bool:
        """Whether the monitor writes files into the run folder (default: its figures, ``plots``)."""
        return self.plots

    def _headline_for_report(self) -> str | None:
        """The headline metric's full name (the report reads it); ``None`` when the lens has none."""
        return None

    def _publish_live(self, trainer: pl.Trainer) -> None:
        """With a W&B logger: this measurement's figures and the headline-vs-monitor chart, now."""
        if not trainer.is_global_zero or not wandb_loggers(trainer.loggers) or not self.history:
            return
        if self.plots:
            self._write_figures(trainer, self.plot_dir(trainer))  # also logs them to W&B at this step
        headline = self._headline_for_report()
        if headline and self.monitor_against:
            log_score_vs_monitor(
                trainer.loggers, self.history, headline, self.monitor_against, exclude_epochs=pruning_epochs(trainer)
            )

    @staticmethod
    def _on_rank_zero(trainer: pl.Trainer, fn: Callable[[], T]) -> T:
        """``fn()`` on global rank 0, its result broadcast to every process."""
        return run_on_rank_zero_and_broadcast(
            fn, is_global_zero=trainer.is_global_zero, broadcast=trainer.strategy.broadcast
        )

    def _log_values(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, values: dict[str, float], sync_dist: bool
    ) -> None:
        for name, value in values.items():
            pl_module.log(
                name,
                value,
                prog_bar=self._in_prog_bar(name),
                logger=bool(trainer.loggers),
                on_step=False,
                on_epoch=True,
                sync_dist=sync_dist,  # True: equal on every process already; keeps Lightning's DDP check quiet
            )

    def _monitor_value(self, trainer: pl.Trainer) -> float | None:
        if self.monitor_against is None:
            return None
        value = trainer.callback_metrics.get(self.monitor_against)
        if value is None and not self._warned_missing_monitor:
            self._warned_missing_monitor = True
            available = sorted(k for k in trainer.callback_metrics if not k.startswith(self.log_prefix + "/"))
            rank_zero_warn(
                f"{type(self).__name__}(monitor_against={self.monitor_against!r}): that metric was not "
                f"logged; available metrics: {available}. Set monitor_against to one of them (or None); "
                "no correlations are logged until then."
            )
        return None if value is None else float(value)

    def _correlations(self) -> dict[str, float]:
        if self.monitor_against is None or not self.history:
            return {}
        names = self._correlated(list(self.history[-1]["scores"]))
        series = {n: [r["scores"].get(n, math.nan) for r in self.history] for n in names}
        target = [math.nan if r.get("monitor") is None else r["monitor"] for r in self.history]
        values = correlation_metrics(series, target, target_name=self.monitor_against)
        return {name: float(value) for name, value in values.items()}

    # ------------------------------------------------------------------ shared hooks

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
        if dataloader_idx != 0:  # only the first validation dataloader is measured
            return
        encoded = outputs.get("encoded") if isinstance(outputs, Mapping) else outputs
        self._on_validation_batch(
            trainer, pl_module, encoded if isinstance(encoded, EncodedBatch) else None, batch
        )

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_measure(trainer):
            return
        values = self._measure(trainer, pl_module)
        if values is None:
            return
        self._log_values(trainer, pl_module, values, sync_dist=True)
        self._pending = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "scores": values,
            "monitor": None,
            **self._record_fields(trainer),
        }

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record, self._pending = self._pending, None
        if record is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return  # a stand-alone trainer.validate() logs the scores but does not extend the history
        record["monitor"] = self._monitor_value(trainer)
        key = (record["epoch"], record["step"])  # a resumed run repeating a validation replaces it
        self.history = [r for r in self.history if (r["epoch"], r.get("step")) != key] + [record]
        self._pending_correlations = self._correlations()
        self._publish_live(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        correlations, self._pending_correlations = self._pending_correlations, {}
        # sync_dist=True: no Lightning warning under DDP, and one value on every rank even when the
        # monitored metric was logged per rank (the ranks' correlations are averaged)
        self._log_values(trainer, pl_module, correlations, sync_dist=True)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self.plots and self.history):
            return
        out = self.plot_dir(trainer)  # on every process: trainer.log_dir is a collective call under DDP
        if trainer.is_global_zero:
            self._write_figures(trainer, out)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": deepcopy(self.history), **self._settings()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The one rule for a checkpoint with other settings (every monitor): its history is not restored.

        The ``state_key`` is built from every setting, so Lightning hands a monitor only the state
        of a monitor measuring the same series; a state loaded by hand with other settings warns,
        names them and leaves this monitor's history empty rather than mixing two series (the
        monitor's own settings are kept: they are what the user asked for).
        """
        current = self._settings()
        changed = [
            f"{k}={state_dict[k]!r} (now {v!r})" for k, v in current.items() if k in state_dict and state_dict[k] != v
        ]
        if changed:
            rank_zero_warn(
                f"{type(self).__name__}: the checkpoint's history was measured with {', '.join(changed)}; "
                "it is not restored, so that one series is never measured two ways"
            )
            return
        self.history = self._restored_history(deepcopy(state_dict.get("history", [])))

    def _restored_history(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The history records of a checkpoint as this monitor keeps them (default: as saved)."""
        return records


def _first_loader(loaders: Any) -> Any:
    """The first dataloader of what ``trainer.val_dataloaders`` / ``train_dataloader`` hold."""
    if isinstance(loaders, Mapping):
        return next(iter(loaders.values()), None)
    if isinstance(loaders, list | tuple):
        return loaders[0] if loaders else None
    return loaders


class MetricMonitor(LensMonitor):
    r"""A :class:`LensMonitor` that drives one lens :class:`~lightning_topo.metrics.LensMetric`.

    It needs nothing of the user's module but a Hugging Face encoder somewhere inside it:

    * ``setup``: finds the encoder (:func:`~lightning_topo.representations.modules.find_hf_model`:
      any attribute, nested; ``model_attr`` when there are several), builds the lens with
      :meth:`_build_metric` and resolves ``layers`` against the model's depth;
    * ``on_train_start`` (before the first training step): reads the labels of the measured split
      once and runs the encoder on its first batch, so that a missing ``labels`` key, fewer than 2
      classes, a single example of a class, or identical or non-finite hidden states are refused
      before anything is trained (:meth:`_check_data`);
    * measured validation runs: forward hooks (:class:`~lightning_topo.representations.capture.
      HiddenStateCapture`) record the encoder's hidden states during the module's own validation
      forward; each batch goes to ``metric.update`` with its labels (``batch["labels"]`` /
      ``batch["label"]`` or ``labels_fn(batch)``). With ``split="train"`` the training dataloader
      is read again at the end of validation, through the encoder alone, in eval mode;
    * ``metric.compute()`` (states synchronised over processes by torchmetrics) gives the logged
      values; lenses whose computation is costly (``compute_on_rank_zero``) compute on global
      rank 0 and ``trainer.strategy.broadcast`` the result.

    The settings that define a series (:meth:`_settings`) make the ``state_key``, so a checkpoint's
    history is restored only into a monitor measuring the same series.

    Args:
        layers: hidden-state index, list or ``"all"`` (0 = embeddings, negative from the end).
        split: ``"val"`` or ``"train"``.
        max_samples: the most examples one measurement reads per process (``None``: all).
        model_attr: dotted path of the Hugging Face model in the LightningModule (``None``: search).
        labels_fn: ``labels_fn(batch) -> (batch,)`` integer labels, for batches without a
            ``labels``/``label`` key.
        every_n_epochs, monitor_against, plots, log_prefix: as :class:`LensMonitor`.
    """

    #: The lens metric's class attribute ``needs_labels`` decides whether labels are required.
    def __init__(
        self,
        *,
        layers: Any = -1,
        split: str = "val",
        max_samples: int | None = None,
        model_attr: str | None = None,
        labels_fn: Callable[[Any], Any] | None = None,
        every_n_epochs: int = 1,
        monitor_against: str | None = "val/acc",
        plots: bool = True,
        log_prefix: str,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs, monitor_against=monitor_against, plots=plots, log_prefix=log_prefix
        )
        self.layers = check_layers(layers)
        self.split = check_choice(split, "split", SPLITS)
        self.max_samples = check_int(max_samples, "max_samples", minimum=1, allow_none=True)
        if model_attr is not None and (not isinstance(model_attr, str) or not model_attr):
            raise TypeError(f"model_attr must be a dotted attribute path such as 'net', or None; got {model_attr!r}")
        self.model_attr = model_attr
        if labels_fn is not None and not callable(labels_fn):
            raise TypeError(f"labels_fn must be a callable batch -> labels, or None; got {labels_fn!r}")
        self.labels_fn = labels_fn
        self.metric: LensMetric | None = None
        self.last_result: LensResult | None = None
        self._hf_model: Any = None
        self._hf_path: str = ""
        self._capture: HiddenStateCapture | None = None
        self._measuring = False
        self._batches_seen = 0
        self._classes: list[int] = []  # the split's classes, counted at on_train_start

    # ------------------------------------------------------------------ to implement

    def _build_metric(self, hf_model: Any) -> LensMetric:
        """The lens metric for this model (called at ``setup``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _build_metric(hf_model)")

    def _update(self, captured: Any, labels: Tensor | None) -> None:
        """Feed one captured encoder call to the metric (``metric.update_from``)."""
        assert self.metric is not None
        self.metric.update_from(captured, labels)

    def _settings(self) -> dict[str, Any]:
        """Every setting that tells two monitors' series apart (saved, and the ``state_key``)."""
        return {
            "monitor_against": self.monitor_against,
            "log_prefix": self.log_prefix,
            "layers": self.layers,
            "split": self.split,
            "max_samples": self.max_samples,
        }

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(**{k: repr(v) for k, v in self._settings().items()})

    @override
    def _restored_history(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"step": None, **record} for record in records]  # checkpoints written before "step" existed

    # ------------------------------------------------------------------ setup and checks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._hf_model is None or self.metric is None:
            self._find_model(pl_module)
        super().setup(trainer, pl_module, stage)

    @override
    def _headline_for_report(self) -> str | None:
        return self.headline_name

    def _find_model(self, pl_module: pl.LightningModule) -> None:
        """Find the Hugging Face model, build the lens, check the model and make the capture."""
        self._hf_path, self._hf_model = find_hf_model(pl_module, self.model_attr)
        self.metric = self._build_metric(self._hf_model)
        try:
            self.metric.check_model(self._hf_model)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{type(self).__name__}: {err}") from None
        self._capture = self.metric.make_capture(self._hf_model)

    def _refresh_model(self, pl_module: pl.LightningModule) -> None:
        """Follow a model that was replaced since ``setup`` (structured pruning swaps it): the hooks
        move to the module now at the same path."""
        current = pl_module.get_submodule(self._hf_path) if self._hf_path else self._hf_model
        if current is self._hf_model:
            return
        assert self.metric is not None
        if self._capture is not None:
            self._capture.detach()
        self._hf_model = current
        self.metric.check_model(current)
        self._capture = self.metric.make_capture(current)

    def _split_loader(self, trainer: pl.Trainer) -> Any:
        return _first_loader(trainer.val_dataloaders if self.split == "val" else trainer.train_dataloader)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = self._split_loader(trainer)
        if loader is None:
            rank_zero_warn(
                f"{type(self).__name__}(split={self.split!r}) found no {self.split} dataloader on the "
                "trainer; nothing will be measured"
            )
            return
        with torch.random.fork_rng(devices=[]):  # a shuffled loader draws from the global RNG
            counts, first = self._scan_labels(loader)
        if trainer.world_size > 1:  # each process reads its shard: the checks are on the whole split
            counts = self._sum_counts(trainer, counts)
        self._check_data(trainer, pl_module, counts, first)
        self._classes = sorted(counts)

    def expected_names(self) -> set[str] | None:
        """Every metric name this monitor can log (scores and their correlations with
        ``monitor_against``), known from ``on_train_start`` on (layers bound, the split's classes
        counted); ``None`` where the names are not known before a measurement (the default).

        :class:`~lightning_topo.callbacks.PSFEarlyStopping` checks its ``monitor`` against it
        before the first training step, so a misspelt name fails before any training.
        """
        return None

    @staticmethod
    def _sum_counts(trainer: pl.Trainer, counts: dict[int, int]) -> dict[int, int]:
        """Per-class counts summed over processes (``trainer.strategy.reduce``)."""
        strategy = trainer.strategy
        top = int(strategy.reduce(torch.tensor(max(counts, default=-1), device=strategy.root_device), reduce_op="max"))
        local = torch.zeros(top + 1, dtype=torch.long, device=strategy.root_device)
        for c, n in counts.items():
            local[c] = n
        total = strategy.reduce(local, reduce_op="sum")
        return {c: int(n) for c, n in enumerate(total.tolist()) if n > 0}

    def _scan_labels(self, loader: Any) -> tuple[dict[int, int], Any]:
        """Class counts of the split (up to ``max_samples`` examples) and its first batch."""
        counts: dict[int, int] = {}
        first = None
        seen = 0
        for batch in loader:
            first = batch if first is None else first
            labels = batch_labels(batch, self.labels_fn)
            if labels is None:
                if self.metric is not None and getattr(self.metric, "needs_labels", True):
                    raise ValueError(
                        f"{type(self).__name__} needs the class label of every example: the {self.split} "
                        "batches have no 'labels' or 'label' key; add one, or pass "
                        "labels_fn=lambda batch: <(batch,) int tensor>"
                    )
                break
            for value in labels.tolist():
                counts[int(value)] = counts.get(int(value), 0) + 1
            seen += len(labels)
            if self.max_samples is not None and seen >= self.max_samples:
                break
        return counts, first

    def _check_data(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, counts: dict[int, int], first: Any
    ) -> None:
        """Refuse, before training, data the lens cannot measure (labels, classes, hidden states)."""
        needs_labels = getattr(self.metric, "needs_labels", True)
        name = type(self).__name__
        if needs_labels and counts:
            if len(counts) < 2:
                raise ValueError(
                    f"{name}: the {self.split} split has a single class ({next(iter(counts))}); the lens "
                    "compares classes and needs at least 2 classes"
                )
            single = sorted(c for c, n in counts.items() if n < 2)
            if single:
                raise ValueError(
                    f"{name}: class {single[0]} has a single example in the {self.split} split; every class "
                    "needs at least 2 (use a larger split or max_samples=None)"
                )
            expected = getattr(getattr(self._hf_model, "config", None), "num_labels", None)
            if isinstance(expected, int) and expected > len(counts):
                missing = sorted(set(range(expected)) - set(counts))
                if missing and len(missing) < expected:
                    rank_zero_warn(
                        f"{name}: the model has {expected} labels but the {self.split} split read has no "
                        f"example of class {missing}; those classes are not measured"
                    )
        if isinstance(first, Mapping) and "input_ids" in first:
            captured = self._dry_run(first)
            if captured is not None:
                self._check_hidden(captured)

    def _dry_run(self, batch: Mapping[str, Any]) -> CapturedBatch | None:
        """Run the encoder alone on the first :data:`DRY_RUN_ROWS` rows of one batch under a
        hidden-state capture (eval mode, no grad): enough to see NaN or identical hidden states at a
        small fraction of one validation batch's cost."""
        assert self.metric is not None
        capture = HiddenStateCapture(self._hf_model, keep=self.metric.selected_layers)
        model = self._hf_model
        was_training = model.training
        model.eval()
        try:
            device = module_device(model)
            inputs = {k: v[:DRY_RUN_ROWS].to(device) for k, v in model_inputs(batch).items()}
            with capture, torch.no_grad():
                model(**inputs)
            captured = capture.pop()
        finally:
            model.train(was_training)
        return captured[-1] if captured else None

    def _check_hidden(self, captured: CapturedBatch) -> None:
        assert self.metric is not None
        name = type(self).__name__
        for layer in self.metric.selected_layers:
            h = captured.hidden_states[layer]
            if h is None:
                continue
            if not bool(torch.isfinite(h).all()):
                raise ValueError(
                    f"{name}: hidden state {layer} of the model has NaN/inf values on the first {self.split} "
                    "batch; check the model's weights"
                )
            if h.shape[0] > 1 and bool((h[:, 0] == h[:1, 0]).all()) and bool((h == h[:1]).all()):
                raise ValueError(
                    f"{name}: hidden state {layer} is identical for every example of the first {self.split} "
                    "batch, so the lens measures nothing; check that the inputs differ and the model is loaded"
                )

    # ------------------------------------------------------------------ collection

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._measuring = self._should_measure(trainer) and self.metric is not None
        self._batches_seen = 0
        if not self._measuring:
            return
        self._refresh_model(pl_module)
        assert self.metric is not None and self._capture is not None
        self.metric.reset()
        if self.split == "val":
            self._capture.pop()
            self._capture.attach()

    @override
    def _on_validation_batch(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, encoded: Any, batch: Any
    ) -> None:
        if not self._measuring or self.split != "val":
            return
        assert self._capture is not None
        captured = self._capture.pop()
        if not captured:
            return
        self._batches_seen += 1
        self._update(captured[-1], batch_labels(batch, self.labels_fn))

    def _read_split(self, trainer: pl.Trainer) -> None:
        """``split="train"``: run the encoder over the training dataloader (eval mode, no grad)."""
        assert self._capture is not None and self.metric is not None
        loader = self._split_loader(trainer)
        if loader is None:
            return
        model = self._hf_model
        was_training = model.training
        model.eval()
        device = module_device(model)
        seen = 0
        try:
            with self._capture, torch.no_grad(), torch.random.fork_rng(devices=[]):
                for batch in loader:
                    self._capture.pop()
                    model(**{k: v.to(device) for k, v in model_inputs(batch).items()})
                    captured = self._capture.pop()
                    labels = batch_labels(batch, self.labels_fn)
                    if captured:
                        self._batches_seen += 1
                        self._update(captured[-1], labels)
                    seen += len(labels) if labels is not None else int(model_inputs(batch)["input_ids"].shape[0])
                    if self.max_samples is not None and seen >= self.max_samples:
                        break
        finally:
            model.train(was_training)

    @override
    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float] | None:
        assert self._capture is not None and self.metric is not None
        self._capture.detach()
        self._measuring = False
        if self.split == "train":
            self._read_split(trainer)
        if self._batches_seen == 0:
            raise RuntimeError(
                f"{type(self).__name__}: the Hugging Face model at pl_module.{self._hf_path} did not run during "
                f"this {self.split} pass, so there is nothing to measure; the lens reads that model's "
                "hidden states during your validation forward (set model_attr= to the model you run)"
            )
        if getattr(self.metric, "compute_on_rank_zero", False) and trainer.world_size > 1:
            if self.metric.sync_on_compute:
                raise RuntimeError(
                    f"{type(self).__name__}: a lens computed on rank 0 must be built with sync_on_compute=False "
                    "(the monitor synchronises its states itself)"
                )
            self.metric.sync()  # every process joins the gather (torchmetrics); rank 0 computes
            try:
                result = self._on_rank_zero(trainer, self.metric.compute)  # compute() un-syncs rank 0
            finally:
                if not trainer.is_global_zero:
                    self.metric.unsync()
        else:
            result = self.metric.compute()
        self.last_result = result
        return result.metrics(self.log_prefix)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._capture is not None:
            self._capture.detach()
        super().on_validation_epoch_end(trainer, pl_module)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # never leave hooks on the user's model after an error
        if self._capture is not None:
            self._capture.detach()
        self._measuring = False

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._capture is not None:
            self._capture.detach()

    @property
    def headline_name(self) -> str:
        """The lens's headline metric, without a layer in its name (``topo/psf``, ``geometry/cone``)."""
        cls = type(self.metric) if self.metric is not None else None
        headline = getattr(self.metric, "headline_score", None) or (cls.headline if cls else "")
        return self._name(headline)
