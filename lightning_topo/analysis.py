"""``analyze``: every score a monitor logs, for a model outside any Trainer, one row per layer.

:func:`analyze` reads a dataloader once (eval mode, no gradients) and measures the selected
layers with exactly the functions the callbacks call: hidden states pooled and sampled by
:func:`~lightning_topo.representations.collect_representations` (what
:class:`~lightning_topo.callbacks.PersistenceScoreMonitor` does), PSF and H0/H1 statistics by
:func:`~lightning_topo.scores.persistence_metrics`, the geometry lens by the forward hooks of
:mod:`lightning_topo.representations.geometry` and
:func:`~lightning_topo.scores.geometry.geometry_metrics`. Nothing is computed a second way, so
``analyze`` at the weights and data of a validation run gives the numbers the monitors logged.

Score families (:data:`SCORE_FAMILIES`) are small objects with ``attach`` / ``detach`` (hooks
around the one pass) and ``compute``; a new lens (concepts, tree probe) adds one class to
:data:`_FAMILIES`.

Example::

    from lightning_topo import analyze
    result = analyze(hf_model, val_loader, scores=("psf", "geometry"), layers="all")
    result.metrics["topo/psf"]        # what PersistenceScoreMonitor logs as topo/psf
    result.to_csv("layers.csv")       # one row per layer, one column per score
    result.plot("figures/")           # PSF per layer, per-class diagrams of the deepest layer
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_topo.plots import plot_class_diagrams
from lightning_topo.plots.analysis import plot_layer_profiles
from lightning_topo.representations import collect_representations, resolve_layers
from lightning_topo.representations.geometry import (
    ATTENTION_SOURCES,
    GeometryAccumulator,
    GeometryCapture,
    weight_geometry,
)
from lightning_topo.scores import get_preset, metric_names, persistence_metrics
from lightning_topo.scores.checks import check_bool, check_choice, check_int, check_seed
from lightning_topo.scores.geometry import geometry_metrics
from lightning_topo.scores.presets import POOLINGS, PSFPreset
from lightning_topo.scores.sampling import check_resamples
from lightning_topo.topology.diagrams import BACKENDS

__all__ = ["SCORE_FAMILIES", "AnalysisResult", "analyze", "check_score_families", "write_text_atomic"]

#: Score families :func:`analyze` can measure (each the lens of one monitor).
SCORE_FAMILIES: tuple[str, ...] = ("psf", "geometry")

_LAYER_NAME = re.compile(r"^(?P<head>.+?)/layer_(?P<layer>\d+)(?P<tail>.*)$")


def check_score_families(scores: str | Sequence[str]) -> tuple[str, ...]:
    """A non-empty subset of :data:`SCORE_FAMILIES` (a string is one family, or comma-separated)."""
    items = [s.strip() for s in scores.split(",")] if isinstance(scores, str) else list(scores)
    bad = [s for s in items if s not in SCORE_FAMILIES]
    if not items or bad:
        raise ValueError(
            f"scores: unknown score family {bad[0] if bad else scores!r}; accepted: {', '.join(SCORE_FAMILIES)}"
        )
    return tuple(dict.fromkeys(items))


def write_text_atomic(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` to a temporary sibling and move it to ``path``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- result


@dataclass
class AnalysisResult:
    """What :func:`analyze` measured.

    Attributes:
        rows: ``{layer: {column: float}}``, layers as hidden-state indices (0 = embeddings);
            columns are the monitors' metric names without the ``/layer_{i}`` part
            (``topo/psf``, ``topo/h0/total_persistence``, ``geometry/cone``, ...). A layer a
            family does not measure (the embeddings for geometry) has no entry for its columns.
        metrics: ``{name: float}``: every name the monitors log, with the same values
            (``topo/psf`` and ``topo/h0/...`` of the deepest selected layer, ``topo/psf/layer_{i}``,
            ``geometry/cone/layer_{i}``, ...), plus the per-layer statistics the PSF monitor
            logs for its primary layer only, as ``topo/h0/total_persistence/layer_{i}``,
            ``topo/psf/class_{c}/layer_{i}``.
        diagrams: ``{layer: {class: [H0 (m_0, 2), H1 (m_1, 2)]}}`` raw diagrams (with ``psf``).
        settings: the arguments and data sizes of the measurement (JSON-ready).
    """

    rows: dict[int, dict[str, float]]
    metrics: dict[str, float]
    diagrams: dict[int, dict[int, list[Tensor]]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        """The measured layers, ascending."""
        return sorted(self.rows)

    @property
    def columns(self) -> list[str]:
        """Every score column, in first-seen order."""
        return list(dict.fromkeys(c for layer in self.layers for c in self.rows[layer]))

    def to_records(self) -> list[dict[str, Any]]:
        """``[{"layer": i, column: value, ...}]``, one per layer (NaN where not measured)."""
        return [{"layer": i, **{c: self.rows[i].get(c, math.nan) for c in self.columns}} for i in self.layers]

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` indexed by ``layer``, one column per score.

        Raises:
            ImportError: pandas is not installed (``pip install pandas``).
        """
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError(
                "AnalysisResult.to_pandas needs pandas, which is not installed: pip install pandas "
                "(or use to_records() / to_csv())"
            ) from err
        return pd.DataFrame.from_records(self.to_records()).set_index("layer")

    def to_csv(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``layer,<columns...>``, one row per layer (atomic; refuses an existing file)."""
        return write_text_atomic(path, records_to_csv(self.to_records()), overwrite=overwrite)

    def to_dict(self) -> dict[str, Any]:
        """``{"settings", "metrics", "layers": records}``, JSON-ready (NaN as ``null``)."""
        return {
            "settings": self.settings,
            "metrics": _clean(self.metrics),
            "layers": _clean(self.to_records()),
        }

    def to_json(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write :meth:`to_dict` as JSON (atomic; refuses an existing file)."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n", overwrite=overwrite)

    def plot(
        self, directory: str | Path, *, layer: int | None = None, overwrite: bool = False
    ) -> dict[str, Path]:
        """PNG figures: each score per layer, and per-class diagrams of ``layer`` (default: deepest).

        Returns:
            ``{name: path}``. Every target is checked before the first is written.

        Raises:
            FileExistsError: a figure exists and ``overwrite`` is false.
            ValueError: ``layer`` has no diagrams (not measured, or no ``psf``).
        """
        return plot_results({"": self}, directory, layer=layer, overwrite=overwrite)


def plot_results(
    results: Mapping[str, AnalysisResult],
    directory: str | Path,
    *,
    layer: int | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Figures of one or several results (``{label: result}``, lines overlaid per score).

    Writes ``<column>_per_layer.png`` for the headline columns present (``topo/psf``,
    ``geometry/cone``, ``geometry/attention_entropy``) and ``diagrams[_<label>]_layer_<i>.png``.
    """
    directory = Path(directory)
    targets: dict[str, tuple[Path, Any]] = {}
    for column in ("topo/psf", "geometry/cone", "geometry/attention_entropy"):
        profiles = {
            lab: {i: r.rows[i][column] for i in r.layers if column in r.rows[i]} for lab, r in results.items()
        }
        if any(profiles.values()):
            name = column.replace("/", "_") + "_per_layer"
            targets[name] = (directory / f"{name}.png", (plot_layer_profiles, profiles, column))
    for label, result in results.items():
        measured = sorted(i for i, d in result.diagrams.items() if d)  # NaN layers have none
        if not measured:
            continue
        chosen = measured[-1] if layer is None else layer
        if chosen not in measured:
            raise ValueError(f"layer {chosen} has no persistence diagrams; layers with diagrams: {measured}")
        name = f"diagrams{'_' + label if label else ''}_layer_{chosen}"
        title = f"persistence diagrams{' of ' + label if label else ''}, layer {chosen}"
        targets[name] = (directory / f"{name}.png", (plot_class_diagrams, result.diagrams[chosen], title))
    existing = [str(p) for p, _ in targets.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass overwrite=True to replace it")
    return {name: fn(arg, title, path) for name, (path, (fn, arg, title)) in targets.items()}


def records_to_csv(records: Sequence[Mapping[str, Any]]) -> str:
    """CSV text of records (keys of the first record as header; floats with full precision)."""
    import csv
    import io

    columns = list(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    for r in records:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return buf.getvalue()


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _split_layer_name(name: str) -> tuple[int, str] | None:
    """``"cone/layer_3/input"`` -> ``(3, "cone/input")``; ``None`` for a name without a layer."""
    match = _LAYER_NAME.match(name)
    return None if match is None else (int(match["layer"]), match["head"] + match["tail"])


# ----------------------------------------------------------------------------- score families


@dataclass
class _Settings:
    """The checked arguments of :func:`analyze` shared by every family."""

    preset: PSFPreset
    seed: int
    backend: str
    attention: str
    normalize: bool
    resamples: int = 1


class _PersistenceFamily:
    """PSF and H0/H1 statistics per layer, as :class:`PersistenceScoreMonitor` computes them."""

    prefix = "topo"

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings

    def attach(self, model: nn.Module, layers: Sequence[int]) -> None:
        """Nothing to hook: the hidden states come from the shared pass."""

    def detach(self) -> None:
        """Nothing to remove."""

    def compute(self, model: nn.Module, reps: Any, progress: bool) -> tuple[dict[str, float], dict]:
        """``(metrics, diagrams)``: one :func:`persistence_metrics` call per layer (same seed)."""
        s, values, diagrams = self.settings, {}, {}
        per_layer: dict[int, dict[str, Tensor]] = {}
        for layer in _progress(list(reps.points), progress, "persistence", total=len(reps.points)):
            if _identical_class(reps.points[layer], reps.labels, layer):
                classes = [int(c) for c in torch.unique(reps.labels)]
                names = metric_names([layer], classes, resamples=s.resamples)
                per_layer[layer] = {n: torch.tensor(math.nan) for n in names}
                diagrams[layer] = {}
                continue
            result = persistence_metrics(
                {layer: reps.points[layer]},
                reps.labels,
                preset=s.preset,
                seed=s.seed,
                backend=s.backend,
                resamples=s.resamples,
            )
            per_layer[layer] = result.values
            diagrams[layer] = {c: [d.detach().cpu() for d in dg] for c, dg in result.diagrams.items()}
        deepest = max(per_layer)
        for layer, layer_values in per_layer.items():
            values[f"psf/layer_{layer}"] = float(layer_values["psf"])
            values.update(
                {
                    f"{n}/layer_{layer}": float(v)
                    for n, v in layer_values.items()
                    if _split_layer_name(n) is None
                }
            )
        # the names PersistenceScoreMonitor logs: headline values of the deepest layer
        headline = {n: float(v) for n, v in per_layer[deepest].items()}
        names = metric_names(list(per_layer), list(diagrams[deepest]), resamples=s.resamples)
        values = {**{n: headline.get(n, values.get(n)) for n in names}, **values}
        return {f"{self.prefix}/{n}": v for n, v in values.items()}, diagrams


class _GeometryFamily:
    """Cone index, attention entropy, directionality per encoder layer, as :class:`GeometryMonitor`."""

    prefix = "geometry"

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings
        self.capture: GeometryCapture | None = None
        self.acc: GeometryAccumulator | None = None

    def attach(self, model: nn.Module, layers: Sequence[int]) -> None:
        """Hook the selected encoder layers (1-based; the embeddings, layer 0, have no attention)."""
        encoder = [i for i in layers if i > 0]
        if not encoder:
            raise ValueError(
                "scores: 'geometry' needs at least one encoder layer (1 or more); layers has only 0"
            )
        s = self.settings
        self.capture = GeometryCapture(model, layers=encoder, attention=s.attention, on_layer=self._on_layer)
        heads = [int(self.capture.encoder_layers[i - 1].attention.self.num_attention_heads) for i in encoder]
        self.acc = GeometryAccumulator(
            self.capture.layers, heads, normalize=s.normalize, attention=s.attention != "none"
        )
        self.capture.attach()

    def _on_layer(self, layer: int, cap: Any) -> None:
        if self.acc is not None:
            self.acc.add(layer, cap)

    def detach(self) -> None:
        """Remove the hooks."""
        if self.capture is not None:
            self.capture.detach()

    def compute(self, model: nn.Module, reps: Any, progress: bool) -> tuple[dict[str, float], dict]:
        """``(metrics, {})`` from :func:`geometry_metrics`, names prefixed ``geometry/``."""
        assert self.capture is not None and self.acc is not None
        result = geometry_metrics(self.acc.result(), weight_geometry(model, self.capture.layers))
        return {f"{self.prefix}/{n}": float(v) for n, v in result.values.items()}, {}


_FAMILIES: dict[str, type] = {"psf": _PersistenceFamily, "geometry": _GeometryFamily}


def _identical_class(points: Tensor, labels: Tensor, layer: int) -> bool:
    """Whether some class's points are all identical (e.g. ``[CLS]`` of the embeddings, layer 0).

    PSF is undefined there; the layer is recorded as NaN with a warning naming it.
    """
    for c in torch.unique(labels):
        cloud = points[labels == c]
        if cloud.shape[0] > 0 and bool((cloud == cloud[0]).all()):
            warnings.warn(
                f"layer {layer}: every point of class {int(c)} is the same vector (with pooling='cls' the "
                "embeddings' [CLS] vector does not depend on the input), so PSF and the persistence "
                "statistics are undefined there and recorded as NaN; use pooling='mean' or leave the "
                "layer out",
                stacklevel=4,
            )
            return True
    return False


def _progress(items: Iterable[Any], enabled: bool, desc: str, total: int | None = None) -> Iterable[Any]:
    """``items`` wrapped in a tqdm bar on stderr when ``enabled``."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, leave=False)


def _num_layers(model: nn.Module) -> int:
    """Encoder layers of a Hugging Face model or of a module holding one as ``.model``."""
    hf = model.model if isinstance(getattr(model, "model", None), nn.Module) else model
    n = getattr(getattr(hf, "config", None), "num_hidden_layers", None)
    if not isinstance(n, int) or n < 1:
        raise TypeError(
            "model must be a Hugging Face encoder (a config with num_hidden_layers) or a LightningModule "
            f"holding one as .model; got {type(model).__name__}"
        )
    return n


def _loader_length(dataloader: Iterable[Any], max_batches: int | None) -> int | None:
    try:
        n = len(dataloader)  # type: ignore[arg-type]
    except TypeError:
        return max_batches
    return n if max_batches is None else min(n, max_batches)


# ----------------------------------------------------------------------------- analyze


def analyze(
    model: nn.Module,
    dataloader: Iterable[Mapping[str, Any]],
    *,
    scores: str | Sequence[str] = ("psf",),
    layers: int | Sequence[int] | str = "all",
    pooling: str | None = None,
    preset: str | PSFPreset = "default",
    max_points_per_class: int | None = None,
    max_batches: int | None = None,
    seed: int = 0,
    resamples: int = 5,
    backend: str = "torch",
    attention: str = "auto",
    normalize: bool = True,
    progress: bool = True,
) -> AnalysisResult:
    """Measure score families per layer of ``model`` on ``dataloader``, outside any Trainer.

    Args:
        model: a Hugging Face encoder (``BertForSequenceClassification``, a folder loaded with
            :func:`~lightning_topo.pruning.load_compressed`, ...) or a LightningModule with
            ``encode`` / ``.model`` (our ``SequenceClassifier``). Its train/eval mode is restored.
        dataloader: dict batches with ``input_ids``, ``attention_mask`` and ``labels`` ``(batch,)``.
        scores: families from :data:`SCORE_FAMILIES` (``"psf"``: PSF + H0/H1 statistics;
            ``"geometry"``: the geometry lens), a sequence or a comma-separated string.
        layers: hidden-state indices, ``"all"`` (default: embeddings 0 .. last) or an int;
            negative from the end. Geometry measures the encoder layers among them (>= 1).
        pooling, preset, max_points_per_class, seed, backend: as
            :class:`~lightning_topo.callbacks.PersistenceScoreMonitor` (defaults: the preset's
            ``"cls"`` and 512 per class, seed 0).
        resamples: int >= 1 (default 5, as the monitor): PSF and the H0/H1 statistics are the
            mean over this many seeded re-draws of the per-class sample, with ``.../std``
            columns holding their standard errors (see :func:`~lightning_topo.scores.persistence_metrics`).
        max_batches: read at most this many batches (``None``: all).
        attention, normalize: as :class:`~lightning_topo.callbacks.GeometryMonitor`.
        progress: show a progress bar over batches and layers (tqdm, on stderr).

    Returns:
        :class:`AnalysisResult`.

    Raises:
        TypeError / ValueError: a bad argument (an unknown score family, a layer out of range for
            the model, ...) -- before any batch is read; NaN/inf hidden states (names the layer).
    """
    families = check_score_families(scores)
    settings = _Settings(
        preset=get_preset(preset).override(
            pooling=None if pooling is None else check_choice(pooling, "pooling", POOLINGS),
            max_points_per_class=max_points_per_class,
        ),
        seed=check_seed(seed),
        backend=check_choice(backend, "backend", BACKENDS),
        attention=check_choice(attention, "attention", ATTENTION_SOURCES),
        normalize=check_bool(normalize, "normalize"),
        resamples=check_resamples(resamples),
    )
    max_batches = check_int(max_batches, "max_batches", minimum=1, allow_none=True)
    progress = check_bool(progress, "progress")
    selected = resolve_layers(layers, _num_layers(model))
    lenses = [_FAMILIES[f](settings) for f in families]
    reps = _one_pass(model, dataloader, lenses, selected, settings, max_batches, progress)
    metrics: dict[str, float] = {}
    diagrams: dict[int, dict[int, list[Tensor]]] = {}
    for lens in lenses:
        values, dgms = lens.compute(model, reps, progress)
        metrics.update(values)
        diagrams.update(dgms)
    described = {
        "scores": list(families),
        "layers": selected,
        "num_layers": reps.num_layers,
        "preset": preset if isinstance(preset, str) else "custom",
        "max_batches": max_batches,
    }
    return _assemble(metrics, diagrams, selected, settings, described, reps.class_counts())


def _assemble(
    metrics: dict[str, float],
    diagrams: dict[int, dict[int, list[Tensor]]],
    layers: list[int],
    settings: _Settings,
    described: dict[str, Any],
    counts: dict[int, int],
) -> AnalysisResult:
    """The per-layer table from the flat metric names (``.../layer_{i}...`` -> row ``i``)."""
    rows: dict[int, dict[str, float]] = {i: {} for i in layers}
    for name, value in metrics.items():
        split = _split_layer_name(name)
        if split is not None and split[0] in rows:
            rows[split[0]][split[1]] = value
    preset = settings.preset
    return AnalysisResult(
        rows=rows,
        metrics=metrics,
        diagrams=diagrams,
        settings={
            **described,
            "pooling": preset.pooling,
            "sampling": preset.sampling,
            "max_points_per_class": preset.max_points_per_class,
            "seed": settings.seed,
            "resamples": settings.resamples,
            "backend": settings.backend,
            "points_per_class": {str(c): n for c, n in counts.items()},
        },
    )


def _one_pass(
    model: nn.Module,
    dataloader: Iterable[Mapping[str, Any]],
    lenses: Sequence[Any],
    layers: list[int],
    settings: _Settings,
    max_batches: int | None,
    progress: bool,
) -> Any:
    """Read the data once with every lens's hooks attached; pooled, sampled hidden states."""
    preset = settings.preset
    # with re-draws, persistence_metrics draws the per-class samples from every example (as the monitor)
    random_once = preset.sampling == "random" and settings.resamples == 1
    cap = preset.max_points_per_class if random_once else None
    attached = []
    try:
        for lens in lenses:
            lens.attach(model, layers)
            attached.append(lens)
        batches = _progress(dataloader, progress, "batches", total=_loader_length(dataloader, max_batches))
        reps = collect_representations(
            model,
            batches,
            layers=layers,
            pooling=preset.pooling,
            max_points_per_class=cap,
            max_batches=max_batches,
            seed=settings.seed,
            check_finite=True,
        )
    finally:
        for lens in attached:
            lens.detach()
    return reps
