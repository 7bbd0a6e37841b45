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

import logging
import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lightning_topo.scores.checks import check_bool, check_choice, check_int, check_real

__all__ = ["PSFEarlyStopping"]

log = logging.getLogger(__name__)


class PSFEarlyStopping(EarlyStopping):
    r"""Stop when ``monitor`` has been *significantly* worse than its best for ``patience`` checks.

    At the end of every validation run of ``fit`` (never the sanity check) it reads ``monitor``
    and its standard error ``std_monitor`` from ``trainer.callback_metrics`` and compares the
    current value ``x`` with the best so far ``b`` (standard errors ``s_x`` and ``s_b``) using
    the threshold ``t = max(min_delta, k_sigma * sqrt(s_x**2 + s_b**2))``, the standard error
    of the difference of two independent means:

    * better than ``b`` by more than ``t`` (in the ``mode`` direction): an improvement, ``x``
      becomes the best and the patience counter is reset;
    * worse than ``b`` by more than ``t``: the counter grows; at ``patience`` training stops;
    * within ``t`` of ``b``: indistinguishable from the best given the noise; the counter is
      reset (``patience`` counts *consecutive* significantly worse checks).

    So a run whose score only moves by sampling noise is not stopped (give ``max_epochs``), and
    a run that clearly gets worse is. Without ``std_monitor`` in the logged metrics (e.g.
    ``PersistenceScoreMonitor(resamples=1)``) ``t = min_delta`` and a rank-zero warning says so.
    A non-finite ``monitor`` stops training when ``check_finite``. The state (best score, its
    standard error, the counter) is saved in checkpoints.

    Args:
        monitor: metric to watch (default ``"topo/psf"``).
        mode: ``"min"`` (lower is better) or ``"max"``; required, because the direction of PSF
            is an empirical question (``docs/psf.md``; the monitor logs
            ``topo/psf/spearman_val_acc``).
        k_sigma: finite float >= 0 (default 2.0), the multiple of the standard error of the
            difference a change must exceed.
        min_delta: finite float >= 0 (default 0.0), the smallest change that counts, whatever
            the standard error (a floor for ``t``).
        patience: int >= 1 (default 3), consecutive significantly worse checks before stopping.
        std_monitor: name of the standard error of ``monitor`` (default ``f"{monitor}/std"``).
        verbose: log every decision (default ``False``).
        strict: raise if ``monitor`` is missing from the logged metrics (default ``True``);
            with ``False`` the check is skipped.
        check_finite: stop when ``monitor`` is NaN or infinite (default ``True``).
        log_rank_zero_only: log messages on global rank 0 only (default ``False``).

    Raises:
        TypeError / ValueError: an invalid argument, at construction (the message names it).
        RuntimeError: ``strict`` and ``monitor`` not logged (the message lists what is).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_topo.callbacks import PersistenceScoreMonitor, PSFEarlyStopping
        >>> monitor = PersistenceScoreMonitor(resamples=5)      # logs topo/psf and topo/psf/std
        >>> stop = PSFEarlyStopping(mode="min", k_sigma=2.0, min_delta=0.005, patience=2)
        >>> trainer = Trainer(callbacks=[monitor, stop], max_epochs=8)
    """

    def __init__(
        self,
        monitor: str = "topo/psf",
        *,
        mode: str,
        k_sigma: float = 2.0,
        min_delta: float = 0.0,
        patience: int = 3,
        std_monitor: str | None = None,
        verbose: bool = False,
        strict: bool = True,
        check_finite: bool = True,
        log_rank_zero_only: bool = False,
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
        self.min_delta_floor = floor
        self.std_monitor = std_monitor if std_monitor is not None else f"{monitor}/std"
        self.best_std = 0.0
        self._warned_no_std = False

    # ------------------------------------------------------------------ state

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_std": self.best_std}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_std = float(state_dict.get("best_std", 0.0))

    # ------------------------------------------------------------------ hooks

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Nothing: the check runs at the end of each validation run, where PSF is logged."""

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or trainer.fast_dev_run:
            return
        logs = trainer.callback_metrics
        if self.monitor not in logs:
            message = (
                f"PSFEarlyStopping monitors `{self.monitor}`, which is not logged. Logged metrics: "
                f"{', '.join(sorted(logs)) or 'none'}. Add PersistenceScoreMonitor before this "
                "callback or set `monitor`; strict=False skips the check instead."
            )
            if self.strict:
                raise RuntimeError(message)
            rank_zero_warn(message)
            return
        current = logs[self.monitor].detach().squeeze().cpu().double()
        should_stop, reason = self.decide(current, self._std(logs))
        should_stop = trainer.strategy.reduce_boolean_decision(should_stop, all=False)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason
        if reason and self.verbose and (not self.log_rank_zero_only or trainer.global_rank == 0):
            log.info(reason)

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

    def decide(self, current: torch.Tensor, std: float) -> tuple[bool, str | None]:
        """Update the state with one check; returns ``(should_stop, message)``."""
        if self.check_finite and not bool(torch.isfinite(current)):
            return True, f"{self.monitor} = {float(current)} is not finite; stopping."
        best = self.best_score.detach().cpu().double()
        if not bool(torch.isfinite(best)):
            self.best_score, self.best_std, self.wait_count = current, std, 0
            return False, f"{self.monitor} = {float(current):.5f} (± {std:.5f}): first value."
        t = self.threshold(std)
        gain = float(current - best) * (1.0 if self.mode == "max" else -1.0)
        if gain > t:
            self.best_score, self.best_std, self.wait_count = current, std, 0
            return False, f"{self.monitor} improved by {gain:.5f} > {t:.5f}; new best {float(current):.5f}."
        if gain >= -t:
            self.wait_count = 0
            return False, f"{self.monitor} within {t:.5f} of the best {float(best):.5f} (noise); waiting."
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return True, (
                f"{self.monitor} worse than the best {float(best):.5f} by more than {t:.5f} for "
                f"{self.wait_count} checks; stopping."
            )
        return False, f"{self.monitor} worse by {-gain:.5f} > {t:.5f} ({self.wait_count}/{self.patience})."
