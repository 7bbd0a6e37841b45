"""Figures of the tree probe monitor (matplotlib's object-oriented API on an Agg canvas).

The history figures shared by every lens live in :mod:`lightning_topo.plots`; the functions
here take the monitor's history
(``[{"epoch", "scores": {name: float}, "monitor"}, ...]``) and write PNGs atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_topo.plots import _new_figure, _save
from lightning_topo.scores.names import parse_metric_name

__all__ = ["log_probe_to_wandb", "plot_probe_by_layer", "probe_table"]


def _layer_series(record: Mapping[str, Any], prefix: str, kind: str) -> tuple[list[int], list[float]]:
    """``(layers, values)`` of the per-layer ``{prefix}/{kind}/layer_{i}`` scores of one record."""
    points = []
    for name, value in record["scores"].items():
        m = parse_metric_name(name, (prefix,))
        if (
            m is not None and m.score == (kind,) and m.layer is not None and m.klass is None
            and not m.detail and not m.std and m.correlation is None
        ):  # fmt: skip
            points.append((m.layer, float(value)))
    points.sort()
    return [p[0] for p in points], [p[1] for p in points]


def plot_probe_by_layer(
    history: Sequence[Mapping[str, Any]], kinds: Sequence[str], path: str | Path, prefix: str = "probe"
) -> Path:
    """One panel per target rule (ssp, essp, sp): held-out probe loss against the layer, one line
    per measured epoch (light = early, dark = late). Written atomically to ``path``."""
    kinds = list(kinds) or ["ssp"]
    fig = _new_figure(4.2 * len(kinds), 3.6)
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    count = max(1, len(history))
    for index, (ax, kind) in enumerate(zip(axes, kinds, strict=True)):
        for i, record in enumerate(history):
            layers, values = _layer_series(record, prefix, kind)
            if not layers:
                continue
            shade = 0.25 + 0.75 * (i + 1) / count
            ax.plot(
                layers, values, marker="o", color=(0.1, 0.3, 0.8, shade), label=f"epoch {record['epoch']}"
            )
        ax.set_xlabel("layer (0 = embeddings)")
        if index == 0:
            ax.set_ylabel("held-out probe loss (MSE)")
        ax.set_title(kind)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("tree topological probe per layer")
    return _save(fig, Path(path))


def probe_table(history: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows (one per measured epoch) of the history, for a ``wandb.Table``."""
    names: list[str] = []
    for record in history:
        names.extend(n for n in record["scores"] if n not in names)
    columns = ["epoch", *names, "monitor"]
    rows = [
        [int(r["epoch"]), *[r["scores"].get(n, math.nan) for n in names], r.get("monitor")] for r in history
    ]
    return columns, rows


def log_probe_to_wandb(
    logger: Any, path: Path, history: Sequence[Mapping[str, Any]], prefix: str = "probe"
) -> None:
    """Log the figure as ``{prefix}/plots/by_layer`` and the history as ``{prefix}/history``."""
    import wandb

    columns, rows = probe_table(history)
    logger.experiment.log(
        {
            f"{prefix}/plots/by_layer": wandb.Image(str(path)),
            f"{prefix}/history": wandb.Table(columns=columns, data=rows),
        }
    )
