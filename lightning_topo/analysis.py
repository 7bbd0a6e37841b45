"""``analyze``: every score a monitor logs, for a model outside any Trainer, one row per layer.

:func:`analyze` reads a dataloader once (eval mode, no gradients) and feeds the lens metrics of
:mod:`lightning_topo.metrics` -- the objects the monitors drive -- from their forward hooks
(:class:`~lightning_topo.representations.capture.HiddenStateCapture`, the geometry lens's own
capture), then computes them. Nothing is computed a second way, so ``analyze`` at the weights
and data of a validation run gives the numbers the monitors logged. A lens is named from
:data:`SCORE_FAMILIES` or passed as a metric object.

Example::

    from lightning_topo import analyze
    result = analyze(hf_model, val_loader, scores=("psf", "geometry"), layers="all")
    result.metrics["topo/psf"]        # what PersistenceScoreMonitor logs as topo/psf
    result.to_csv("layers.csv")       # one row per layer, one column per score
    result.plot("figures/")           # PSF per layer, per-class diagrams of the deepest layer
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lightning_topo.data.files import write_text_atomic
from lightning_topo.encoding import max_sequence_length, model_inputs, module_device
from lightning_topo.metrics import LENSES, LensMetric, LensResult
from lightning_topo.plots import plot_class_diagrams
from lightning_topo.plots.analysis import plot_layer_profiles
from lightning_topo.representations import resolve_layers
from lightning_topo.representations.capture import HiddenStateCapture, batch_labels, num_hidden_layers
from lightning_topo.representations.geometry import ATTENTION_SOURCES
from lightning_topo.representations.modules import find_hf_model
from lightning_topo.scores.checks import check_bool, check_choice, check_int, check_seed
from lightning_topo.scores.names import parse_metric_name
from lightning_topo.scores.presets import POOLINGS, PSFPreset

__all__ = ["SCORE_FAMILIES", "AnalysisResult", "analyze", "check_score_families", "write_text_atomic"]

#: Lenses :func:`analyze` can measure by name (each the lens of one monitor).
SCORE_FAMILIES: tuple[str, ...] = tuple(LENSES)


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
    """``"geometry/cone/layer_3/input"`` -> ``(3, "geometry/cone/input")``; ``None`` without a layer."""
    parsed = parse_metric_name(name)
    return None if parsed is None or parsed.layer is None else (parsed.layer, str(parsed.series))


# ----------------------------------------------------------------------------- lenses


def _lens_classes() -> dict[str, type[LensMetric]]:
    """Lens name -> metric class, for every lens :mod:`lightning_topo.metrics` provides."""
    return {name: cls for name, cls in LENSES.items()}


def check_score_families(scores: str | Sequence[str | LensMetric]) -> tuple[str | LensMetric, ...]:
    """Lens names from :data:`SCORE_FAMILIES` (a string is one, or comma-separated) or lens metric objects."""
    items = [s.strip() for s in scores.split(",")] if isinstance(scores, str) else list(scores)
    bad = [s for s in items if not isinstance(s, LensMetric) and s not in _lens_classes()]
    if not items or bad:
        raise ValueError(
            f"scores: unknown lens {bad[0] if bad else scores!r}; accepted: {', '.join(_lens_classes())} "
            "or lightning_topo.metrics objects"
        )
    return tuple(dict.fromkeys(items))


def _build(
    family: str | LensMetric, selected: list[int], num_layers: int, options: dict[str, Any]
) -> list[LensMetric]:
    """The lens metrics of one family: PSF one per layer (per-layer H0/H1 statistics), others one."""
    if isinstance(family, LensMetric):
        return [family]
    cls = _lens_classes()[family]
    own = {k: v for k, v in options.items() if k in inspect.signature(cls.__init__).parameters and v is not None}
    if family == "psf":
        return [cls(layers=[i], **own) for i in selected]
    if family == "geometry":
        encoder = [i for i in selected if i > 0]
        if not encoder:
            raise ValueError("scores: 'geometry' needs at least one encoder layer (1 or more); layers has only 0")
        return [cls(layers=encoder, **own)]
    return [cls(layers=selected, **own)]


def _hidden_capture_shared(metric: LensMetric) -> bool:
    return type(metric).make_capture is LensMetric.make_capture


def _read(
    hf: nn.Module,
    dataloader: Iterable[Any],
    metrics: Sequence[LensMetric],
    *,
    max_samples: int | None,
    labels_fn: Any,
    progress: bool,
) -> int:
    """One pass over the data: every lens's capture attached, the encoder run once per batch."""
    shared = [m for m in metrics if _hidden_capture_shared(m)]
    own = [(m, m.make_capture(hf)) for m in metrics if not _hidden_capture_shared(m)]
    keep = sorted({i for m in shared for i in m.selected_layers})
    hidden = HiddenStateCapture(hf, keep=keep) if shared else None
    captures = [c for _, c in own] + ([hidden] if hidden is not None else [])
    needs_labels = any(m.needs_labels for m in metrics)
    device = module_device(hf)
    longest = max_sequence_length(getattr(hf, "config", None))
    seen = 0
    for capture in captures:
        capture.attach()
    try:
        total = _loader_length(dataloader)
        for batch in _progress(dataloader, progress, "batches", total=total):
            labels = batch_labels(batch, labels_fn)
            if labels is None and needs_labels:
                raise ValueError(
                    "analyze needs the class label of every example: the batches have no 'labels' or 'label' "
                    "key; add one, or pass labels_fn=lambda batch: <(batch,) int tensor>"
                )
            inputs = model_inputs(batch)
            if longest is not None and inputs["input_ids"].shape[-1] > longest:
                raise ValueError(
                    f"analyze: a batch has sequences of {inputs['input_ids'].shape[-1]} tokens but the model "
                    f"accepts at most {longest} (its position embeddings); tokenize with max_length <= {longest}"
                )
            for capture in captures:
                capture.pop()
            hf(**{k: v.to(device) for k, v in inputs.items()})
            if hidden is not None:
                call = hidden.pop()[-1]
                for m in shared:
                    m.update_from(call, labels)
            for m, capture in own:
                m.update_from(capture.pop()[-1], labels)
            seen += int(inputs["input_ids"].shape[0])
            if max_samples is not None and seen >= max_samples:
                break
    finally:
        for capture in captures:
            capture.detach()
    return seen


def _loader_length(dataloader: Iterable[Any]) -> int | None:
    try:
        return len(dataloader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _progress(items: Iterable[Any], enabled: bool, desc: str, total: int | None = None) -> Iterable[Any]:
    """``items`` wrapped in a tqdm bar on stderr when ``enabled``."""
    return tqdm(items, desc=desc, total=total, leave=False) if enabled else items


def _persistence_metrics(results: dict[int, LensResult]) -> tuple[dict[str, float], dict]:
    """The PSF monitor's names from one result per layer: headline values of the deepest layer,
    ``psf/layer_{i}`` for every layer and every other statistic also as ``.../layer_{i}``."""
    deepest = max(results)
    prefix = results[deepest].prefix
    out: dict[str, float] = {}
    for name, value in results[deepest].values.items():
        out[f"{prefix}/{name}"] = float(value)
    diagrams: dict[int, dict] = {}
    for layer, res in sorted(results.items()):
        diagrams[layer] = res.extras.get("diagrams", {})
        for name, value in res.values.items():
            parsed = parse_metric_name(f"{prefix}/{name}")
            if parsed is not None and parsed.layer is None:
                out[str(replace(parsed, layer=layer))] = float(value)
    return out, diagrams


# ----------------------------------------------------------------------------- analyze


def analyze(
    model: nn.Module,
    dataloader: Iterable[Any],
    *,
    scores: str | Sequence[str | LensMetric] = ("psf",),
    layers: int | Sequence[int] | str = "all",
    pooling: str | None = None,
    preset: str | PSFPreset = "default",
    max_points_per_class: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    resamples: int = 5,
    backend: str = "torch",
    attention: str = "auto",
    normalize: bool = True,
    model_attr: str | None = None,
    labels_fn: Any = None,
    tokenizer: Any = None,
    progress: bool = True,
) -> AnalysisResult:
    """Measure lenses per layer of ``model`` on ``dataloader``, outside any Trainer.

    The lenses are the :mod:`lightning_topo.metrics` objects the monitors drive: each is fed
    by its forward hooks while the encoder runs once per batch (eval mode, no gradients), then
    computed. So ``analyze`` at the weights and data of a validation run gives the numbers the
    monitors logged.

    Args:
        model: a Hugging Face encoder (``BertForSequenceClassification``, ``DistilBertModel``, a
            folder loaded with :func:`~lightning_topo.pruning.load_compressed`, ...) or any
            LightningModule holding one (found at any attribute; ``model_attr`` when several).
            Its train/eval mode is restored.
        dataloader: tokenised batches (``input_ids``, ``attention_mask``, optional
            ``token_type_ids`` -- sentence pairs are read whole --, ``labels``/``label``).
        scores: lens names from :data:`SCORE_FAMILIES` (``"psf"``, ``"geometry"``, ...), a
            comma-separated string, or lens metric objects (used as they are).
        layers: hidden-state indices, ``"all"`` (default: embeddings 0 .. last) or an int;
            negative from the end. Geometry measures the encoder layers among them (>= 1).
        pooling, preset, max_points_per_class, resamples, backend: PSF's, as
            :class:`~lightning_topo.metrics.PersistenceScore`.
        attention, normalize: the geometry lens's.
        max_samples: read at most this many examples (``None``: all); the monitors' name.
        seed: every lens's seed (default 0).
        labels_fn: ``labels_fn(batch) -> (batch,)`` labels for batches without ``labels``/``label``.
        tokenizer: for the lenses that read words (concepts, tree probe); ``None``: the model's.
        progress: show a progress bar over batches (tqdm, on stderr).

    Returns:
        :class:`AnalysisResult`.

    Raises:
        TypeError / ValueError: a bad argument (an unknown lens, a layer out of range for the
            model, ...) -- before any batch is read.
    """
    families = check_score_families(scores)
    progress = check_bool(progress, "progress")
    max_samples = check_int(max_samples, "max_samples", minimum=1, allow_none=True)
    seed = check_seed(seed)
    check_choice(attention, "attention", ATTENTION_SOURCES)  # checked even when geometry is not asked for
    check_bool(normalize, "normalize")
    hf = model if _is_encoder(model) else find_hf_model(model, model_attr)[1]
    num_layers = num_hidden_layers(hf)
    selected = resolve_layers(layers, num_layers)
    options = {
        "pooling": None if pooling is None else check_choice(pooling, "pooling", POOLINGS),
        "preset": preset,
        "max_points_per_class": max_points_per_class,
        "resamples": resamples,
        "backend": backend,
        "attention": attention,
        "normalize": normalize,
        "tokenizer": tokenizer,
        "max_samples": max_samples,
        "seed": seed,
    }
    lenses = {f if isinstance(f, str) else type(f).__name__: _build(f, selected, num_layers, options) for f in families}
    every = [m for ms in lenses.values() for m in ms]
    for m in every:
        m.check_model(hf)
    was_training = hf.training
    hf.eval()
    try:
        with torch.no_grad():
            n = _read(hf, dataloader, every, max_samples=max_samples, labels_fn=labels_fn, progress=progress)
    finally:
        hf.train(was_training)
    metrics: dict[str, float] = {}
    diagrams: dict[int, dict[int, list[Tensor]]] = {}
    counts: dict[int, int] = {}
    for family, ms in lenses.items():
        results = {m.selected_layers[-1]: _compute(m) for m in ms}
        if family == "psf":
            values, dgms = _persistence_metrics(results)
            diagrams.update(dgms)
            counts = ms[-1].representations().class_counts()
        else:
            values = {k: v for r in results.values() for k, v in r.metrics().items()}
        metrics.update(values)
    described = {
        "scores": [f if isinstance(f, str) else type(f).__name__ for f in families],
        "layers": selected,
        "num_layers": num_layers,
        "preset": preset if isinstance(preset, str) else "custom",
        "max_samples": max_samples,
        "examples": n,
    }
    return _assemble(metrics, diagrams, selected, described, lenses, counts)


def _is_encoder(model: nn.Module) -> bool:
    """A Hugging Face model itself (a config and a base model), not a module holding one."""
    return getattr(model, "config", None) is not None and isinstance(getattr(model, "base_model", None), nn.Module)


def _compute(metric: LensMetric) -> LensResult:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*compute.*called before.*update.*")
        return metric.compute()


def _assemble(
    metrics: dict[str, float],
    diagrams: dict[int, dict[int, list[Tensor]]],
    layers: list[int],
    described: dict[str, Any],
    lenses: Mapping[str, Sequence[LensMetric]],
    counts: dict[int, int],
) -> AnalysisResult:
    """The per-layer table from the flat metric names (``.../layer_{i}...`` -> row ``i``)."""
    rows: dict[int, dict[str, float]] = {i: {} for i in layers}
    for name, value in metrics.items():
        split = _split_layer_name(name)
        if split is not None and split[0] in rows:
            rows[split[0]][split[1]] = value
    settings = dict(described)
    psf = lenses.get("psf")
    if psf:
        p = psf[-1]
        settings.update(
            pooling=p.pooling,
            sampling=p.preset.sampling,
            max_points_per_class=p.preset.max_points_per_class,
            seed=p.seed,
            resamples=p.resamples,
            backend=p.backend,
        )
    settings["points_per_class"] = {str(c): n for c, n in counts.items()}
    return AnalysisResult(rows=rows, metrics=metrics, diagrams=diagrams, settings=settings)
