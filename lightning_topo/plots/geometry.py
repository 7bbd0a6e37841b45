"""Figures of the geometry lens (matplotlib's object-oriented API on the Agg canvas).

No pyplot global state is touched, so the user's matplotlib backend is never changed; every
PNG is written to a temporary sibling and renamed into place. The history figures shared by
every lens live in :mod:`lightning_topo.plots`.

History records are those of :class:`~lightning_topo.callbacks.GeometryMonitor`:
``{"epoch", "step", "scores": {name: float}, "layers": [i, ...],
"heads": {name: [[per head] per layer]}}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_topo.plots import _new_figure, _save, _x_axis

__all__ = ["HEAD_PANELS", "CONE_SITES_PLOTTED", "plot_cone_vs_epoch", "plot_head_heatmaps"]

#: Per-head quantities drawn as layers x heads heat maps: key in ``record["heads"]`` -> title.
HEAD_PANELS: dict[str, str] = {
    "attention_entropy": "attention entropy (nats)",
    "directionality": "directionality (symmetric share)",
    "cone_heads": "cone index of head outputs",
    "qk_spectral_entropy": "spectral entropy of W_q W_k^T",
}

#: Cone-index sites drawn against the epoch: metric suffix -> panel title.
CONE_SITES_PLOTTED: dict[str, str] = {
    "/input": "layer input",
    "/heads": "head outputs (mean over heads)",
    "/attention_output": "attention output",
    "": "layer output",
}


def plot_head_heatmaps(record: Mapping[str, Any], path: Path, title: str | None = None) -> Path:
    """Heat maps layers x heads of every per-head quantity of one measurement.

    Args:
        record: a history record with ``layers`` and ``heads`` (see the module doc).
        path: the PNG to write (parents are created; an existing file is replaced).
        title: figure title; default ``"epoch {epoch}, step {step}"``.

    Returns:
        ``path``.
    """
    panels = [k for k in HEAD_PANELS if k in record.get("heads", {})]
    if not panels:
        raise ValueError("record has no per-head values to draw (expected record['heads'])")
    layers = list(record["layers"])
    fig = _new_figure(4.2 * len(panels), 0.45 * len(layers) + 2.2)
    for j, key in enumerate(panels):
        values = np.asarray(record["heads"][key], dtype=float)
        ax = fig.add_subplot(1, len(panels), j + 1)
        image = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(values.shape[1]))
        ax.set_xticklabels([str(h) for h in range(values.shape[1])], fontsize=7)
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels([str(i) for i in layers], fontsize=7)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(HEAD_PANELS[key], fontsize=9)
    fig.subplots_adjust(wspace=0.45)
    fig.suptitle(title or f"epoch {record.get('epoch')}, step {record.get('step')}")
    return _save(fig, path)


def plot_cone_vs_epoch(history: Sequence[Mapping[str, Any]], prefix: str, path: Path) -> Path:
    """Cone index of every layer against the epoch (the global step when an epoch holds several
    measurements), one panel per site (input, heads, attention output, output).

    Args:
        history: the monitor's records (one per measurement).
        prefix: metric prefix of the cone index, e.g. ``"geometry/cone"``; the series are
            ``{prefix}/layer_{i}{site}``.
        path: the PNG to write.
    """
    if not history:
        raise ValueError("history is empty: nothing to draw")
    layers = list(history[-1]["layers"])
    x, xlabel = _x_axis(history)
    from matplotlib import colormaps

    fig = _new_figure(10.0, 7.0)
    cmap = colormaps["viridis"]
    colours = [cmap(k / max(len(layers) - 1, 1)) for k in range(len(layers))]
    for j, (site, label) in enumerate(CONE_SITES_PLOTTED.items()):
        ax = fig.add_subplot(2, 2, j + 1)
        for colour, i in zip(colours, layers, strict=True):
            name = f"{prefix}/layer_{i}{site}"
            values = np.array([r["scores"].get(name, math.nan) for r in history], dtype=float)
            ax.plot(x, values, "o-", color=colour, label=f"layer {i}", ms=3)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("cone index")
        if j == 0:
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle("cone index per layer (mean over validation sequences)")
    return _save(fig, path)
