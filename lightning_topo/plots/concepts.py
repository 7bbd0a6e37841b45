"""Figures of the latent-concept lens: matched and polar share per layer, one line per measurement.

matplotlib's object-oriented API on the Agg canvas (no pyplot global state); files are written
to a temporary sibling and renamed into place. Shared by
:class:`~lightning_topo.callbacks.ConceptAlignmentMonitor` and reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_topo.plots import _new_figure, _save

__all__ = ["plot_share_per_layer", "write_concept_figures"]

#: ``(metric family, y-axis label, file stem)`` of the figures written by :func:`write_concept_figures`.
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("matched", "share of concepts matched to a pre-trained concept", "concepts_matched"),
    ("polar", "share of concepts aligned to one output class", "concepts_polar"),
)


def _label(record: Mapping[str, Any]) -> str:
    if record.get("epoch", 0) < 0:
        return "pre-trained"
    return f"epoch {record['epoch']} (step {record['step']})"


def _per_layer(scores: Mapping[str, float], family: str, prefix: str = "concepts") -> list[tuple[int, float]]:
    """``[(layer, value)]`` of the metrics ``{prefix}/{family}/layer_{i}`` in ``scores``."""
    prefix = f"{prefix}/{family}/layer_"
    points = [(int(name[len(prefix) :]), float(v)) for name, v in scores.items() if name.startswith(prefix)]
    return sorted(p for p in points if p[1] == p[1])  # NaN dropped


def plot_share_per_layer(
    history: Sequence[Mapping[str, Any]], family: str, ylabel: str, path: str | Path, prefix: str = "concepts"
) -> Path | None:
    """One line per measurement: the share ``concepts/{family}/layer_{i}`` against the layer ``i``.

    Args:
        history: records ``{"epoch", "step", "scores": {metric name: value}}`` as the monitor
            keeps them (``epoch == -1``: the pre-trained reference, drawn dashed). The chance
            level ``concepts/{family}_chance/layer_{i}`` of the last record is drawn dotted.
        family: ``"matched"``, ``"polar"`` or ``"aligned/<label set>"``.
        path: PNG file to write. prefix: the metrics' first component (the monitor's ``log_prefix``).

    Returns:
        The path, or ``None`` when no record has a value for ``family`` (nothing is written).
    """
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for record in history:
        points = _per_layer(record.get("scores", {}), family, prefix)
        if points:
            xs, ys = zip(*points, strict=True)
            style = "--" if record.get("epoch", 0) < 0 else "-"
            ax.plot(xs, ys, style, marker="o", label=_label(record))
            drawn += 1
    if not drawn:
        return None
    chance = _per_layer(history[-1].get("scores", {}), f"{family}_chance", prefix)
    if chance:
        xs, ys = zip(*chance, strict=True)
        ax.plot(xs, ys, ":", color="grey", label=f"chance level, {_label(history[-1])}")
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, Path(path))


def write_concept_figures(
    history: Sequence[Mapping[str, Any]], out_dir: str | Path, prefix: str = "concepts"
) -> dict[str, Path]:
    """Write the matched and polar share figures to ``out_dir``; ``{stem: path}`` of those written."""
    out: dict[str, Path] = {}
    for family, ylabel, stem in FIGURES:
        path = plot_share_per_layer(history, family, ylabel, Path(out_dir) / f"{stem}.png", prefix)
        if path is not None:
            out[stem] = path
    return out
