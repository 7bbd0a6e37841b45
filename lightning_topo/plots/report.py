"""Figures of ``report`` (matplotlib's object-oriented API on an Agg canvas; PNG bytes, nothing written).

Three kinds, all with integer epoch ticks, the pruning epoch(s) marked by a dotted red line, and
legends outside the plotted area (one shared legend above the panels):

* :func:`plot_headlines` -- the first screen: one panel per lens, its headline score per epoch
  with error bars (the score's ``/std``) and the monitored metric dashed on a right axis;
* :func:`plot_lens_panels` -- the details of one lens: one panel per series, one line per layer
  (the same colour for a layer in every panel), ``/std`` as error bars;
* :func:`plot_score_vs_monitor_scatter` -- a headline score against the monitored metric, one
  labelled point per epoch (pruning epochs left out by the caller).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

from matplotlib.ticker import MaxNLocator

from lightning_topo.plots import _new_figure

__all__ = ["Line", "plot_headlines", "plot_lens_panels", "plot_score_vs_monitor_scatter"]

#: One logged series: ``[(x, value, standard error or None), ...]``, ``x`` the epoch or global step.
Line = Sequence[tuple[float, float, float | None]]

_PRUNE_STYLE = {"color": "tab:red", "ls": ":", "lw": 1.2}
_MONITOR_COLOUR = "0.45"


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _draw(ax, line: Line, colour, label: str | None, marker: str = "o") -> None:
    if not line:
        return
    xs = [p[0] for p in line]
    ys = [p[1] for p in line]
    errs = [p[2] if p[2] is not None and math.isfinite(p[2]) else 0.0 for p in line]
    if any(errs):
        ax.errorbar(xs, ys, yerr=errs, fmt=marker + "-", ms=3, lw=1.2, capsize=2, color=colour, label=label)
    else:
        ax.plot(xs, ys, marker + "-", ms=3, lw=1.2, color=colour, label=label)


def _mark_pruning(ax, prune_epochs: Sequence[float]) -> None:
    for i, x in enumerate(prune_epochs):
        ax.axvline(x, label="pruning" if i == 0 else None, **_PRUNE_STYLE)


def _style(ax, xlabel: str, title: str) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.25)


def _grid(n: int, columns: int, width: float, height: float, top_room: float):
    cols = max(1, min(columns, n))
    rows = max(1, math.ceil(n / cols))
    fig = _new_figure(width * cols, height * rows + top_room)
    return fig, rows, cols


def _layer_colour(layer: int | None, layers: Sequence[int]):
    from matplotlib import colormaps

    if layer is None:
        return "black"
    cmap = colormaps["viridis"]
    index = sorted(layers).index(layer) if layer in layers else 0
    return cmap(0.1 + 0.8 * index / max(1, len(layers) - 1))


def plot_headlines(
    headlines: Mapping[str, Line],
    monitor: tuple[str, Sequence[tuple[float, float]]] | None,
    *,
    prune_epochs: Sequence[float] = (),
    xlabel: str = "epoch",
) -> bytes:
    """One panel per ``{headline metric: line}`` (error bars from the line's standard errors),
    the monitored metric ``(name, [(x, value)])`` dashed on a right axis of each; PNG bytes."""
    n = max(len(headlines), 1)
    fig, rows, cols = _grid(n, 4, 3.4, 2.3, 0.35)
    for i, (name, line) in enumerate(headlines.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        _draw(ax, line, "tab:blue", name)
        ax.set_ylabel(name, fontsize=8, color="tab:blue")
        _mark_pruning(ax, prune_epochs)
        _style(ax, xlabel, name)
        if monitor is not None and monitor[1]:
            ax2 = ax.twinx()
            ax2.plot([p[0] for p in monitor[1]], [p[1] for p in monitor[1]], "s--", ms=3, lw=1,
                     color=_MONITOR_COLOUR, label=monitor[0])  # fmt: skip
            ax2.tick_params(labelsize=7, colors=_MONITOR_COLOUR)
            if (i + 1) % cols == 0 or i == len(headlines) - 1:
                ax2.set_ylabel(monitor[0], fontsize=8, color=_MONITOR_COLOUR)
    handles = [("tab:blue", "o", "-", "headline score (bars: ± standard error)")]
    if monitor is not None and monitor[1]:
        handles.append((_MONITOR_COLOUR, "s", "--", f"{monitor[0]} (right axis)"))
    added = _figure_legend(fig, handles, bool(prune_epochs))
    _layout(fig, rows, 2.3, top_room=0.35 + added)
    return _png(fig)


def _layout(fig, rows: int, row_height: float, *, top_room: float = 0.35, bottom_room: float = 0.0) -> None:
    """Fixed margins in inches (``tight_layout`` costs seconds per figure of many panels)."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=0.62 / width, right=1 - 0.55 / width, wspace=0.45,
        top=1 - (top_room + 0.3) / height, bottom=(0.5 + bottom_room) / height,
        hspace=0.85 * 2.3 / row_height if rows > 1 else 0.2,
    )  # fmt: skip


def _figure_legend(fig, handles: list[tuple], pruning: bool, extra: Sequence = ()) -> float:
    """A legend above the panels, wrapped to the figure's width (a narrow one-panel figure gets one
    entry per row); the figure grows by the extra rows. Returns the inches added at the top."""
    from matplotlib.lines import Line2D

    items = [Line2D([], [], color=c, marker=m, ls=ls, ms=4) for c, m, ls, _ in handles]
    labels = [label for *_, label in handles]
    for artist, label in extra:
        items.append(artist)
        labels.append(label)
    if pruning:
        items.append(Line2D([], [], **_PRUNE_STYLE))
        labels.append("pruning epoch")
    if not items:
        return 0.0
    width, height = fig.get_size_inches()
    column = 0.45 + 0.062 * max(len(label) for label in labels)  # marker + text at fontsize 8, inches
    ncol = max(1, min(len(items), 10, int(width // column)))
    extra_rows = math.ceil(len(items) / ncol) - 1
    added = 0.19 * extra_rows
    if added:
        fig.set_size_inches(width, height + added)
    fig.legend(items, labels, loc="upper center", ncol=ncol, fontsize=8, frameon=False)
    return added


def plot_lens_panels(
    panels: Mapping[str, Mapping[int | str | None, Line]],
    *,
    prune_epochs: Sequence[float] = (),
    xlabel: str | Mapping[str, str] = "epoch",
    columns: int = 4,
    scatter: tuple[Sequence[tuple[int, float, float]], str, str] | None = None,
) -> bytes:
    """The details of one lens: one panel per ``{panel title: {line key: line}}``; PNG bytes.

    An ``int`` key is a layer (hidden-state index, 0 = embeddings): one colour in every panel and
    one entry in the legend above the panels; ``None`` is the score without a layer (black); a
    ``str`` key (``"class 0"``) gets its own colour and a legend to the right of its panel.
    ``xlabel`` is one label or one per panel title. ``scatter = (points, score, monitor)`` adds a
    last panel: ``score`` against ``monitor``, one point per ``(epoch, monitor value, score)``.
    """
    from matplotlib.lines import Line2D

    layers = sorted({k for lines in panels.values() for k in lines if isinstance(k, int)})
    n = max(len(panels) + (scatter is not None), 1)
    fig, rows, cols = _grid(n, columns, 3.3, 2.3, 0.35)
    for i, (title, lines) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        labelled = False
        for j, (key, line) in enumerate(
            sorted(lines.items(), key=lambda kv: (isinstance(kv[0], str), str(kv[0])))
        ):
            if isinstance(key, str):
                _draw(ax, line, f"C{j % 10}", key)
                labelled = True
            else:
                _draw(ax, line, _layer_colour(key, layers), None)
        _mark_pruning(ax, prune_epochs)
        _style(ax, xlabel if isinstance(xlabel, str) else xlabel.get(title, ""), title)
        if labelled:
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, handlelength=1)
    if scatter is not None:
        _scatter(fig.add_subplot(rows, cols, len(panels) + 1), *scatter)
    extra = [(Line2D([], [], color=_layer_colour(k, layers), marker="o", ms=4), f"layer {k}") for k in layers]
    if layers and any(None in lines for lines in panels.values()):
        extra.append((Line2D([], [], color="black", marker="o", ms=4), "no layer (headline)"))
    added = _figure_legend(fig, [], bool(prune_epochs), extra)
    _layout(fig, rows, 2.3, top_room=0.35 + added)
    return _png(fig)


def _scatter(ax, points: Sequence[tuple[int, float, float]], score: str, monitor: str) -> None:
    if points:
        epochs, xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, c=epochs, cmap="viridis", s=18)
        for e, x, y in points:
            ax.annotate(str(e), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(monitor, fontsize=8)
    ax.set_ylabel(score, fontsize=7)
    ax.tick_params(labelsize=7)
    ax.set_title(f"{score} vs {monitor} (label: epoch)", fontsize=8)
    ax.grid(alpha=0.25)


def plot_score_vs_monitor_scatter(
    points: Sequence[tuple[int, float, float]], score: str, monitor: str
) -> bytes:
    """``score`` (y) against ``monitor`` (x), one point per ``(epoch, monitor value, score)``,
    labelled with its epoch; PNG bytes."""
    fig = _new_figure(3.4, 2.6)
    _scatter(fig.add_subplot(1, 1, 1), points, score, monitor)
    fig.tight_layout()
    return _png(fig)
