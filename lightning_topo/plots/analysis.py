"""Figures of ``analyze``: a score against the layer, one line per model (matplotlib Agg)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lightning_topo.plots import _new_figure, _save

__all__ = ["plot_layer_profiles"]


def plot_layer_profiles(profiles: Mapping[str, Mapping[int, float]], score: str, path: Path) -> Path:
    """``score`` against the layer index, one line per ``{label: {layer: value}}`` entry.

    An empty label draws an unlabelled line (one model). The file is written to a temporary
    sibling and renamed.
    """
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for label, values in profiles.items():
        layers = sorted(values)
        ax.plot(layers, [values[i] for i in layers], marker="o", label=label or None)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel(score)
    ax.set_title(f"{score} per layer")
    if any(profiles):
        ax.legend()
    return _save(fig, path)
