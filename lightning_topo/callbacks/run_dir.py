r"""
Run folder
==========

:func:`run_dir` gives every output of one run -- the monitors' figures and JSON, the pruning
tables, the compressed model -- one per-run, versioned folder, whatever loggers the trainer has and
in whatever order:

===============================================  =================================================
loggers                                          run folder
===============================================  =================================================
a ``CSVLogger`` or ``TensorBoardLogger``         the first such logger's ``log_dir``
(anywhere in the list, W&B first included)       (``runs/quickstart/version_3``)
``WandbLogger`` only                             ``<save_dir>/<project>/<run id>`` (where
                                                 Lightning's ``ModelCheckpoint`` puts it too)
none (``logger=False``) or no local folder       ``<default_root_dir>/lightning_topo_runs/version_N``
===============================================  =================================================

A folder belongs to the first run that claims it: the claim is the file
``lightning_topo_run.json`` (:data:`~lightning_topo.report.RUN_POINTER`) created there exclusively.
When the preferred folder was claimed by an earlier run (a logger with an explicit ``version``
re-used), the run takes the next free ``<folder>/lightning_topo_runs/run_N`` instead, so running the
same script twice in one folder never fails and never overwrites an earlier run's outputs.

Every logger's own folder (the CSV/TensorBoard ``log_dir``, the W&B ``offline-run-*`` / ``run-*``
folder) gets a ``lightning_topo_run.json`` *pointer* naming the run folder (relative and absolute
path, the same ``run_id``), and the run folder's own file lists every logger folder, so that
``lightning-topo report`` finds the logs, the figures and the pruning from any of them
(:func:`lightning_topo.report.resolve_run` reads and verifies them).

Distributed: the folder is chosen and written on global rank 0 and handed to every process with
``trainer.strategy.broadcast``, so **the first call must happen on every process** (``setup``,
``on_fit_start``: any hook every rank runs). Later calls return the cached path without
communication, from any rank.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import uuid
import weakref
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

from lightning_topo.data.files import write_text_atomic
from lightning_topo.plots.wandb import jsonable, log_settings
from lightning_topo.report import RUN_POINTER, RUN_POINTER_FORMAT, RUN_SETTINGS

__all__ = ["RUN_POINTER", "RUN_SETTINGS", "logger_folders", "pruning_epochs", "record_settings", "run_dir"]

#: Sub-folder of ``default_root_dir`` for runs without a logger that has a local folder.
FALLBACK = "lightning_topo_runs"  # not "lightning_topo": run from the repo root it would land in the package

_CACHE: weakref.WeakKeyDictionary[pl.Trainer, Path] = weakref.WeakKeyDictionary()


def run_dir(trainer: pl.Trainer) -> Path:
    """The run's one output folder (created; see the module docstring for which one).

    The same path on every process and on every call for one ``trainer``. The first call is a
    collective (``trainer.strategy.broadcast``): make it from a hook that runs on every process.

    Args:
        trainer: the ``Trainer`` of the run (its ``loggers`` and ``default_root_dir`` decide).

    Returns:
        The absolute path of the run folder.
    """
    cached = _CACHE.get(trainer)
    if cached is not None:
        return cached
    chosen = _claim(trainer) if trainer.is_global_zero else None
    chosen = trainer.strategy.broadcast(chosen, src=0)
    path = Path(chosen)
    _CACHE[trainer] = path
    return path


def record_settings(trainer: pl.Trainer, name: str, settings: dict[str, Any]) -> Path:
    """Record a callback's settings with the run: ``config[name]`` of every W&B run, and
    ``run_dir(trainer) / "lightning_topo_settings.json"`` (``{name: settings}``, one entry per
    callback, merged and written atomically on global rank 0), where ``report`` reads which
    prefixes and monitored metric the lenses used.

    Args:
        trainer: the run's ``Trainer``. Call from a hook every process runs (``setup``) when
            :func:`run_dir` was not asked yet.
        name: one key per callback instance, e.g. ``"PersistenceScoreMonitor/topo"``.
        settings: JSON-compatible where possible (:func:`~lightning_topo.plots.wandb.jsonable`
            converts the rest); for a lens include ``log_prefix``, ``monitor_against`` and
            ``headline`` (its headline metric's full name), which ``report`` reads.

    Returns:
        The settings file.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty key such as 'PersistenceScoreMonitor/topo'; got {name!r}")
    path = run_dir(trainer) / RUN_SETTINGS
    if not trainer.is_global_zero:
        return path
    recorded: dict[str, Any] = {}
    if path.is_file():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = {}
    recorded = recorded if isinstance(recorded, dict) else {}
    recorded[name] = jsonable(dict(settings))
    write_text_atomic(path, json.dumps(recorded, indent=2, sort_keys=True), overwrite=True)
    log_settings(trainer.loggers, name, settings)
    return path


def pruning_epochs(trainer: pl.Trainer) -> list[int]:
    """The epochs at which a pruning callback of ``trainer`` pruned during training (not at fit end).

    Any callback whose ``history`` holds pruning records (``{"epoch", "widths", ...}``, as
    :class:`~lightning_topo.callbacks.TopologicalPruning` keeps) counts. Monitors mark these epochs
    on their series and leave them out of score-vs-accuracy scatters: the accuracy change there is
    the pruning's, not the score's.
    """
    epochs: set[int] = set()
    for callback in trainer.callbacks:
        history = getattr(callback, "history", None)
        if not isinstance(history, list):
            continue
        for record in history:
            if isinstance(record, dict) and "widths" in record and record.get("epoch") is not None:
                if not record.get("at_fit_end"):
                    epochs.add(int(record["epoch"]))
    return sorted(epochs)


def logger_folders(trainer: pl.Trainer) -> list[tuple[str, Path]]:
    """``[(logger class name, local folder)]`` of the loggers that keep files locally, in order.

    CSV/TensorBoard: ``log_dir``; W&B: the wandb run folder (``.../wandb/offline-run-*``), which
    creates the W&B run if it does not exist yet. Call on global rank 0 (other ranks' loggers have
    no experiment).
    """
    folders = []
    for logger in trainer.loggers:
        folder = _local_folder(logger)
        if folder is not None:
            folders.append((type(logger).__name__, folder))
    return folders


# ----------------------------------------------------------------------------- rank 0


def _local_folder(logger: Logger) -> Path | None:
    if isinstance(logger, (CSVLogger, TensorBoardLogger)):
        _ = logger.experiment  # creates the folder the logger's own way (no "not empty" warning later)
        return Path(logger.log_dir).resolve()
    if isinstance(logger, WandbLogger):
        folder = getattr(logger.experiment, "dir", None)  # <save_dir>/wandb/<run>/files
        return Path(folder).resolve().parent if folder else None
    return None


def _preferred(trainer: pl.Trainer) -> Path | None:
    """The first CSV/TensorBoard ``log_dir``, else the W&B ``<save_dir>/<project>/<run id>``."""
    for logger in trainer.loggers:
        if isinstance(logger, (CSVLogger, TensorBoardLogger)):
            _ = logger.experiment
            return Path(logger.log_dir).resolve()
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            run_id = logger.experiment.id  # creates the run: its id names the folder
            save_dir = logger.save_dir or trainer.default_root_dir
            return (Path(save_dir) / str(logger.name or "lightning_logs") / str(run_id)).resolve()
    return None


def _claim(trainer: pl.Trainer) -> str:
    """Choose, create and claim the run folder; write the pointers (global rank 0)."""
    run_id = uuid.uuid4().hex
    preferred = _preferred(trainer)
    loggers = logger_folders(trainer)
    if preferred is not None and _try_claim(preferred, run_id, loggers):
        folder = preferred
    else:
        base = (
            (preferred / FALLBACK)
            if preferred is not None
            else Path(trainer.default_root_dir).resolve() / FALLBACK
        )
        stem = "run" if preferred is not None else "version"
        folder = _next_free(base, stem, run_id, loggers)
    for _, logger_dir in loggers:
        if logger_dir != folder:
            _write_pointer(logger_dir, folder, run_id, loggers)
    return str(folder)


def _record(here: Path, folder: Path, run_id: str, loggers: list[tuple[str, Path]]) -> str:
    return json.dumps(
        {
            "format": RUN_POINTER_FORMAT,
            "run_id": run_id,
            "run_dir": os.path.relpath(folder, here),
            "run_dir_absolute": str(folder),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "loggers": [
                {"type": kind, "folder": os.path.relpath(path, folder), "folder_absolute": str(path)}
                for kind, path in loggers
            ],
        },
        indent=2,
    )


def _try_claim(folder: Path, run_id: str, loggers: list[tuple[str, Path]]) -> bool:
    """Create ``folder/RUN_POINTER`` exclusively; ``False`` if an earlier run holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / RUN_POINTER
    if target.exists():
        return False
    tmp = folder / f".{RUN_POINTER}.tmp{os.getpid()}"
    tmp.write_text(_record(folder, folder, run_id, loggers), encoding="utf-8")
    try:
        os.link(tmp, target)  # atomic and exclusive: fails if another run claimed it meanwhile
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _next_free(base: Path, stem: str, run_id: str, loggers: list[tuple[str, Path]]) -> Path:
    """The first ``base/{stem}_N`` this run could create and claim."""
    base.mkdir(parents=True, exist_ok=True)
    taken = [
        int(p.name.rsplit("_", 1)[1]) for p in base.glob(f"{stem}_*") if p.name.rsplit("_", 1)[1].isdigit()
    ]
    n = max(taken, default=-1) + 1
    while True:
        folder = base / f"{stem}_{n}"
        try:
            folder.mkdir()
        except FileExistsError:
            n += 1
            continue
        if _try_claim(folder, run_id, loggers):
            return folder
        n += 1


def _write_pointer(here: Path, folder: Path, run_id: str, loggers: list[tuple[str, Path]]) -> Path:
    """The pointer in a logger's own folder. One an earlier run left there is replaced: the logger
    re-used that folder (an explicit ``version``), so its logs now are this run's; the earlier run's
    outputs stay where they are, and the folder, holding a pointer, is never claimed again."""
    here.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(here / RUN_POINTER, _record(here, folder, run_id, loggers), overwrite=True)
