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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_topo.analysis import write_text_atomic
from lightning_topo.plots.wandb import offline_run

__all__ = ["FAMILIES", "SECTIONS", "RunLog", "build_report", "read_run", "write_report"]

#: Metric prefixes drawn against the monitored metric, one figure each.
FAMILIES = ("topo", "geometry", "concepts", "probe", "prune")
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
_CORRELATION = re.compile(r"^(?P<metric>.+)/(?P<kind>pearson|spearman)_(?P<target>[^/]+)$")
_LAYER = re.compile(r"^(?P<base>.+)/layer_(?P<layer>\d+)$")
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


def find_log(run_dir: str | Path) -> tuple[str, Path]:
    """``(kind, path)`` of the log :func:`resolve_run` reads for ``run_dir``."""
    run = resolve_run(run_dir)
    return run.log_kind, run.log_path


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


# ----------------------------------------------------------------------------- page parts


def _xy(points: Sequence[tuple[int | None, int, float]], by_epoch: bool) -> list[tuple[float, float]]:
    return [(float(e if by_epoch else s), v) for e, s, v in points if not by_epoch or e is not None]


def _by_epoch(log: RunLog, names: Sequence[str]) -> bool:
    """Epoch on the x axis when every series has at most one value per epoch, else the global step."""
    for name in names:
        epochs = [e for e, _, _ in log.series[name]]
        if None in epochs or len(set(epochs)) != len(epochs):
            return False
    return True


def family_panels(log: RunLog, family: str) -> dict[str, dict[str, list[tuple[int | None, int, float]]]]:
    """``{panel: {line: points}}`` of one family; correlations excluded, ``base/layer_{i}`` series
    share the panel ``base/layer_*`` (one line per layer)."""
    panels: dict[str, dict[str, list]] = {}
    for name in sorted(log.series):
        if not name.startswith(family + "/") or _CORRELATION.match(name):
            continue
        layer = _LAYER.match(name)
        if layer:
            panels.setdefault(f"{layer['base']}/layer_*", {})[f"layer {layer['layer']}"] = log.series[name]
        else:
            panels.setdefault(name, {})[name] = log.series[name]
    return panels


def series_figures(log: RunLog) -> list[tuple[str, bytes]]:
    """One PNG per family that was logged: ``[(family, png bytes), ...]``."""
    from lightning_topo.plots.report import plot_family_vs_monitor

    figures = []
    for family in FAMILIES:
        panels = family_panels(log, family)
        if not panels:
            continue
        names = [n for n in log.series if n.startswith(family + "/")]
        monitor = log.series.get(MONITOR)
        by_epoch = _by_epoch(log, names + ([MONITOR] if monitor else []))
        png = plot_family_vs_monitor(
            {p: {k: _xy(v, by_epoch) for k, v in lines.items()} for p, lines in panels.items()},
            (MONITOR, _xy(monitor, by_epoch)) if monitor else None,
            title=f"{family}/ series",
            xlabel="epoch" if by_epoch else "global step",
        )
        figures.append((family, png))
    return figures


def correlation_rows(log: RunLog) -> list[dict[str, Any]]:
    """``[{metric, target, pearson, spearman, epoch}]`` from the last value of each correlation."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for name, points in log.series.items():
        m = _CORRELATION.match(name)
        if m and points:
            row = rows.setdefault((m["metric"], m["target"]), {"metric": m["metric"], "target": m["target"]})
            row[m["kind"]] = points[-1][2]
            row["epoch"] = points[-1][0]
    return [rows[k] for k in sorted(rows)]


def run_images(run_dir: Path) -> list[tuple[str, bytes | None]]:
    """Every ``*.png`` under ``run_dir`` (hidden files skipped): ``[(relative path, bytes or None)]``,
    ``None`` for a file that is not a PNG."""
    images = []
    for path in sorted(run_dir.rglob("*.png")):
        rel = path.relative_to(run_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        data = path.read_bytes()
        images.append((rel.as_posix(), data if data.startswith(_PNG_SIGNATURE) else None))
    return images


def pruning_summary(run_dir: Path) -> dict[str, Any] | None:
    """The last pruning step of ``pruned/pruning_history.json`` under ``run_dir``, with the sizes of
    the compressed weights and of the dense Lightning checkpoints; ``None`` without that file."""
    found = sorted(run_dir.rglob("pruning_history.json"))
    if not found:
        return None
    path = found[0]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        last = data["history"][-1]
        widths = last["widths"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise ValueError(f"{path} is not a pruning history written by TopologicalPruning ({err})") from None
    weights = sum(p.stat().st_size for p in path.parent.glob("*.safetensors"))
    dense = {p.relative_to(run_dir).as_posix(): p.stat().st_size for p in sorted(run_dir.rglob("*.ckpt"))}
    return {
        "path": path.relative_to(run_dir).as_posix(),
        "method": data.get("method"),
        "original_params": data.get("original_params"),
        "last": last,
        "layers": list(zip(widths.get("heads", []), widths.get("ffn", []), strict=False)),
        "weights_bytes": weights,
        "checkpoints": dense,
        "history": data["history"],
    }


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.name,th.name{text-align:left;font-family:monospace}
figure{margin:1em 0;display:inline-block;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555;font-family:monospace}
.note{color:#666;font-style:italic}nav a{margin-right:1em}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else _esc(value)


def _img(png: bytes, alt: str, caption: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<figure><img src="{uri}" alt="{_esc(alt)}"><figcaption>{_esc(caption)}</figcaption></figure>'


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


def _summary_html(log: RunLog, run_dir: Path) -> str:
    epochs = [e for points in log.series.values() for e, _, _ in points if e is not None]
    acc = [v for _, _, v in log.series.get(MONITOR, [])]
    rows = [
        ("run folder", str(run_dir.resolve())),
        ("log", f"{log.source}: {log.path}"),
        ("epochs logged", max(epochs) + 1 if epochs else "none"),
        ("series logged", len(log.series)),
        (f"last {MONITOR}", f"{acc[-1]:.4f}" if acc else "not logged"),
        (f"best {MONITOR}", f"{max(acc):.4f}" if acc else "not logged"),
    ]
    return _table(("", "value"), rows, names=2)


def _series_html(log: RunLog) -> str:
    figures = series_figures(log)
    if not figures:
        return f'<p class="note">No {", ".join(f + "/" for f in FAMILIES)} series in this log.</p>'
    note = "" if MONITOR in log.series else f'<p class="note">{MONITOR} was not logged.</p>'
    return note + "\n".join(_img(png, f"{family} series", f"{family}/ series") for family, png in figures)


def _correlations_html(log: RunLog) -> str:
    rows = correlation_rows(log)
    if not rows:
        return '<p class="note">No */pearson_* or */spearman_* metric in this log.</p>'
    return "<p>Last logged value of each correlation (over the epochs measured so far).</p>" + _table(
        ("metric", "against", "pearson", "spearman", "epoch"),
        [(r["metric"], r["target"], r.get("pearson"), r.get("spearman"), r.get("epoch")) for r in rows],
        names=2,
    )


def _figures_html(run_dir: Path) -> str:
    images = run_images(run_dir)
    if not images:
        return '<p class="note">No PNG figure under the run folder.</p>'
    parts = [_img(png, rel, rel) for rel, png in images if png is not None]
    parts += [
        f'<p class="note">{_esc(rel)} is not a PNG file; left out.</p>' for rel, png in images if png is None
    ]
    return "\n".join(parts)


def _pruning_html(run_dir: Path) -> str:
    info = pruning_summary(run_dir)
    if info is None:
        return '<p class="note">No pruned/pruning_history.json: this run was not pruned.</p>'
    last = info["last"]
    facts = [
        ("history", info["path"]),
        ("method", info["method"]),
        ("pruning steps", len(info["history"])),
        ("last step at epoch", last.get("epoch")),
        ("encoder parameters before", info["original_params"]),
        ("encoder parameters after", last.get("params")),
        ("kept fraction of encoder", last.get("ratio")),
        ("model parameters after (total)", last.get("total_params")),
        ("compressed weights (*.safetensors)", f"{info['weights_bytes'] / 2**20:.1f} MiB"),
    ]
    facts += [
        (f"dense checkpoint {name}", f"{size / 2**20:.1f} MiB") for name, size in info["checkpoints"].items()
    ]
    layers = [(i + 1, heads, ffn) for i, (heads, ffn) in enumerate(info["layers"])]
    parts = [
        _table(("", "value"), facts, names=2),
        _table(("encoder layer (1 = first)", "heads kept", "FFN units kept"), layers, 0),
    ]
    return "\n".join(
        parts + [_img(_kept_units_png(info["history"]), "kept units", "heads and FFN units kept per layer")]
    )


def _kept_units_png(history: Sequence[Mapping[str, Any]]) -> bytes:
    import tempfile

    from lightning_topo.plots import plot_kept_units

    with tempfile.TemporaryDirectory() as tmp:
        return plot_kept_units(history, Path(tmp) / "kept.png").read_bytes()


def build_report(run_dir: str | Path) -> str:
    """The HTML page of the run under ``run_dir`` (see the module docstring); raises before any work
    if ``run_dir`` holds no readable log."""
    run = resolve_run(run_dir)
    log = read_run(run)
    run_dir = run.run_dir
    sections = [
        _section("summary", "Run", _summary_html(log, run_dir)),
        _section("series", f"Scores against {MONITOR}", _series_html(log)),
        _section("correlations", "Logged correlations", _correlations_html(log)),
        _section("figures", "Figures written by the monitors", _figures_html(run_dir)),
        _section("pruning", "Pruning", _pruning_html(run_dir)),
    ]
    nav = "".join(f'<a href="#{sid}">{sid}</a>' for sid in SECTIONS)
    title = f"lightning-topo report: {run_dir.resolve().name}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body><h1>{_esc(title)}</h1><nav>{nav}</nav>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def write_report(run_dir: str | Path, output: str | Path | None = None, *, overwrite: bool = False) -> Path:
    """Write :func:`build_report` of ``run_dir`` to ``output`` (default ``RUN_DIR/report.html``),
    atomically.

    Raises:
        FileExistsError: ``output`` exists and ``overwrite`` is false (checked before reading the run).
        FileNotFoundError, NotADirectoryError, ValueError: see :func:`find_log`.
    """
    run_dir = Path(run_dir)
    find_log(run_dir)
    path = Path(output) if output is not None else run_dir / "report.html"
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--output {path} must end in .html")
    if path.is_dir():
        raise IsADirectoryError(f"--output {path} is a folder; pass a file name ending in .html")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
    return write_text_atomic(path, build_report(run_dir), overwrite=overwrite)
