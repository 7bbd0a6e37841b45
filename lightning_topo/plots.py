"""Figures and W&B images/tables shared by the callbacks and `report` (matplotlib Agg, no pyplot state).

Matplotlib's object-oriented API with the Agg canvas is used, so the global backend of the
user's session is never changed. Every file is written to a temporary sibling and renamed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _new_figure(width: float = 6.0, height: float = 4.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, format="png", bbox_inches="tight")
    os.replace(tmp, path)
    return path


def _series(history: Sequence[Mapping[str, Any]], name: str) -> tuple[np.ndarray, np.ndarray]:
    epochs = np.array([r["epoch"] for r in history], dtype=float)
    values = np.array([r["scores"].get(name, math.nan) for r in history], dtype=float)
    return epochs, values


def _monitor(history: Sequence[Mapping[str, Any]]) -> np.ndarray:
    return np.array([math.nan if r.get("monitor") is None else r["monitor"] for r in history], dtype=float)


def plot_score_vs_epoch(
    history: Sequence[Mapping[str, Any]], score: str, monitor: str | None, path: Path
) -> Path:
    """``score`` (left axis) and the monitored metric (right axis) against the epoch."""
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    epochs, values = _series(history, score)
    ax.plot(epochs, values, "o-", color="tab:blue", label=score)
    ax.set_xlabel("epoch")
    ax.set_ylabel(score, color="tab:blue")
    mon = _monitor(history)
    if monitor is not None and np.isfinite(mon).any():
        ax2 = ax.twinx()
        ax2.plot(epochs, mon, "s--", color="tab:orange", label=monitor)
        ax2.set_ylabel(monitor, color="tab:orange")
    ax.set_title(f"{score} and {monitor} per epoch" if monitor else f"{score} per epoch")
    return _save(fig, path)


def plot_score_vs_monitor(history: Sequence[Mapping[str, Any]], score: str, monitor: str, path: Path) -> Path:
    """Scatter of ``score`` against the monitored metric, one point per epoch (labelled)."""
    fig = _new_figure(5.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    epochs, values = _series(history, score)
    mon = _monitor(history)
    ax.scatter(mon, values, c=epochs, cmap="viridis")
    for e, x, y in zip(epochs, mon, values, strict=True):
        if np.isfinite(x) and np.isfinite(y):
            ax.annotate(str(int(e)), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(monitor)
    ax.set_ylabel(score)
    ax.set_title(f"{score} vs {monitor} (label: epoch)")
    return _save(fig, path)


def plot_class_diagrams(diagrams: Mapping[int, Sequence[np.ndarray]], title: str, path: Path) -> Path:
    """One persistence-diagram panel per class (H0 and H1 finite pairs, raw units)."""
    n = max(len(diagrams), 1)
    fig = _new_figure(4.0 * n, 4.0)
    colours = ("tab:blue", "tab:red", "tab:green")
    for i, (c, dgms) in enumerate(sorted(diagrams.items())):
        ax = fig.add_subplot(1, n, i + 1)
        top = 0.0
        for k, dgm in enumerate(dgms):
            dgm = np.asarray(dgm, dtype=float).reshape(-1, 2)
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


def history_table(
    history: Sequence[Mapping[str, Any]], monitor: str | None
) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows (one per recorded epoch) of the score history."""
    names: list[str] = []
    for record in history:
        for name in record["scores"]:
            if name not in names:
                names.append(name)
    columns = ["epoch", *names] + ([monitor] if monitor else [])
    rows = []
    for record in history:
        row = [int(record["epoch"]), *[record["scores"].get(n) for n in names]]
        if monitor:
            row.append(record.get("monitor"))
        rows.append(row)
    return columns, rows


def log_to_wandb(logger: Any, images: Mapping[str, Path], columns: list[str], rows: list[list[Any]]) -> None:
    """Upload ``images`` as ``wandb.Image`` (one key each) and the history as a ``wandb.Table``."""
    import wandb

    run = logger.experiment
    payload: dict[str, Any] = {key: wandb.Image(str(path)) for key, path in images.items()}
    payload["topo/history"] = wandb.Table(columns=columns, data=rows)
    run.log(payload)


def plot_kept_units(history: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Bar charts of the attention heads and FFN units each encoder layer keeps after the last pruning step.

    ``history`` is ``TopologicalPruning.history`` (records with ``step``, ``ratio`` and
    ``widths = {"heads": [...], "ffn": [...]}``, one entry per layer).
    """
    last = history[-1]
    fig = _new_figure(8.0, 3.0)
    for i, kind in enumerate(("heads", "ffn")):
        ax = fig.add_subplot(1, 2, i + 1)
        kept = last["widths"][kind]
        ax.bar(range(len(kept)), kept)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"kept {kind}")
        ax.set_title(f"{kind} after step {last['step']} ({last['ratio']:.2f} of encoder)")
    fig.tight_layout()
    return _save(fig, path)
