"""One self-contained HTML page from a run's log folder (``lightning-topo report RUN_DIR``).

The page needs no network and no JavaScript: the CSS is inline and every figure is a base64 PNG
data URI. It holds, in this order (each a ``<section>`` with a fixed ``id``):

* ``summary`` -- the log read, epochs, last and best ``val/acc``;
* ``series`` -- every ``topo/``, ``geometry/``, ``concepts/``, ``probe/`` and ``prune/`` series
  against ``val/acc``, one figure per family (per-layer series ``.../layer_{i}`` share a panel);
* ``correlations`` -- the last logged value of every ``*/pearson_*`` and ``*/spearman_*`` metric;
* ``figures`` -- every PNG the monitors wrote under the run folder (e.g. ``topo/diagrams_last_epoch.png``);
* ``pruning`` -- from ``pruned/pruning_history.json``: heads and FFN units kept per layer,
  parameter counts and checkpoint sizes.

Logs read: CSVLogger's ``metrics.csv``, or TensorBoard event files (needs ``pip install
tensorboard``). A W&B offline folder alone is refused with a message saying what is accepted.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_topo.data.files import write_text_atomic
from lightning_topo.plots import plot_kept_units
from lightning_topo.plots.report import plot_headlines, plot_lens_panels
from lightning_topo.plots.wandb import offline_run
from lightning_topo.scores.names import MetricName, parse_metric_name, target_suffix

__all__ = ["FAMILIES", "SECTIONS", "RunLog", "build_report", "read_run", "write_report"]

#: The default lens prefixes, in page order (a run's own prefixes are read from the run).
FAMILIES = ("topo", "geometry", "concepts", "probe")
#: ``id`` of every ``<section>`` of the page, in order.
SECTIONS = ("summary", "series", "correlations", "figures", "pruning")
MONITOR = "val/acc"
#: File naming a run's one output folder (``lightning_topo.callbacks.run_dir``): in the run folder
#: itself (``"run_dir": "."``, the claim) and in every logger's own folder (a pointer).
RUN_POINTER = "lightning_topo_run.json"
#: The callbacks' settings in a run folder (``{name: settings}``; ``record_settings`` writes it).
RUN_SETTINGS = "lightning_topo_settings.json"
#: Value of the ``format`` key of :data:`RUN_POINTER`.
RUN_POINTER_FORMAT = "lightning-topo run folder 1"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ACCEPTED = (
    "a run's folder: its run folder or a logger folder holding CSVLogger's metrics.csv "
    "(e.g. runs/quickstart/version_0), TensorBoard event files (events.out.tfevents.*) or a W&B "
    "offline run (wandb/offline-run-*)"
)


@dataclass
class RunLog:
    """The scalars of one run: ``series[name] = [(epoch, step, value), ...]`` in logging order.

    ``epoch`` is ``None`` where the log has no epoch for that step.
    """

    source: str
    path: Path
    series: dict[str, list[tuple[int | None, int, float]]] = field(default_factory=dict)

    def add(self, name: str, epoch: int | None, step: int, value: float) -> None:
        self.series.setdefault(name, []).append((epoch, step, value))


# ----------------------------------------------------------------------------- finding a run

#: Log kinds read, in the order preferred when a run has several.
LOG_KINDS = ("csv", "tensorboard", "wandb")


@dataclass
class RunFolder:
    """Where one run's things are.

    Attributes:
        given: the folder the user passed.
        run_dir: the run's output folder (figures, JSON, ``pruned/``): the folder named by its
            ``lightning_topo_run.json``, or, for a run without one, the log's own folder.
        log_kind: ``"csv"``, ``"tensorboard"`` or ``"wandb"``.
        log_path: ``metrics.csv``, the TensorBoard folder, or the ``run-*.wandb`` file.
        record: the run folder's own ``lightning_topo_run.json`` (``None`` for a run without one).
    """

    given: Path
    run_dir: Path
    log_kind: str
    log_path: Path
    record: dict[str, Any] | None = None


def _logs_in(folder: Path) -> list[tuple[str, Path]]:
    """The logs directly in ``folder``: ``[(kind, path)]``."""
    if not folder.is_dir():
        return []
    found: list[tuple[str, Path]] = []
    if (folder / "metrics.csv").is_file():
        found.append(("csv", folder / "metrics.csv"))
    if any(folder.glob("events.out.tfevents.*")):
        found.append(("tensorboard", folder))
    found += [("wandb", p) for p in sorted(folder.glob("run-*.wandb"))]
    return found


def _log_folder(kind: str, path: Path) -> Path:
    return path if kind == "tensorboard" else path.parent


def _logs_below(folder: Path) -> list[tuple[str, Path]]:
    """Every log in or under ``folder`` (hidden folders and W&B's ``latest-run`` link skipped)."""
    seen: dict[Path, tuple[str, Path]] = {}
    candidates = [folder, *(p for p in sorted(folder.rglob("*")) if p.is_dir())]
    for sub in candidates:
        rel = sub.relative_to(folder).parts
        if any(part.startswith(".") or part == "latest-run" for part in rel) or sub.is_symlink():
            continue
        for kind, path in _logs_in(sub):
            seen.setdefault(path.resolve(), (kind, path))
    return list(seen.values())


def _read_pointer(folder: Path) -> dict[str, Any]:
    """``folder/lightning_topo_run.json``, checked (format, run id, run folder)."""
    path = folder / RUN_POINTER
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable lightning-topo run pointer ({err})") from None
    if (
        not isinstance(record, dict)
        or record.get("format") != RUN_POINTER_FORMAT
        or not isinstance(record.get("run_id"), str)
        or not isinstance(record.get("run_dir"), str)
        or not isinstance(record.get("loggers", []), list)
    ):
        raise ValueError(
            f"{path} is not a lightning-topo run pointer (needs format {RUN_POINTER_FORMAT!r}, run_id, run_dir)"
        )
    return record


def _pointed_run(folder: Path, pointer: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The run folder ``pointer`` (read in ``folder``) names, verified: it exists and its own
    ``lightning_topo_run.json`` claims it for the same run."""
    if pointer["run_dir"] == ".":
        return folder.resolve(), pointer
    for candidate in (folder / pointer["run_dir"], Path(str(pointer.get("run_dir_absolute", "")))):
        if str(candidate) and candidate.is_dir() and (candidate / RUN_POINTER).is_file():
            own = _read_pointer(candidate)
            if own["run_id"] != pointer["run_id"] or own["run_dir"] != ".":
                raise ValueError(
                    f"{folder / RUN_POINTER} names the run folder {candidate.resolve()}, which holds another "
                    f"run ({own['run_id']}, not {pointer['run_id']})"
                )
            return candidate.resolve(), own
    raise FileNotFoundError(
        f"{folder / RUN_POINTER} names the run folder {pointer['run_dir']} "
        f"({pointer.get('run_dir_absolute')}), which does not exist or holds no {RUN_POINTER}; "
        "pass the run folder itself"
    )


def _run_of_pointer(given: Path, folder: Path) -> RunFolder:
    target, own = _pointed_run(folder, _read_pointer(folder))
    candidates = _logs_in(folder)
    for entry in own.get("loggers", []):
        if not isinstance(entry, dict):
            continue
        for where in (target / str(entry.get("folder", "")), Path(str(entry.get("folder_absolute", "")))):
            if entry.get("folder") is not None and where.is_dir():
                candidates += _logs_in(where)
                break
    candidates += _logs_in(target)
    if not candidates:
        raise FileNotFoundError(
            f"the run folder {target} (named by {folder / RUN_POINTER}) has no log left: none of its loggers' "
            f"folders holds metrics.csv, TensorBoard events or a W&B run file"
        )
    kind, path = min(candidates, key=lambda c: LOG_KINDS.index(c[0]))
    return RunFolder(given, target, kind, path, own)


def resolve_run(run_dir: str | Path) -> RunFolder:
    """The run behind ``run_dir``: its output folder and the one log to read.

    ``run_dir`` may be the run folder :func:`lightning_topo.callbacks.run_dir.run_dir` chose, any
    of the run's logger folders (CSV/TensorBoard version folder, W&B ``offline-run-*`` folder:
    their ``lightning_topo_run.json`` names the run folder), or a folder above exactly one run.
    When a run has several logs, ``metrics.csv`` is read first, then TensorBoard, then W&B.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist, holds no log, or its pointer names a folder
            that is gone.
        NotADirectoryError: ``run_dir`` is a file.
        ValueError: logs of several runs below ``run_dir``, or a damaged pointer file.
    """
    given = Path(run_dir)
    if not given.exists():
        raise FileNotFoundError(f"RUN_DIR {given} does not exist; pass {_ACCEPTED}")
    if not given.is_dir():
        raise NotADirectoryError(f"RUN_DIR {given} is a file, not a folder; pass {_ACCEPTED}")
    if (given / RUN_POINTER).is_file():
        return _run_of_pointer(given, given)
    logs = _logs_below(given)
    if not logs:
        raise FileNotFoundError(
            f"RUN_DIR {given} holds no metrics.csv, no TensorBoard events and no W&B run file; pass {_ACCEPTED}"
        )
    runs: dict[str, list[tuple[str, Path]]] = {}
    for kind, path in logs:
        folder = _log_folder(kind, path)
        key = str(folder.resolve())
        if (folder / RUN_POINTER).is_file():
            key = _read_pointer(folder)["run_id"]
        runs.setdefault(key, []).append((kind, path))
    if len(runs) > 1:
        names = ", ".join(str(_log_folder(*members[0])) for members in list(runs.values())[:6])
        raise ValueError(
            f"RUN_DIR {given} holds the logs of {len(runs)} runs ({names}); pass one of those folders"
        )
    members = sorted(next(iter(runs.values())), key=lambda c: LOG_KINDS.index(c[0]))
    folder = _log_folder(*members[0])
    if (folder / RUN_POINTER).is_file():
        return _run_of_pointer(given, folder)
    return RunFolder(given, folder.resolve(), members[0][0], members[0][1], None)


def read_run(run_dir: str | Path | RunFolder) -> RunLog:
    """Every logged scalar of the run behind ``run_dir`` (see :func:`resolve_run`)."""
    run = run_dir if isinstance(run_dir, RunFolder) else resolve_run(run_dir)
    readers = {"csv": _read_csv, "tensorboard": _read_tensorboard, "wandb": _read_wandb}
    return readers[run.log_kind](run.log_path)


def _read_csv(path: Path) -> RunLog:
    """CSVLogger's ``metrics.csv``: columns ``epoch``, ``step`` and one per metric, empty where unset."""
    log = RunLog("CSVLogger", path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise ValueError(f"{path} is not a CSVLogger metrics.csv (no 'step' column); pass {_ACCEPTED}")
        for row in reader:
            step = int(float(row["step"])) if row.get("step") else -1
            epoch = int(float(row["epoch"])) if row.get("epoch") else None
            for name, text in row.items():
                if name in ("epoch", "step") or not text:
                    continue
                try:
                    log.add(name, epoch, step, float(text))
                except ValueError:
                    continue
    if not log.series:
        raise ValueError(f"{path} holds no logged values; pass {_ACCEPTED}")
    return log


def _read_tensorboard(folder: Path) -> RunLog:
    """TensorBoard scalars, read with ``tensorboard``'s ``EventAccumulator``; the epoch of a step
    comes from Lightning's ``epoch`` scalar at that step."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise ValueError(
            f"{folder} is a TensorBoard log; reading it needs the tensorboard package: pip install tensorboard"
        ) from None
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags().get("scalars", [])
    epochs = {e.step: int(e.value) for e in acc.Scalars("epoch")} if "epoch" in tags else {}
    log = RunLog("TensorBoard", folder)
    for tag in tags:
        if tag != "epoch":
            for event in acc.Scalars(tag):
                log.add(tag, epochs.get(event.step), int(event.step), float(event.value))
    if not log.series:
        raise ValueError(f"{folder} holds no logged scalars; pass {_ACCEPTED}")
    return log


def _read_wandb(path: Path) -> RunLog:
    """A W&B offline run file, decoded with wandb's own protobuf records
    (:func:`lightning_topo.plots.wandb.offline_run`): every numeric value of every logged row;
    the epoch and step of a row are its ``epoch`` and ``trainer/global_step`` (else ``_step``)."""
    try:
        run = offline_run(path)
    except ValueError as err:
        raise ValueError(f"{err}; pass {_ACCEPTED}") from None
    log = RunLog("W&B offline run", path)
    for row in run.history:
        epoch, step = row.get("epoch"), row.get("trainer/global_step", row.get("_step", -1))
        for name, value in row.items():
            if name.startswith("_") or name in ("epoch", "trainer/global_step") or "." in name:
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                log.add(name, None if epoch is None else int(epoch), int(step), float(value))
    if not log.series:
        raise ValueError(f"{path} holds no logged scalars; pass {_ACCEPTED}")
    return log


# ----------------------------------------------------------------------------- what the run measured

#: First components of metric names that are not a lens (training curves, Lightning's own).
NOT_LENSES = ("train", "val", "test", "trainer", "epoch", "step", "prune")
#: Each default lens prefix's headline metric (a lens's settings may name another).
HEADLINES = {"topo": "topo/psf", "geometry": "geometry/cone", "concepts": "concepts/polar"}
#: Without a layer-free headline, the deepest layer of this score stands in (older runs).
DEEPEST = {
    "concepts": "concepts/polar",
    "probe": "probe/ssp",
    "geometry": "geometry/cone",
    "topo": "topo/psf",
}
#: Fewer (score, monitored metric) pairs than this get "too few points" instead of a correlation.
MIN_POINTS = 5
#: Bootstrap resamples of a correlation's 95% interval (percentile bootstrap, seed 0).
BOOTSTRAP = 2000


@dataclass
class Lens:
    """One lens of the run: its ``prefix``, ``headline`` metric (``None`` if none was logged),
    the ``monitor`` it was compared with, and where that was read (``"settings"`` or ``"names"``)."""

    prefix: str
    headline: str | None
    monitor: str | None
    source: str


def run_settings(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The callbacks' settings recorded in ``run_dir/lightning_topo_settings.json`` (``{}`` without it)."""
    path = run_dir / RUN_SETTINGS
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not readable JSON ({err}); it is written by record_settings") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path} must map each callback's name to its settings (a JSON object of objects)")
    return data


def _parsed(log: RunLog) -> dict[str, MetricName]:
    out = {}
    for name in log.series:
        parsed = parse_metric_name(name)
        if parsed is not None:
            out[name] = parsed
    return out


def _infer_headline(log: RunLog, prefix: str) -> str | None:
    """The lens's headline metric: the default lens's own (``topo/psf``), else the deepest layer
    of its main score (runs logged before every lens had a layer-free headline), else its
    shortest layer-free name."""
    parsed = _parsed(log)
    known = HEADLINES.get(prefix)
    if known in log.series:
        return known
    family = DEEPEST.get(prefix)
    layered = [
        (m.layer, n)
        for n, m in parsed.items()
        if m.family == family and m.layer is not None and m.klass is None and not m.detail
        and not m.std and m.correlation is None
    ]  # fmt: skip
    if layered:
        return max(layered)[1]
    plain = [
        n
        for n, m in parsed.items()
        if m.prefix == prefix and m.layer is None and m.klass is None and not m.detail
        and not m.std and m.correlation is None
    ]  # fmt: skip
    return min(plain, key=lambda n: (n.count("/"), n)) if plain else None


def _infer_monitor(log: RunLog, prefix: str) -> str | None:
    """The metric the lens's logged correlations name (``.../pearson_val_acc`` -> ``val/acc``)."""
    suffixes = {m.correlation[1] for m in _parsed(log).values() if m.prefix == prefix and m.correlation}
    for name in sorted(log.series):
        if target_suffix(name) in suffixes and not name.startswith(prefix + "/"):
            return name
    return MONITOR if MONITOR in log.series else None


def run_lenses(log: RunLog, run_dir: Path) -> list[Lens]:
    """The lenses of the run, from the settings the run folder records (``log_prefix``,
    ``monitor_against``, ``headline``), else from the metric names logged."""
    lenses: dict[str, Lens] = {}
    for settings in run_settings(run_dir).values():
        prefix = settings.get("log_prefix")
        if not isinstance(prefix, str) or not prefix or prefix == "prune" or prefix in lenses:
            continue
        headline = settings.get("headline")
        if not isinstance(headline, str) or headline not in log.series:
            headline = _infer_headline(log, prefix)
        monitor = (
            settings.get("monitor_against") if "monitor_against" in settings else _infer_monitor(log, prefix)
        )
        lenses[prefix] = Lens(prefix, headline, monitor if isinstance(monitor, str) else None, "settings")
    parsed = _parsed(log)
    found = {
        m.prefix
        for m in parsed.values()
        if m.prefix not in NOT_LENSES and not m.prefix.startswith("lr-")
        and (m.prefix in FAMILIES or m.layer is not None or m.std or m.correlation is not None)
    }  # fmt: skip
    order = [p for p in FAMILIES if p in found] + sorted(found - set(FAMILIES))
    for prefix in order:
        if prefix not in lenses:
            lenses[prefix] = Lens(prefix, _infer_headline(log, prefix), _infer_monitor(log, prefix), "names")
    return list(lenses.values())


def _per_epoch(points: Sequence[tuple[int | None, int, float]]) -> dict[int, float]:
    """The last value logged in each epoch."""
    return {e: v for e, _, v in points if e is not None}


def _by_epoch(log: RunLog, names: Sequence[str]) -> bool:
    """Epoch on the x axis, unless a series has several values in most of its epochs
    (``val_check_interval < 1``): then the global step. Points without an epoch are not drawn
    against epochs; a single repeated epoch (a value logged again at fit end) keeps its last value."""
    for name in names:
        epochs = [e for e, _, _ in log.series.get(name, []) if e is not None]
        if not epochs:
            return False
        repeated = sum(1 for e in set(epochs) if epochs.count(e) > 1)
        if repeated > len(set(epochs)) / 2:
            return False
    return True


def _line(log: RunLog, name: str, by_epoch: bool) -> list[tuple[float, float, float | None]]:
    """``[(x, value, standard error)]`` of ``name``, the error from ``{name}/std`` at the same step;
    against epochs, the last value of each epoch."""
    std = {s: v for _, s, v in log.series.get(f"{name}/std", [])}
    points = [
        (e, s, v) for e, s, v in log.series[name] if math.isfinite(v) and (e is not None or not by_epoch)
    ]
    if not by_epoch:
        return [(float(s), v, std.get(s)) for _, s, v in points]
    last = {e: (s, v) for e, s, v in points}
    return [(float(e), v, std.get(s)) for e, (s, v) in sorted(last.items())]


def _prune_x(log: RunLog, epochs: Sequence[int], by_epoch: bool) -> list[float]:
    if by_epoch:
        return [float(e) for e in epochs]
    steps = []
    for epoch in epochs:
        at = [s for points in log.series.values() for e, s, _ in points if e == epoch]
        if at:
            steps.append(float(min(at)))
    return steps


def lens_panels(log: RunLog, prefix: str) -> dict[str, dict[int | str | None, str]]:
    """``{panel title: {line key: metric name}}`` of one lens.

    One panel per score and detail (``geometry/cone``, ``geometry/cone/heads``), its lines keyed by
    the hidden-state index of every ``layer_{i}`` (``None``: the score without a layer, e.g. the
    headline); classes get their own panel (``topo/psf/class_*``, keys ``"class 0"``, ...).
    ``/std`` series are error bars of their score and correlations go to the correlation table, so
    neither is a panel.
    """
    panels: dict[str, dict[int | str | None, str]] = {}
    for name, m in sorted(_parsed(log).items()):
        if m.prefix != prefix or m.std or m.correlation is not None:
            continue
        if m.klass is not None:
            layer = f"/layer_{m.layer}" if m.layer is not None else ""
            title = "/".join([m.family + layer + "/class_*", *m.detail])
            panels.setdefault(title, {})[f"class {m.klass}"] = name
        else:
            panels.setdefault("/".join([m.family, *m.detail]), {})[m.layer] = name
    return panels


def correlation(log: RunLog, score: str, monitor: str, exclude_epochs: Sequence[int] = ()) -> dict[str, Any]:
    """Pearson and Spearman of ``score`` with ``monitor`` over the epochs where both were logged
    (``exclude_epochs`` left out), with ``n`` and 95% percentile-bootstrap intervals
    (:data:`BOOTSTRAP` resamples, seed 0). Below :data:`MIN_POINTS` pairs, or with a constant
    series, ``note`` says why there is no value."""
    xs_by, ys_by = _per_epoch(log.series.get(score, [])), _per_epoch(log.series.get(monitor, []))
    epochs = sorted(e for e in xs_by.keys() & ys_by.keys() if e not in set(exclude_epochs))
    pairs = [(xs_by[e], ys_by[e]) for e in epochs if math.isfinite(xs_by[e]) and math.isfinite(ys_by[e])]
    row: dict[str, Any] = {"score": score, "monitor": monitor, "n": len(pairs), "epochs": epochs}
    if len(pairs) < MIN_POINTS:
        row["note"] = f"too few points (n={len(pairs)}; a correlation needs {MIN_POINTS})"
        return row
    x, y = np.array(pairs, dtype=float).T
    if x.std() == 0 or y.std() == 0:
        row["note"] = "undefined: a series is constant"
        return row
    row["pearson"], row["spearman"] = _pearson(x, y), _pearson(_ranks(x), _ranks(y))
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(x), size=(BOOTSTRAP, len(x)))
    boot = {"pearson": [], "spearman": []}
    for idx in draws:
        bx, by = x[idx], y[idx]
        if bx.std() == 0 or by.std() == 0:
            continue
        boot["pearson"].append(_pearson(bx, by))
        boot["spearman"].append(_pearson(_ranks(bx), _ranks(by)))
    for kind, values in boot.items():
        row[f"{kind}_ci"] = (
            tuple(np.clip(np.percentile(values, [2.5, 97.5]), -1, 1).tolist()) if values else None
        )
    return row


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    return float((x @ y) / math.sqrt(float(x @ x) * float(y @ y)))


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (Spearman's)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=float)
    ranks[order] = np.arange(len(values), dtype=float)
    for value in np.unique(values):
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def logged_correlations(log: RunLog) -> list[dict[str, Any]]:
    """``[{metric, target, pearson, spearman, epoch, n}]``: the last logged value of every
    ``*/pearson_*``/``*/spearman_*`` metric (the monitors log it over the epochs so far), with
    ``n`` the epochs where the metric was logged up to then."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for name, points in log.series.items():
        m = parse_metric_name(name)
        if m is None or m.correlation is None or not points:
            continue
        metric = str(m.base)
        row = rows.setdefault((metric, m.correlation[1]), {"metric": metric, "target": m.correlation[1]})
        row[m.correlation[0]] = points[-1][2]
        row["epoch"] = points[-1][0]
        row["n"] = len(
            [p for p in log.series.get(metric, []) if p[0] is not None and p[0] <= (points[-1][0] or 0)]
        )
    return [rows[k] for k in sorted(rows)]


def run_images(run_dir: Path) -> list[tuple[str, bytes | None]]:
    """Every ``*.png`` under ``run_dir`` (hidden files and W&B's own folders skipped):
    ``[(relative path, bytes or None)]``, ``None`` for a file that is not a PNG."""
    images = []
    for path in sorted(run_dir.rglob("*.png")):
        rel = path.relative_to(run_dir)
        if any(part.startswith(".") or part == "wandb" for part in rel.parts):
            continue
        data = path.read_bytes()
        images.append((rel.as_posix(), data if data.startswith(_PNG_SIGNATURE) else None))
    return images


def pruning_summary(run_dir: Path, log: RunLog | None = None) -> dict[str, Any] | None:
    """The pruning of the run, from ``pruning_history.json`` under ``run_dir`` (its ``summary``
    and any ``pruning_summary.json`` beside it); ``None`` when the run was not pruned.

    Sizes are weights only: the dense model's weight bytes as the callback measured them, the
    compressed ``*.safetensors`` files; a Lightning ``.ckpt`` (weights plus optimizer state) is
    never compared.
    """
    found = sorted(p for p in run_dir.rglob("pruning_history.json") if not any(
        part.startswith(".") for part in p.relative_to(run_dir).parts))  # fmt: skip
    if not found:
        return None
    path = found[-1]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        history = list(data["history"])
        last = history[-1]
        widths = last["widths"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise ValueError(f"{path} is not a pruning history written by TopologicalPruning ({err})") from None
    summary = dict(data.get("summary") or {})
    side = path.parent / "pruning_summary.json"
    if side.is_file():
        try:
            extra = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{side} is not readable JSON ({err})") from None
        if isinstance(extra, dict):
            summary.update(extra)
    files = sorted(path.parent.glob("*.safetensors"))
    dense, compressed = dict(summary.get("dense") or {}), dict(summary.get("compressed") or {})
    acc = dict(summary.get("val_acc") or {})
    acc.setdefault("before_pruning", history[0].get("val_acc_before"))
    acc.setdefault("after_pruning", last.get("val_acc_after"))
    epochs = [int(r["epoch"]) for r in history if r.get("epoch") is not None and not r.get("at_fit_end")]
    return {
        "path": path.relative_to(run_dir).as_posix(),
        "method": summary.get("method", data.get("method")),
        "ratio": data.get("ratio"),
        "history": history,
        "epochs": epochs,
        "at_fit_end": bool(last.get("at_fit_end")),
        "encoder_params": (
            dense.get("encoder_params", data.get("original_params")),
            compressed.get("encoder_params", last.get("params")),
        ),  # fmt: skip
        "params": (dense.get("params"), compressed.get("params", last.get("total_params"))),
        "weight_bytes": (dense.get("weight_bytes"), compressed.get("weight_bytes")),
        "file_bytes": sum(p.stat().st_size for p in files),
        "files": [p.name for p in files],
        "val_acc": acc,
        "cpu_speedup": summary.get("cpu_speedup"),
        "layers": list(zip(widths.get("heads", []), widths.get("ffn", []), strict=False)),
    }


def _pruning_epochs(info: Mapping[str, Any] | None, log: RunLog) -> list[int]:
    if info is not None:
        return list(info["epochs"])
    points = log.series.get("prune/params", [])
    return sorted({e for e, _, _ in points if e is not None})[:1]


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:.6em auto;max-width:1380px;
color:#222;padding:0 .8em;font-size:14px}
h1{font-size:1.35em;margin:.1em 0}h2{font-size:1.1em;border-bottom:2px solid #ddd;padding-bottom:.1em;margin:.5em 0 .3em}
.facts{margin:.1em 0 .3em;color:#444}.facts b{color:#111}nav a{margin-right:1em;font-size:.9em}
table{border-collapse:collapse;margin:.3em 0;font-size:.88em}th,td{border:1px solid #ccc;padding:.15em .5em;text-align:right}
th{background:#f3f3f3}td.name,th.name{text-align:left;font-family:monospace}
.row{display:flex;gap:1.2em;align-items:flex-start}.row>section{flex:1;min-width:0}
figure{margin:.3em 0;display:inline-block;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.8em;color:#555;font-family:monospace}
details{margin:.3em 0;border:1px solid #e4e4e4;border-radius:4px;padding:.2em .6em}
summary{cursor:pointer;font-weight:600}.note{color:#666;font-style:italic;margin:.2em 0}
.half figure{max-width:49%}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else _esc(value)


def _img(png: bytes, alt: str, caption: str | None = None) -> str:
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{_esc(alt)}">{cap}</figure>'


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], names: int = 1) -> str:
    head = "".join(f"<th{' class=name' if i < names else ''}>{_esc(c)}</th>" for i, c in enumerate(columns))
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class=name>{_num(v)}</td>" if i < names else f"<td>{_num(v)}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_esc(title)}</h2>\n{body}\n</section>'


def _details(summary: str, body: str, *, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{_esc(summary)}</summary>\n{body}\n</details>"


def _mib(n: Any) -> str:
    return f"{n / 2**20:.2f} MiB" if isinstance(n, (int, float)) else "not recorded"


def _acc(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "not measured"


def _main_monitor(lenses: Sequence[Lens], log: RunLog) -> str | None:
    named = [lens.monitor for lens in lenses if lens.monitor and lens.monitor in log.series]
    if named:
        return max(set(named), key=named.count)
    return MONITOR if MONITOR in log.series else None


def _facts_html(log: RunLog, run: RunFolder, monitor: str | None) -> str:
    epochs = [e for points in log.series.values() for e, _, _ in points if e is not None]
    facts = [
        ("run folder", str(run.run_dir)),
        ("log", f"{log.source} ({log.path.name})"),
        ("epochs", max(epochs) + 1 if epochs else "none"),
        ("series", len(log.series)),
    ]
    if monitor is not None:
        values = [v for _, _, v in log.series[monitor]]
        facts += [(f"last {monitor}", f"{values[-1]:.4f}"), (f"best {monitor}", f"{max(values):.4f}")]
    return '<p class="facts">' + " · ".join(f"{_esc(k)}: <b>{_esc(v)}</b>" for k, v in facts) + "</p>"


def _summary_html(log: RunLog, lenses: Sequence[Lens], monitor: str | None, prune_epochs: list[int]) -> str:
    headlines = [lens.headline for lens in lenses if lens.headline]
    if not headlines:
        return (
            '<p class="note">No lens headline metric in this log (no lens callback ran, or none logged).</p>'
        )
    by_epoch = _by_epoch(log, headlines + ([monitor] if monitor else []))
    lines = {h: _line(log, h, by_epoch) for h in headlines}
    mon = None
    if monitor is not None:
        mon = (monitor, [(x, v) for x, v, _ in _line(log, monitor, by_epoch)])
    png = plot_headlines(lines, mon, prune_epochs=_prune_x(log, prune_epochs, by_epoch),
                         xlabel="epoch" if by_epoch else "global step")  # fmt: skip
    note = "" if monitor else '<p class="note">No monitored metric was logged.</p>'
    return note + _img(png, "headline score per lens", None)


def _ci(row: Mapping[str, Any], kind: str) -> str:
    ci = row.get(f"{kind}_ci")
    value = row.get(kind)
    if value is None:
        return ""
    return f"{value:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else f"{value:+.2f}"


def _correlations_html(log: RunLog, lenses: Sequence[Lens], prune_epochs: list[int]) -> str:
    rows = []
    for lens in lenses:
        if lens.headline is None or lens.monitor is None or lens.monitor not in log.series:
            rows.append((lens.headline or f"{lens.prefix}/ (no headline)", lens.monitor or "none", "", "", "",
                         "no monitored metric logged" if lens.headline else "no headline metric"))  # fmt: skip
            continue
        row = correlation(log, lens.headline, lens.monitor, prune_epochs)
        rows.append((lens.headline, lens.monitor, row["n"], _ci(row, "pearson"), _ci(row, "spearman"),
                     row.get("note", "")))  # fmt: skip
    excluded = f"; pruning epoch {', '.join(map(str, prune_epochs))} left out" if prune_epochs else ""
    head = (
        f'<p class="note">Over the epochs where both were logged{excluded}; 95% bootstrap interval '
        f"({BOOTSTRAP} resamples) in brackets; at least {MIN_POINTS} points.</p>"
    )
    table = _table(("headline", "against", "n", "Pearson r [95% CI]", "Spearman ρ [95% CI]", "note"), rows, 2)
    logged = logged_correlations(log)
    details = ""
    if logged:
        details = _details(
            f"every correlation the monitors logged ({len(logged)}; last value, over the epochs so far)",
            _table(
                ("metric", "against", "pearson", "spearman", "epoch", "n"),
                [
                    (
                        r["metric"],
                        r["target"],
                        r.get("pearson"),
                        r.get("spearman"),
                        r.get("epoch"),
                        r.get("n"),
                    )
                    for r in logged
                ],
                2,
            ),  # fmt: skip
        )
    return head + table + details if lenses else '<p class="note">No lens in this log.</p>' + details


def _pruning_html(info: Mapping[str, Any] | None, run: RunFolder) -> str:
    if info is None:
        return (
            f'<p class="note">No pruning_history.json under {_esc(run.run_dir)}: this run was not pruned.</p>'
        )
    enc, params, weights = info["encoder_params"], info["params"], info["weight_bytes"]
    dense_w, comp_w = weights
    comp_w = comp_w if comp_w is not None else (info["file_bytes"] or None)
    ratio = f" ({comp_w / dense_w:.2f}×)" if isinstance(dense_w, (int, float)) and comp_w and dense_w else ""
    acc = info["val_acc"]
    when = (
        "at the end of fit (no recovery)"
        if info["at_fit_end"]
        else f"at epoch {', '.join(map(str, info['epochs']))}"
    )
    speed = info["cpu_speedup"]
    speed_text = (
        (f"{speed:.2f}×" if isinstance(speed, (int, float)) else _esc(json.dumps(speed)))
        if speed
        else "not measured"
    )
    rows = [
        ("method", f"{info['method']} {when}"),
        ("weights, dense → compressed", f"{_mib(dense_w)} → {_mib(comp_w)}{ratio}"),
        ("parameters, dense → compressed", f"{_num(params[0]) or 'not recorded'} → {_num(params[1]) or 'not recorded'}"),
        ("encoder parameters", f"{_num(enc[0])} → {_num(enc[1])}"
         + (f" ({enc[1] / enc[0]:.2f})" if enc[0] and enc[1] else "")),
        ("val acc before pruning", _acc(acc.get("before_pruning"))),
        ("val acc after pruning", _acc(acc.get("after_pruning"))),
        ("val acc after recovery", _acc(acc.get("after_recovery")) if not info["at_fit_end"] else "no recovery"),
        ("CPU speed-up", speed_text),
    ]  # fmt: skip
    layers = [(i + 1, heads, ffn) for i, (heads, ffn) in enumerate(info["layers"])]
    detail = _details(
        f"kept per layer, files ({info['path']})",
        _table(("layer (hidden-state index)", "heads kept", "FFN units kept"), layers, 0)
        + f'<p class="note">Layer i is the output of encoder layer i (0 = embeddings, never pruned). '
        f"Compressed files: {_esc(', '.join(info['files']) or 'none')} ({_mib(info['file_bytes'])}).</p>"
        + _img(_kept_units_png(info["history"]), "kept units", "heads and FFN units kept per layer"),
    )
    return _table(("", "value"), rows, names=1) + detail


def _kept_units_png(history: Sequence[Mapping[str, Any]]) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return plot_kept_units(history, Path(tmp) / "kept.png").read_bytes()


def _series_html(log: RunLog, lenses: Sequence[Lens], prune_epochs: list[int]) -> str:
    parts = []
    for lens in lenses:
        panels = lens_panels(log, lens.prefix)
        if not panels:
            continue
        # values logged once without an epoch (a lens's end-of-fit experiment) are a table, not panels
        once = {
            n for lines in panels.values() for n in lines.values()
            if len(log.series[n]) == 1 and log.series[n][0][0] is None
        }  # fmt: skip
        panels = {t: {k: n for k, n in lines.items() if n not in once} for t, lines in panels.items()}
        panels = {t: lines for t, lines in panels.items() if lines}
        names = [n for lines in panels.values() for n in lines.values()]
        by_epoch = _by_epoch(log, names)
        drawn = {
            title: {layer: _line(log, name, by_epoch) for layer, name in lines.items()}
            for title, lines in panels.items()
        }
        scatter = None
        if lens.headline and lens.monitor and lens.monitor in log.series:
            xs, ys = _per_epoch(log.series[lens.headline]), _per_epoch(log.series[lens.monitor])
            points = [(e, ys[e], xs[e]) for e in sorted(xs.keys() & ys.keys()) if e not in prune_epochs]
            scatter = (points, lens.headline, lens.monitor)
        body = ""
        if drawn:
            png = plot_lens_panels(drawn, prune_epochs=_prune_x(log, prune_epochs, by_epoch),
                                   xlabel="epoch" if by_epoch else "global step", scatter=scatter)  # fmt: skip
            body = _img(png, f"{lens.prefix} series")
        if once:
            rows = [(n, log.series[n][0][2], log.series[n][0][1]) for n in sorted(once)]
            body += _table(("logged once", "value", "step"), rows, 1)
        stds = sum(1 for n in log.series if n.startswith(lens.prefix + "/") and n.endswith("/std"))
        label = (f"{lens.prefix}/ — {len(names) + len(once)} series in {len(panels)} panels"
                 + (f", {stds} standard errors as bars" if stds else "")
                 + (f", {lens.headline} vs {lens.monitor}" if scatter else ""))  # fmt: skip
        parts.append(_details(label, body, open_=True))
    other = sorted(
        n
        for n, m in _parsed(log).items()
        if m.prefix in ("train", "val", "test") or m.prefix.startswith("lr-")
    )
    other += sorted(n for n in log.series if n.startswith("lr-") and n not in other)
    if other:
        axes = {n: _by_epoch(log, [n]) for n in other}
        panels = {n: {None: _line(log, n, axes[n])} for n in other}
        xlabels = {n: "epoch" if axes[n] else "global step" for n in other}
        png = plot_lens_panels(panels, prune_epochs=[], xlabel=xlabels)
        parts.append(_details(f"training and validation curves ({len(other)})", _img(png, "training curves")))
    return "\n".join(parts) or '<p class="note">No series in this log.</p>'


def _figures_html(run_dir: Path) -> str:
    images = run_images(run_dir)
    if not images:
        return '<p class="note">No PNG figure under the run folder.</p>'
    groups: dict[str, list[tuple[str, bytes | None]]] = {}
    for rel, png in images:
        groups.setdefault(rel.split("/")[0] if "/" in rel else ".", []).append((rel, png))
    parts = []
    for folder, items in groups.items():
        body = "".join(_img(png, rel, rel) for rel, png in items if png is not None)
        body += "".join(
            f'<p class="note">{_esc(rel)} is not a PNG file; left out.</p>'
            for rel, png in items
            if png is None
        )
        parts.append(
            _details(
                f"{folder}/ ({len(items)} figure{'s' if len(items) != 1 else ''})",
                f'<div class="half">{body}</div>',
            )
        )
    return "\n".join(parts)


def build_report(run_dir: str | Path) -> str:
    """The HTML page of the run behind ``run_dir`` (see the module docstring); raises before any
    work if no readable log is found (:func:`resolve_run`)."""
    run = resolve_run(run_dir)
    log = read_run(run)
    lenses = run_lenses(log, run.run_dir)
    monitor = _main_monitor(lenses, log)
    info = pruning_summary(run.run_dir, log)
    prune_epochs = _pruning_epochs(info, log)
    nav = "".join(f'<a href="#{sid}">{sid}</a>' for sid in SECTIONS)
    title = f"lightning-topo report: {run.run_dir.name}"
    body = [
        f"<header><h1>{_esc(title)}</h1>{_facts_html(log, run, monitor)}<nav>{nav}</nav></header>",
        _section("summary", "Headline score per lens" + (f" and {monitor}" if monitor else ""),
                 _summary_html(log, lenses, monitor, prune_epochs)),
        '<div class="row">',
        _section("correlations", "Correlations", _correlations_html(log, lenses, prune_epochs)),
        _section("pruning", "Pruning", _pruning_html(info, run)),
        "</div>",
        _section("series", "Details per lens", _series_html(log, lenses, prune_epochs)),
        _section("figures", "Figures written during the run", _figures_html(run.run_dir)),
    ]  # fmt: skip
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(run_dir: str | Path, output: str | Path | None = None, *, overwrite: bool = False) -> Path:
    """Write :func:`build_report` of ``run_dir`` to ``output`` (default ``report.html`` in the
    folder given), atomically.

    Raises:
        FileExistsError: ``output`` exists and ``overwrite`` is false (checked before reading the run).
        FileNotFoundError, NotADirectoryError, ValueError: see :func:`resolve_run`.
    """
    run_dir = Path(run_dir)
    resolve_run(run_dir)
    path = Path(output) if output is not None else run_dir / "report.html"
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--output {path} must end in .html")
    if path.is_dir():
        raise IsADirectoryError(f"--output {path} is a folder; pass a file name ending in .html")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
    return write_text_atomic(path, build_report(run_dir), overwrite=overwrite)
