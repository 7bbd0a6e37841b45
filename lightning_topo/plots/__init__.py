"""Figures and W&B images/tables shared by the callbacks and `report` (matplotlib Agg, no pyplot state).

Matplotlib's object-oriented API with the Agg canvas is used, so the global backend of the
user's session is never changed. Every file is written to a temporary sibling and renamed.

A lens callback keeps a *history*: one record per measurement,
``{"epoch": int, "step": int, "scores": {name: float}, "monitor": float | None}``.
:func:`write_history_figures` draws the standard figures of such a history and
:func:`publish_to_wandb` sends them, with the history as a table, to every ``WandbLogger``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import WandbLogger

from lightning_topo.data.files import write_text_atomic

History = Sequence[Mapping[str, Any]]


def _new_figure(width: float = 6.0, height: float = 4.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (no partial file left)."""
    return write_text_atomic(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"), overwrite=True)


def _x_axis(history: History) -> tuple[np.ndarray, str]:
    """The epoch of each record, or its global step when an epoch holds several measurements
    (``val_check_interval < 1``)."""
    epochs = [int(r["epoch"]) for r in history]
    if len(set(epochs)) == len(epochs) or any(r.get("step") is None for r in history):
        return np.array(epochs, dtype=float), "epoch"
    return np.array([int(r["step"]) for r in history], dtype=float), "global step"


def _values(history: History, name: str) -> np.ndarray:
    return np.array([r["scores"].get(name, math.nan) for r in history], dtype=float)


def _monitor(history: History) -> np.ndarray:
    return np.array([math.nan if r.get("monitor") is None else r["monitor"] for r in history], dtype=float)


def plot_score_vs_epoch(
    history: History, score: str, monitor: str | None, path: Path, *, mark_epochs: Iterable[int] = ()
) -> Path:
    """``score`` (left axis) and the monitored metric (right axis) per measurement.

    The x axis is the epoch (integer ticks), or the global step when an epoch holds several
    measurements. ``{score}/std`` in the records draws error bars; ``mark_epochs`` (e.g. the
    pruning epoch) get a dotted red line.
    """
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    x, xlabel = _x_axis(history)
    std = _values(history, f"{score}/std")
    if np.isfinite(std).any():
        ax.errorbar(
            x, _values(history, score), yerr=np.nan_to_num(std), fmt="o-", capsize=2, color="tab:blue"
        )
    else:
        ax.plot(x, _values(history, score), "o-", color="tab:blue", label=score)
    if xlabel == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for i, epoch in enumerate(sorted({int(e) for e in mark_epochs})):
            ax.axvline(epoch, color="tab:red", ls=":", label="pruning" if i == 0 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(score, color="tab:blue")
    mon = _monitor(history)
    if monitor is not None and np.isfinite(mon).any():
        ax2 = ax.twinx()
        ax2.plot(x, mon, "s--", color="tab:orange", label=monitor)
        ax2.set_ylabel(monitor, color="tab:orange")
    ax.set_title(f"{score} and {monitor} per {xlabel}" if monitor else f"{score} per {xlabel}")
    return _save(fig, path)


def plot_score_vs_monitor(
    history: History, score: str, monitor: str, path: Path, *, exclude_epochs: Iterable[int] = ()
) -> Path:
    """Scatter of ``score`` against the monitored metric, one point per measurement (labelled).

    ``exclude_epochs`` (e.g. the pruning epoch, whose accuracy change is the pruning's, not the
    score's) are left out.
    """
    skip = {int(e) for e in exclude_epochs}
    history = [r for r in history if int(r["epoch"]) not in skip]
    fig = _new_figure(5.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    x, xlabel = _x_axis(history)
    values, mon = _values(history, score), _monitor(history)
    ax.scatter(mon, values, c=x, cmap="viridis")
    for e, m, v in zip(x, mon, values, strict=True):
        if np.isfinite(m) and np.isfinite(v):
            ax.annotate(str(int(e)), (m, v), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(monitor)
    ax.set_ylabel(score)
    left_out = f"; epoch {', '.join(map(str, sorted(skip)))} left out" if skip else ""
    ax.set_title(f"{score} vs {monitor} (label: {xlabel}{left_out})", fontsize=9)
    return _save(fig, path)


def plot_class_diagrams(diagrams: Mapping[int, Sequence[Any]], title: str, path: Path) -> Path:
    """One persistence-diagram panel per class: ``{class: [H0 (m_0, 2), H1 (m_1, 2)]}``, raw units.

    Tensors or arrays are accepted (tensors are detached and moved to the CPU).
    """
    n = max(len(diagrams), 1)
    fig = _new_figure(4.0 * n, 4.0)
    colours = ("tab:blue", "tab:red", "tab:green")
    for i, (c, dgms) in enumerate(sorted(diagrams.items())):
        ax = fig.add_subplot(1, n, i + 1)
        top = 0.0
        for k, dgm in enumerate(dgms):
            dgm = np.asarray(dgm.detach().cpu() if hasattr(dgm, "detach") else dgm, dtype=float).reshape(
                -1, 2
            )
            if dgm.size:
                ax.scatter(
                    dgm[:, 0], dgm[:, 1], s=8, alpha=0.7, color=colours[k % 3], label=f"H{k} ({len(dgm)})"
                )
                top = max(top, float(dgm.max()))
        top = top * 1.05 or 1.0
        ax.plot([0, top], [0, top], "k--", lw=0.8)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("birth")
        ax.set_ylabel("death")
        ax.set_title(f"class {c}")
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def history_table(history: History, monitor: str | None) -> tuple[list[str], list[list[Any]]]:
    """Columns ``epoch, step, <scores...>[, monitor]`` and one row per recorded measurement."""
    names: list[str] = []
    for record in history:
        names += [n for n in record["scores"] if n not in names]
    columns = ["epoch", "step", *names] + ([monitor] if monitor else [])
    rows = []
    for record in history:
        row = [int(record["epoch"]), record.get("step"), *[record["scores"].get(n) for n in names]]
        if monitor:
            row.append(record.get("monitor"))
        rows.append(row)
    return columns, rows


def write_history_figures(
    history: History,
    out_dir: Path,
    *,
    score: str,
    monitor: str | None,
    diagrams: Mapping[int, Sequence[Any]] | None = None,
    diagram_title: str = "persistence diagrams",
    key_prefix: str = "topo",
) -> dict[str, Path]:
    """Draw the standard figures of a lens history into ``out_dir``.

    Files: ``{score}_vs_epoch.png`` (``/`` in names becomes ``_``), ``{score}_vs_{monitor}.png``
    when a monitored value was recorded, and ``diagrams_last_epoch.png`` when ``diagrams`` are
    given (:func:`plot_class_diagrams`).

    Returns:
        ``{image key: path}``, keys ``{key_prefix}/plots/<file stem>`` (for W&B).
    """
    out_dir = Path(out_dir)
    if not any(r.get("monitor") is not None for r in history):
        monitor = None
    safe = score.replace("/", "_")
    images = {
        f"{key_prefix}/plots/{safe}_vs_epoch": plot_score_vs_epoch(
            history, score, monitor, out_dir / f"{safe}_vs_epoch.png"
        )
    }
    if monitor is not None:
        stem = f"{safe}_vs_{monitor.replace('/', '_')}"
        images[f"{key_prefix}/plots/{stem}"] = plot_score_vs_monitor(
            history, score, monitor, out_dir / f"{stem}.png"
        )
    if diagrams is not None:
        path = out_dir / "diagrams_last_epoch.png"
        images[f"{key_prefix}/plots/diagrams"] = plot_class_diagrams(diagrams, diagram_title, path)
    return images


def wandb_loggers(loggers: Iterable[Any] | None) -> list[WandbLogger]:
    """The Weights & Biases loggers among ``loggers`` (``trainer.loggers``; ``None``: none)."""
    return [logger for logger in (loggers or []) if isinstance(logger, WandbLogger)]


def log_to_wandb(
    logger: WandbLogger,
    images: Mapping[str, Path],
    columns: list[str],
    rows: list[list[Any]],
    table_key: str = "topo/history",
) -> None:
    """Upload ``images`` as ``wandb.Image`` (one key each) and the rows as a ``wandb.Table``."""
    import wandb

    payload: dict[str, Any] = {key: wandb.Image(str(path)) for key, path in images.items()}
    payload[table_key] = wandb.Table(columns=columns, data=rows)
    logger.experiment.log(payload)


def publish_to_wandb(
    loggers: Iterable[Any],
    images: Mapping[str, Path],
    history: History,
    monitor: str | None,
    *,
    table_key: str,
) -> int:
    """Send ``images`` and the history table (key ``table_key``) to every ``WandbLogger``.

    Returns:
        The number of W&B loggers written to (0 without one; nothing is imported then).
    """
    targets = wandb_loggers(loggers)
    if targets:
        columns, rows = history_table(history, monitor)
        for logger in targets:
            log_to_wandb(logger, images, columns, rows, table_key)
    return len(targets)


def plot_kept_units(history: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Bar charts of the attention heads and FFN units each encoder layer keeps after the last pruning step.

    ``history`` is ``TopologicalPruning.history`` (records with ``step``, ``ratio`` and
    ``widths = {"heads": [...], "ffn": [...]}``, one entry per encoder layer). Layers are numbered
    as everywhere else, by hidden-state index: encoder layer ``i`` (1-based) writes hidden state ``i``.
    """
    last = history[-1]
    fig = _new_figure(8.0, 3.0)
    for i, kind in enumerate(("heads", "ffn")):
        ax = fig.add_subplot(1, 2, i + 1)
        kept = last["widths"][kind]
        layers = range(1, len(kept) + 1)  # encoder layer i writes hidden state i (0 = embeddings)
        ax.bar(layers, kept)
        ax.set_xticks(list(layers))
        ax.set_xlabel("layer (hidden-state index)")
        ax.set_ylabel(f"kept {kind}")
        ax.set_title(f"{kind} after step {last['step']} ({last['ratio']:.2f} of encoder)")
    fig.tight_layout()
    return _save(fig, path)
