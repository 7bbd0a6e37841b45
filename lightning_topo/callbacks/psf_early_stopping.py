r"""
Noise-aware early stopping on PSF
=================================

:class:`PSFEarlyStopping` is Lightning's :class:`~lightning.pytorch.callbacks.EarlyStopping`
with one change: a difference between the current score and the best one counts only when it
exceeds ``k_sigma`` standard errors of that difference, read from the ``<monitor>/std`` that
:class:`~lightning_topo.callbacks.PersistenceScoreMonitor` logs (``resamples > 1``). PSF
measured on a few hundred points per class moves by sampling noise alone; ``docs/psf.md``
("What PSF tells you") has the measurements.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_topo.callbacks.lens import MetricMonitor
from lightning_topo.scores.checks import check_bool, check_choice, check_int, check_real

__all__ = ["DEFAULT_K_SIGMA", "PATIENCE_COUNTS", "PSFEarlyStopping"]

#: Default ``k_sigma`` (chosen from ``benchmarks/early_stopping.py``; ``docs/psf.md``).
DEFAULT_K_SIGMA = 2.0

#: What a check that is not a significant improvement does to the patience counter:
#: ``"not_better"`` (Lightning's rule: every such check counts) or ``"worse"`` (only a
#: significantly worse check counts; a change within the noise resets the counter).
PATIENCE_COUNTS: tuple[str, ...] = ("not_better", "worse")


class PSFEarlyStopping(EarlyStopping):
    r"""Lightning's ``EarlyStopping`` where a change must exceed the noise of the logged score.

    At the end of every validation run of ``fit`` (never the sanity check) it reads ``monitor``
    and its standard error ``std_monitor`` from ``trainer.callback_metrics`` and compares the
    current value ``x`` with the best so far ``b`` (standard errors ``s_x`` and ``s_b``) using
    the threshold ``t = max(min_delta, k_sigma * sqrt(s_x**2 + s_b**2))``, the standard error
    of the difference of two independent estimates times ``k_sigma``. ``topo/psf/std`` is the
    standard error over the validation examples (half-sampling) combined with the re-draw
    spread (``docs/psf.md``, "How uncertain is PSF?"); so without any ``min_delta`` the rule
    follows the noise of the user's own validation set.

    * better than ``b`` by more than ``t`` (in the ``mode`` direction): an improvement, ``x``
      becomes the best and the patience counter is reset;
    * otherwise, with ``patience_counts="not_better"`` (default, Lightning's rule) the counter
      grows; with ``"worse"`` it grows only when ``x`` is worse than ``b`` by more than ``t``
      and a change within ``t`` resets it (so a flat noisy score is never stopped);
    * at ``patience`` the trainer stops; :attr:`stopping_reason` is Lightning's
      ``EarlyStoppingReason.PATIENCE_EXHAUSTED`` (``NON_FINITE_METRIC`` for NaN/inf with
      ``check_finite``) and :attr:`stopping_reason_message` says why.

    The reason for stopping is printed on global rank 0 through Lightning's own logger (the one
    ``EarlyStopping(verbose=True)`` prints with), whatever ``verbose``; ``verbose=True`` also
    prints every check's decision. Without ``std_monitor`` in the logged metrics (e.g.
    ``PersistenceScoreMonitor(resamples=1)``) ``t = min_delta`` and a rank-zero warning says
    so. The state (best score, its standard error, the counter, the reason) is saved in
    checkpoints. The rule is Lightning's extension point ``_evaluate_stopping_criteria``; the
    standard error is read in ``_run_early_stopping_check`` just before it.

    Args:
        monitor: metric to watch (default ``"topo/psf"``).
        mode: ``"min"`` (lower is better) or ``"max"``; required, because the direction of PSF
            is an empirical question (``docs/psf.md``; the monitor logs
            ``topo/psf/spearman_val_acc``).
        k_sigma: finite float >= 0 (default :data:`DEFAULT_K_SIGMA`), the multiple of the
            standard error of the difference a change must exceed.
        min_delta: finite float >= 0 (default 0.0), the smallest change that counts, whatever
            the standard error (a floor for ``t``).
        patience: int >= 1 (default 2), checks without a significant improvement before
            stopping (see ``patience_counts``).
        patience_counts: ``"not_better"`` (default) or ``"worse"``, see above.
        std_monitor: name of the standard error of ``monitor`` (default ``f"{monitor}/std"``).
        verbose: print every decision (default ``False``; the stop itself is always printed).
        strict: raise if ``monitor`` is missing from the logged metrics (default ``True``);
            with ``False`` the check is skipped.
        check_finite: stop when ``monitor`` is NaN or infinite (default ``True``).
        log_rank_zero_only: print on global rank 0 only (default ``True``).

    Raises:
        TypeError / ValueError: an invalid argument, at construction (the message names it).
        ValueError: ``strict`` and ``monitor`` under a lens monitor's ``log_prefix`` (``topo/...``)
            that the monitor never logs: before the first training step, with the close matches.
        RuntimeError: ``strict`` and ``monitor`` (of another prefix) not logged at the end of the
            first validation (the message lists what is).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_topo.callbacks import PersistenceScoreMonitor, PSFEarlyStopping
        >>> monitor = PersistenceScoreMonitor(resamples=5)      # logs topo/psf and topo/psf/std
        >>> stop = PSFEarlyStopping(mode="min", patience=2)     # k_sigma standard errors
        >>> trainer = Trainer(callbacks=[monitor, stop], max_epochs=8)
    """

    def __init__(
        self,
        monitor: str = "topo/psf",
        *,
        mode: str,
        k_sigma: float = DEFAULT_K_SIGMA,
        min_delta: float = 0.0,
        patience: int = 2,
        patience_counts: str = "not_better",
        std_monitor: str | None = None,
        verbose: bool = False,
        strict: bool = True,
        check_finite: bool = True,
        log_rank_zero_only: bool = True,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"monitor must be a non-empty metric name (str); got {monitor!r}")
        if std_monitor is not None and (not isinstance(std_monitor, str) or not std_monitor):
            raise TypeError(f"std_monitor must be a metric name (str) or None; got {std_monitor!r}")
        floor = check_real(min_delta, "min_delta", minimum=0.0)
        super().__init__(
            monitor=monitor,
            min_delta=floor,
            patience=check_int(patience, "patience", minimum=1),  # type: ignore[arg-type]
            verbose=check_bool(verbose, "verbose"),
            mode=check_choice(mode, "mode", ("min", "max")),
            strict=check_bool(strict, "strict"),
            check_finite=check_bool(check_finite, "check_finite"),
            check_on_train_epoch_end=False,
            log_rank_zero_only=check_bool(log_rank_zero_only, "log_rank_zero_only"),
        )
        self.k_sigma = check_real(k_sigma, "k_sigma", minimum=0.0)
        self.patience_counts = check_choice(patience_counts, "patience_counts", PATIENCE_COUNTS)
        self.min_delta_floor = floor
        self.std_monitor = std_monitor if std_monitor is not None else f"{monitor}/std"
        self.best_std = 0.0
        self.current_std = 0.0  # the standard error of the value being checked
        self._warned_no_std = False
        self._names_checked = False

    # ------------------------------------------------------------------ state

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_std": self.best_std}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_std = float(state_dict.get("best_std", 0.0))

    # ------------------------------------------------------------------ Lightning's hooks

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Before the first training step: a ``monitor`` under a lens monitor's ``log_prefix`` must
        be one of the names that monitor logs (:meth:`MetricMonitor.expected_names`), so a misspelt
        name fails before any training instead of after the first epoch."""
        if self._names_checked:
            return
        self._names_checked = True
        if not self.strict:
            return
        prefix = self.monitor.split("/", 1)[0]
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if not isinstance(callback, MetricMonitor) or callback.log_prefix != prefix:
                continue
            names = callback.expected_names()
            if names is None or self.monitor in names:
                return
            close = difflib.get_close_matches(self.monitor, sorted(names), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
            detail = ("/layer_", "/class_", "/pearson_", "/spearman_")
            shown = sorted(n for n in names if not any(part in n for part in detail))
            raise ValueError(
                f"PSFEarlyStopping(monitor={self.monitor!r}): {type(callback).__name__} "
                f"(log_prefix={prefix!r}) logs no metric of that name{hint} It logs {len(names)} names, "
                f"e.g. {', '.join(shown[:6])}. Nothing was trained; strict=False skips this check"
            )

    @override
    def _validate_condition_metric(self, logs: dict[str, Tensor]) -> bool:
        if self.monitor in logs:
            return True
        message = (
            f"PSFEarlyStopping monitors `{self.monitor}`, which is not logged. Logged metrics: "
            f"{', '.join(sorted(logs)) or 'none'}. Add PersistenceScoreMonitor before this "
            "callback or set `monitor`; strict=False skips the check instead."
        )
        if self.strict:
            raise RuntimeError(message)
        rank_zero_warn(message)
        return False

    @override
    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        """Read the standard error, run Lightning's check, print the reason of a stop on rank 0."""
        self.current_std = self._std(trainer.callback_metrics)
        stopped_before = trainer.should_stop
        super()._run_early_stopping_check(trainer)
        if trainer.should_stop and not stopped_before and self.stopping_reason_message and not self.verbose:
            self._log_info(trainer, self.stopping_reason_message, self.log_rank_zero_only)

    @override
    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, str | None]:
        """The noise-aware rule (see the class docstring); uses :attr:`current_std`."""
        return self.decide(current, self.current_std)

    # ------------------------------------------------------------------ the rule

    def _std(self, logs: dict[str, Any]) -> float:
        """The logged standard error, or 0 (with one warning) when it is not logged."""
        if self.std_monitor in logs:
            value = float(logs[self.std_monitor])
            return value if math.isfinite(value) else 0.0
        if not self._warned_no_std:
            self._warned_no_std = True
            rank_zero_warn(
                f"PSFEarlyStopping: `{self.std_monitor}` is not logged, so changes are compared with "
                f"min_delta={self.min_delta_floor} only. Log it with PersistenceScoreMonitor(resamples=5) "
                "or set `std_monitor`."
            )
        return 0.0

    def threshold(self, std: float) -> float:
        """``max(min_delta, k_sigma * sqrt(std**2 + best_std**2))`` for a current standard error."""
        return max(self.min_delta_floor, self.k_sigma * math.hypot(std, self.best_std))

    def decide(self, current: Tensor, std: float) -> tuple[bool, str | None]:
        """Update the state with one check of value ``current`` (standard error ``std``).

        Returns ``(should_stop, message)``; sets :attr:`stopping_reason` when it stops.
        """
        current = current.detach().squeeze().cpu().double()
        if self.check_finite and not bool(torch.isfinite(current)):
            self.stopping_reason = EarlyStoppingReason.NON_FINITE_METRIC
            return (
                True,
                f"Monitored metric {self.monitor} = {float(current)} is not finite. Signaling Trainer to stop.",
            )
        best = self.best_score.detach().cpu().double()
        if not bool(torch.isfinite(best)):
            self.best_score, self.best_std, self.wait_count = current, std, 0
            return (
                False,
                f"Metric {self.monitor} = {float(current):.5f} (± {std:.5f}): first value, the best so far.",
            )
        t = self.threshold(std)
        gain = float(current - best) * (1.0 if self.mode == "max" else -1.0)
        if gain > t:
            self.best_score, self.best_std, self.wait_count = current, std, 0
            return False, (
                f"Metric {self.monitor} improved by {gain:.5f} > {t:.5f} (k_sigma={self.k_sigma} standard "
                f"errors, min_delta={self.min_delta_floor}). New best score: {float(current):.5f}."
            )
        if self.patience_counts == "worse" and gain >= -t:
            self.wait_count = 0
            return (
                False,
                f"Metric {self.monitor} within {t:.5f} of the best {float(best):.5f} (noise); waiting.",
            )
        self.wait_count += 1
        what = "not better than the best" if gain >= -t else "worse than the best"
        if self.wait_count >= self.patience:
            self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
            return True, (
                f"Monitored metric {self.monitor} was {what} {float(best):.5f} by more than {t:.5f} "
                f"(k_sigma={self.k_sigma} standard errors) for {self.wait_count} checks "
                f"(patience={self.patience}); last value {float(current):.5f} ± {std:.5f}. Signaling Trainer to stop."
            )
        return False, (
            f"Metric {self.monitor} = {float(current):.5f} not better than the best {float(best):.5f} by more "
            f"than {t:.5f} ({self.wait_count}/{self.patience})."
        )
