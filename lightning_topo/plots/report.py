"""Figures of ``report``: one family of logged series against the monitored metric (matplotlib Agg).

The figure is returned as PNG bytes (the report embeds it as a data URI; nothing is written).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

from matplotlib.ticker import MaxNLocator

from lightning_topo.plots import _new_figure

__all__ = ["Points", "plot_family_vs_monitor"]

#: One logged series: ``[(x, value), ...]`` with ``x`` the epoch or global step.
Points = Sequence[tuple[float, float]]


def plot_family_vs_monitor(
    panels: Mapping[str, Mapping[str, Points]],
    monitor: tuple[str, Points] | None,
    *,
    title: str,
    xlabel: str = "epoch",
    columns: int = 3,
) -> bytes:
    """A grid of panels, one per ``{panel title: {line label: points}}``; returns PNG bytes.

    Each panel draws its lines on the left axis and, when ``monitor = (name, points)`` is given,
    the monitored metric (e.g. ``val/acc``) dashed on a right axis, so every score can be read
    against the accuracy over the same epochs. Panels with several lines (per-layer series) get a
    legend.
    """
    n = max(len(panels), 1)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig = _new_figure(4.2 * cols, 3.0 * rows)
    for i, (name, lines) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for label, points in lines.items():
            xs, ys = zip(*points, strict=True) if points else ((), ())
            ax.plot(xs, ys, "o-", ms=3, label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if len(lines) > 1:
            ax.legend(fontsize=6, ncol=2)
        if monitor is not None and monitor[1]:
            ax2 = ax.twinx()
            mx, my = zip(*monitor[1], strict=True)
            ax2.plot(mx, my, "s--", ms=3, color="tab:gray", alpha=0.8)
            ax2.set_ylabel(monitor[0], fontsize=8, color="tab:gray")
            ax2.tick_params(labelsize=7)
    fig.suptitle(title + (f" (dashed, right axis: {monitor[0]})" if monitor else ""))
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
