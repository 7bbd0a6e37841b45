r"""
Weights & Biases
================

What a lens callback or the pruning callback sends to W&B, the way W&B users expect it, and a
reader of W&B's offline run files (``wandb/offline-run-*/run-*.wandb``) for ``report`` and tests.

Every sender takes ``loggers`` (``trainer.loggers``), writes to each ``WandbLogger`` among them and
returns how many it wrote to (0 without one: then ``wandb`` is not even imported). On a process
other than global rank 0 a ``WandbLogger``'s ``experiment`` is Lightning's no-op stand-in, so the
calls are safe anywhere; call them on rank 0 to avoid building images for nothing.

=====================================  =============================================================
call (when)                            what W&B shows
=====================================  =============================================================
:func:`define_lens_metrics` (setup)    every ``{prefix}/*`` chart against ``epoch`` (``define_metric``;
                                       ``trainer/global_step`` stays logged with each row, so the x axis
                                       can be switched back in the UI)
:func:`log_settings` (setup)           the callback's settings under ``config[name]``
:func:`log_lens_images` (each          the figures of that measurement as ``wandb.Image``, stepped by
measurement)                           ``epoch`` (W&B's image slider walks through the epochs)
:func:`log_score_vs_monitor`           an interactive scatter (``wandb.Table`` + ``wandb.plot.scatter``)
(each measurement)                     of a score against the monitored metric, one point per epoch
:func:`log_model_artifact` (fit end)   the compressed model folder as an Artifact of type ``model``
=====================================  =============================================================

The offline reader: :func:`read_offline_run` decodes a ``.wandb`` file -- W&B's LevelDB-style log
(a 7-byte ``:W&B`` header, 32 KiB blocks, records of ``crc32 | length | type``, every CRC
checked) -- into wandb's own protobuf ``Record`` messages (``wandb.proto.wandb_internal_pb2``);
:func:`offline_run` turns those into the run's history rows, config, metric definitions and
artifacts.
"""

from __future__ import annotations

import json
import math
import struct
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_topo.plots import wandb_loggers

__all__ = [
    "OfflineRun",
    "define_lens_metrics",
    "jsonable",
    "log_lens_images",
    "log_model_artifact",
    "log_score_vs_monitor",
    "log_settings",
    "offline_run",
    "read_offline_run",
    "wandb_loggers",
]

EPOCH = "epoch"
GLOBAL_STEP = "trainer/global_step"  # the name WandbLogger gives the global step


def jsonable(value: Any) -> Any:
    """``value`` as JSON-compatible data (tuples and sets to lists, paths to strings, anything else
    without a JSON form to its ``repr``), so that settings can go to a W&B config or a JSON file."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v) for v in items]
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def define_lens_metrics(loggers: Iterable[Any] | None, prefixes: Sequence[str]) -> int:
    """Plot every ``{prefix}/*`` metric against ``epoch`` in W&B (call once, before logging).

    ``epoch`` is declared as a metric and each ``{prefix}/*`` glob gets ``step_metric="epoch"``
    with ``step_sync=True`` (W&B fills in the last epoch where a row lacks it). Lightning's own
    ``*`` -> ``trainer/global_step`` definition stays for every other metric, and the global step
    is still logged with each row.

    Args:
        loggers: ``trainer.loggers``.
        prefixes: the lenses' ``log_prefix`` values (``["topo", "geometry"]``).

    Raises:
        ValueError: a prefix is empty or not a string.
    """
    clean = []
    for prefix in prefixes:
        if not isinstance(prefix, str) or not prefix.strip("/"):
            raise ValueError(f"prefixes must be non-empty metric prefixes such as 'topo'; got {prefix!r}")
        clean.append(prefix.strip("/"))
    targets = wandb_loggers(loggers)
    for logger in targets:
        run = logger.experiment
        run.define_metric(EPOCH)
        for prefix in clean:
            run.define_metric(f"{prefix}/*", step_metric=EPOCH, step_sync=True)
    return len(targets)


def log_settings(loggers: Iterable[Any] | None, name: str, settings: Mapping[str, Any]) -> int:
    """Put a callback's ``settings`` in the W&B run config under ``name`` (e.g.
    ``"PersistenceScoreMonitor/topo"``); values are made JSON-compatible with :func:`jsonable`."""
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"name must be a non-empty config key such as 'PersistenceScoreMonitor'; got {name!r}"
        )
    targets = wandb_loggers(loggers)
    for logger in targets:
        logger.experiment.config.update({name: jsonable(dict(settings))}, allow_val_change=True)
    return len(targets)


def log_lens_images(
    loggers: Iterable[Any] | None, images: Mapping[str, str | Path], epoch: int, *, step: int | None = None
) -> int:
    """Log the figures of one measurement: ``{W&B key: PNG path}`` as ``wandb.Image`` in one row
    with ``epoch`` (and ``trainer/global_step`` when ``step`` is given).

    Keys under a prefix given to :func:`define_lens_metrics` (``topo/plots/diagrams``) are then
    stepped by epoch: W&B's media slider shows the figure of each measured epoch.

    Raises:
        FileNotFoundError: an image path does not exist (checked before anything is logged).
    """
    missing = [str(p) for p in images.values() if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"log_lens_images: no image file at {missing[0]}")
    targets = wandb_loggers(loggers)
    if not targets or not images:
        return 0
    import wandb

    row: dict[str, Any] = {key: wandb.Image(str(path)) for key, path in images.items()}
    row[EPOCH] = int(epoch)
    if step is not None:
        row[GLOBAL_STEP] = int(step)
    for logger in targets:
        logger.experiment.log(row)
    return len(targets)


def log_score_vs_monitor(
    loggers: Iterable[Any] | None,
    history: Sequence[Mapping[str, Any]],
    score: str,
    monitor: str,
    *,
    key: str | None = None,
    exclude_epochs: Iterable[int] = (),
) -> int:
    """An interactive W&B scatter of ``score`` against ``monitor``, one point per measured epoch.

    ``history`` is a lens monitor's history (records ``{"epoch", "scores": {name: float},
    "monitor": float | None}``); records without both values, and ``exclude_epochs`` (e.g. the
    pruning epoch, whose accuracy drop is not the score's doing), are left out. The table
    (columns ``epoch``, ``monitor``, ``score``) is logged again at every call, so the chart under
    ``key`` (default ``{prefix}/charts/{score}_vs_{monitor}`` with ``/`` as ``_`` after the
    prefix) always holds every epoch so far.
    """
    targets = wandb_loggers(loggers)
    if not targets:
        return 0
    import wandb

    skip = {int(e) for e in exclude_epochs}
    rows = []
    for record in history:
        value, target = record.get("scores", {}).get(score), record.get("monitor")
        if int(record["epoch"]) in skip or value is None or target is None:
            continue
        if math.isfinite(float(value)) and math.isfinite(float(target)):
            rows.append([int(record["epoch"]), float(target), float(value)])
    if key is None:
        prefix, _, rest = score.partition("/")
        key = f"{prefix}/charts/{(rest or prefix).replace('/', '_')}_vs_{monitor.replace('/', '_')}"
    table = wandb.Table(columns=[EPOCH, monitor, score], data=rows)
    chart = wandb.plot.scatter(table, monitor, score, title=f"{score} vs {monitor} (one point per epoch)")
    last = max((int(r["epoch"]) for r in history), default=None)
    for logger in targets:
        logger.experiment.log({key: chart, **({EPOCH: last} if last is not None else {})})
    return len(targets)


def log_model_artifact(
    loggers: Iterable[Any] | None,
    folder: str | Path,
    name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    *,
    aliases: Sequence[str] = ("latest",),
) -> int:
    """Log the folder of a saved model (e.g. the compressed checkpoint) as a W&B Artifact of type
    ``model``, as Lightning's ``WandbLogger(log_model=True)`` does for its checkpoints.

    Args:
        folder: the model folder; every file in it goes into the artifact.
        name: artifact name; default ``model-{run id}-compressed`` (Lightning's is ``model-{run id}``).
        metadata: JSON-compatible facts (sizes, accuracies), stored with the artifact.
        aliases: W&B aliases of this version.

    Works in offline runs (``WANDB_MODE=offline`` or ``WandbLogger(offline=True)``): the artifact
    is recorded in the run file and uploaded by ``wandb sync``.

    Raises:
        NotADirectoryError: ``folder`` is not an existing folder (checked first).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"log_model_artifact: folder {folder} is not an existing folder")
    targets = wandb_loggers(loggers)
    if not targets:
        return 0
    import wandb

    for logger in targets:
        run = logger.experiment
        artifact = wandb.Artifact(
            name=name or f"model-{run.id}-compressed", type="model", metadata=jsonable(dict(metadata or {}))
        )
        artifact.add_dir(str(folder))
        run.log_artifact(artifact, aliases=list(aliases))
    return len(targets)


# ----------------------------------------------------------------------------- offline reader

_HEADER = b":W&B"
_MAGIC, _VERSION = 0xBEE1, 0
_BLOCK = 32768
_RECORD_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_offline_run(path: str | Path) -> Iterator[Any]:
    """The records of a W&B run file (``run-<id>.wandb``) as ``wandb_internal_pb2.Record``.

    Raises:
        ValueError: not a W&B run file (header), a record's CRC does not match, or a record is
            cut (the message names the file and the byte offset). A file whose last block is only
            partly written (a run still going) ends at the last complete record.
    """
    from wandb.proto import wandb_internal_pb2

    path = Path(path)
    data = path.read_bytes()
    if len(data) < 7 or data[:4] != _HEADER or struct.unpack("<HB", data[4:7]) != (_MAGIC, _VERSION):
        raise ValueError(f"{path} is not a W&B run file (no ':W&B' version-0 header)")
    pos, pending = 7, None
    while pos + _RECORD_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD_HEADER:  # the block's tail is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _RECORD_HEADER])
        if crc == 0 and length == 0 and kind == 0:  # zeros: nothing written after this
            break
        chunk = data[pos + _RECORD_HEADER : pos + _RECORD_HEADER + length]
        if len(chunk) < length:
            break  # the writer has not finished this record
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: the record at byte {pos} fails its CRC check; the file is damaged")
        pos += _RECORD_HEADER + length
        if kind == _FULL:
            payload = chunk
        elif kind == _FIRST:
            pending = chunk
            continue
        elif kind == _MIDDLE and pending is not None:
            pending += chunk
            continue
        elif kind == _LAST and pending is not None:
            payload, pending = pending + chunk, None
        else:
            raise ValueError(f"{path}: unexpected record type {kind} at byte {pos}; the file is damaged")
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


@dataclass
class OfflineRun:
    """What an offline W&B run file holds, decoded.

    Attributes:
        path: the ``.wandb`` file.
        run_id: the W&B run id.
        history: one dict per ``run.log`` row, ``{key: value}`` (values JSON-decoded; nested keys
            such as a table's ``path`` joined with ``.``).
        config: the run config (``{key: value}``, later updates win).
        metrics: the ``define_metric`` definitions, ``{name or glob: step_metric}``.
        artifacts: ``[{"name", "type", "aliases", "metadata", "files"}]``.
    """

    path: Path
    run_id: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)

    def series(self, key: str, step: str = EPOCH) -> list[tuple[Any, Any]]:
        """``[(row[step], row[key])]`` of the rows that hold ``key``."""
        return [(row.get(step), row[key]) for row in self.history if key in row]


def _item_key(item: Any) -> str:
    return item.key if item.key else ".".join(item.nested_key)


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def offline_run(path: str | Path, *, timeout: float = 0.0) -> OfflineRun:
    """Decode the run file ``path`` (or the single ``run-*.wandb`` in the folder ``path``).

    Args:
        timeout: seconds to wait for the run's ``exit`` record: the W&B service writes the file
            asynchronously and flushes it some seconds after ``wandb.finish()``; 0 reads what is
            there now.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if len(files) != 1:
            raise ValueError(f"{path} holds {len(files)} W&B run files (run-*.wandb); pass one of them")
        path = files[0]
    deadline = time.monotonic() + timeout
    records = list(read_offline_run(path))
    while time.monotonic() < deadline and not any(r.WhichOneof("record_type") == "exit" for r in records):
        time.sleep(0.5)
        records = list(read_offline_run(path))
    run = OfflineRun(path)
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id = run.run_id or record.run.run_id
            for item in record.run.config.update:
                run.config[_item_key(item)] = _decode(item.value_json)
        elif kind == "history":
            run.history.append({_item_key(i): _decode(i.value_json) for i in record.history.item})
        elif kind == "config":
            for item in record.config.update:
                run.config[_item_key(item)] = _decode(item.value_json)
        elif kind == "metric":
            metric = record.metric
            run.metrics[metric.name or metric.glob_name] = metric.step_metric
        elif kind == "artifact":
            art = record.artifact
            run.artifacts.append(
                {
                    "name": art.name,
                    "type": art.type,
                    "aliases": list(art.aliases),
                    "metadata": _decode(art.metadata) if art.metadata else {},
                    "files": [c.path for c in art.manifest.contents],
                }
            )
    return run
