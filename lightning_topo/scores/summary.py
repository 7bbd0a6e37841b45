"""Everything a persistence lens logs, from one diagram pass per layer: PSF, H0/H1 statistics.

:func:`persistence_summary` measures one labelled cloud; :func:`persistence_metrics` measures
the clouds of several layers (sharing their labels) and returns flat, prefix-free metric names
(``"psf"``, ``"psf/layer_2"``, ``"psf/class_0"``, ``"h0/total_persistence"``, ...) with 0-d
tensors (with ``resamples > 1``: means over seeded re-draws of the per-class sample, plus the
standard errors ``"psf/std"``, ``"h0/total_persistence/std"``, ...), which is what :class:`~lightning_topo.callbacks.PersistenceScoreMonitor` logs after
adding its ``log_prefix``.

The standard errors are over the *examples* (:func:`examples_stderr`: half-sampling, each class
split into two random disjoint halves ``std_splits`` times), combined in quadrature with the
spread of the re-draws; ``docs/psf.md`` ("How uncertain is PSF?") explains the estimator and
checks it against disjoint splits of the embedded data. :func:`metric_names` lists the same names without computing
anything (the monitor logs them as NaN when the hidden states are not finite).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral

import torch
from torch import Tensor

from lightning_topo.scores.presets import PSFPreset, get_preset
from lightning_topo.scores.psf import (
    class_diagrams,
    mean_and_stderr,
    prepare_classes,
    psf_from_diagrams,
    resample_seeds,
)
from lightning_topo.scores.sampling import check_resamples, check_std_splits, half_sample_pairs
from lightning_topo.topology import persistence_entropy, total_persistence

__all__ = [
    "SCORES",
    "PersistenceMetrics",
    "PersistenceSummary",
    "check_homology_dims",
    "check_scores",
    "examples_stderr",
    "metric_names",
    "persistence_metrics",
    "persistence_summary",
]

#: Score families :func:`persistence_metrics` can return.
SCORES: tuple[str, ...] = ("psf", "total_persistence", "entropy")

#: Default number of random splits into halves behind each standard error over examples: the
#: standard error of a standard error from ``K`` splits of ``C`` classes is about
#: ``1 / sqrt(2 K C)`` of it (16 % for 2 classes), at ``2 K`` diagram passes on half-size clouds
#: (``benchmarks/psf_uncertainty.py`` measures cost and accuracy).
STD_SPLITS = 10


def check_scores(scores: str | Sequence[str], name: str = "scores") -> tuple[str, ...]:
    """A non-empty subset of :data:`SCORES` (a single string is one score), in the given order."""
    items = (scores,) if isinstance(scores, str) else tuple(scores)
    if not items or any(s not in SCORES for s in items):
        raise ValueError(f"{name} must be a non-empty subset of {SCORES}; got {scores!r}")
    return tuple(dict.fromkeys(items))


def check_homology_dims(dims: Sequence[int], name: str = "homology_dims") -> tuple[int, ...]:
    """A non-empty subset of ``(0, 1)`` as a sorted tuple (floats and bools are refused)."""
    items = tuple(dims) if isinstance(dims, Sequence) and not isinstance(dims, str) else (dims,)
    if not items or any(isinstance(d, bool) or not isinstance(d, Integral) or d not in (0, 1) for d in items):
        raise ValueError(f"{name} must be a non-empty subset of (0, 1) (ints); got {dims!r}")
    return tuple(sorted({int(d) for d in items}))


@dataclass
class PersistenceSummary:
    """Everything measured on one labelled cloud, from one set of diagrams.

    Attributes:
        psf: 0-d tensor, mean of ``psf_per_class``.
        psf_per_class: ``{class: 0-d tensor}``.
        total_persistence: ``{dim: 0-d tensor}``, mean over classes of ``Σ (d − b)`` of the raw
            (unnormalised) class diagrams.
        entropy: ``{dim: 0-d tensor}``, mean over classes of the persistence entropy.
        diagrams: ``{class: [H0 (m_0, 2), H1 (m_1, 2)]}`` raw diagrams.
        num_points: ``{class: points used}``.
    """

    psf: Tensor
    psf_per_class: dict[int, Tensor]
    total_persistence: dict[int, Tensor] = field(default_factory=dict)
    entropy: dict[int, Tensor] = field(default_factory=dict)
    diagrams: dict[int, list[Tensor]] = field(default_factory=dict)
    num_points: dict[int, int] = field(default_factory=dict)


def persistence_summary(
    points: Tensor,
    labels: Tensor,
    *,
    homology_dims: Sequence[int] = (0, 1),
    preset: str | PSFPreset | None = "default",
    sampling: str | None = None,
    max_points_per_class: int | None = None,
    bandwidth: float | None = None,
    seed: int = 0,
    backend: str = "torch",
) -> PersistenceSummary:
    """PSF, per-class PSF and per-dimension total persistence / entropy from one diagram pass.

    Args:
        points: ``(n, d)`` float cloud; labels: ``(n,)`` integer labels (as :func:`psf`).
        homology_dims: subset of ``(0, 1)``: the dimensions whose total persistence (``p = 1``)
            and persistence entropy are averaged over classes.
        preset, sampling, max_points_per_class, bandwidth, seed, backend: as :func:`psf`.

    Returns:
        :class:`PersistenceSummary`; every tensor is differentiable w.r.t. ``points``.
    """
    dims = check_homology_dims(homology_dims)
    points, labels = prepare_classes(
        points,
        labels,
        preset=preset,
        sampling=sampling,
        max_points_per_class=max_points_per_class,
        bandwidth=bandwidth,
        seed=seed,
    )
    diagrams = class_diagrams(points, labels, max_dim=1, backend=backend)
    per_class = {c: psf_from_diagrams(d) for c, d in diagrams.items()}
    return PersistenceSummary(
        psf=torch.stack(list(per_class.values())).mean(),
        psf_per_class=per_class,
        total_persistence={
            k: torch.stack([total_persistence(d[k]) for d in diagrams.values()]).mean() for k in dims
        },
        entropy={k: torch.stack([persistence_entropy(d[k]) for d in diagrams.values()]).mean() for k in dims},
        diagrams=diagrams,
        num_points={int(c): int((labels == c).sum()) for c in diagrams},
    )


def _class_values(summary: PersistenceSummary, dims: tuple[int, ...]) -> dict[str, dict[int, Tensor]]:
    """Per-class values of the headline scores: ``{"psf" | "h{k}/...": {class: 0-d tensor}}``."""
    out: dict[str, dict[int, Tensor]] = {"psf": dict(summary.psf_per_class)}
    for k in dims:
        out[f"h{k}/total_persistence"] = {c: total_persistence(d[k]) for c, d in summary.diagrams.items()}
        out[f"h{k}/entropy"] = {c: persistence_entropy(d[k]) for c, d in summary.diagrams.items()}
    return out


def examples_stderr(
    points: Tensor,
    labels: Tensor,
    *,
    homology_dims: Sequence[int] = (0, 1),
    preset: str | PSFPreset | None = "default",
    seed: int = 0,
    backend: str = "torch",
    splits: int = STD_SPLITS,
) -> dict[str, Tensor]:
    r"""Standard errors over the examples of PSF and of the H0/H1 statistics of one labelled cloud.

    **Half-sampling** (a delete-d jackknife with ``d = n/2``; Shao & Wu 1989, Politis & Romano
    1994). For ``j = 1..splits`` every class ``c`` (``n_c`` points) is split at random into two
    disjoint subsets ``A_c, B_c`` of ``m_c = min(n_c // 2, cap)`` points (``cap`` = the preset's
    ``max_points_per_class`` for random sampling), the score is computed on the two subsets
    (with the preset's sampling), and the per-class differences give

    ``v_c = (m_c / n_c) * mean_j (s_c(A_j) - s_c(B_j))^2 / 2``,   ``SE = sqrt(sum_c v_c) / C``

    (``C`` classes; the class scores enter PSF and the H_k statistics as a mean over classes).
    For a mean, ``E[(s(A) - s(B))^2] / 2 = S^2 / m`` for any two disjoint random subsets of
    size ``m``, so ``v_c`` is exactly the squared standard error ``S^2 / n_c`` of the mean over
    all ``n_c`` points; for PSF it is the same to first order. Why not the bootstrap with
    replacement: a resample holds about 63 % distinct points, the duplicates are zero-length
    H0 bars that PSF drops (they would shrink ``|P_c|``), so a bootstrap replicate is PSF of a
    smaller cloud, and PSF depends on the number of points; half-samples are clouds without
    duplicates, and the difference of two of the same size cancels that dependence.

    Args:
        points: ``(n, d)`` float cloud; labels: ``(n,)`` integer labels (as :func:`psf`).
        homology_dims: subset of ``(0, 1)`` for the H_k statistics.
        preset, seed, backend: as :func:`persistence_summary` (``seed`` seeds the splits).
        splits: number of random splits, an int >= 1 (default :data:`STD_SPLITS`).

    Returns:
        ``{"psf" | "h{k}/total_persistence" | "h{k}/entropy": 0-d tensor}``, detached, >= 0.
        A class with fewer than 4 points is used whole in both halves and contributes 0
        (a 2-point class has PSF exactly 0.25 whatever the points); a class of 4-5 points gives
        halves of 2 points, which add nothing to the PSF term. So ``psf`` is > 0 as soon as one
        class has at least 6 points in general position.
    """
    dims = check_homology_dims(homology_dims)
    settings = get_preset(preset)
    splits = check_std_splits(splits, "splits")
    if splits < 1:
        raise ValueError(f"splits must be an int >= 1; got {splits}")
    cap = settings.max_points_per_class if settings.sampling == "random" else None
    pairs, sizes = half_sample_pairs(labels, points, cap, seed, splits)
    names = ["psf", *(f"h{k}/{s}" for k in dims for s in ("total_persistence", "entropy"))]
    sq: dict[str, dict[int, float]] = {n: dict.fromkeys(sizes, 0.0) for n in names}
    with torch.no_grad():
        for j, (rows_a, rows_b) in enumerate(pairs):
            values = []
            for rows in (rows_a, rows_b):
                rows = rows.to(points.device)
                summary = persistence_summary(
                    points[rows], labels[rows.to(labels.device)], homology_dims=dims, preset=settings,
                    seed=seed + j, backend=backend,
                )  # fmt: skip
                values.append(_class_values(summary, dims))
            for n in names:
                for c in sizes:
                    sq[n][c] += float(values[0][n][c] - values[1][n][c]) ** 2
    out: dict[str, Tensor] = {}
    for n in names:
        var = sum((m / n_c) * sq[n][c] / (2 * splits) for c, (m, n_c) in sizes.items())
        out[n] = torch.tensor(math.sqrt(var) / len(sizes), dtype=points.dtype)
    return out


def metric_names(
    layers: Sequence[int],
    classes: Sequence[int],
    *,
    scores: Sequence[str] = SCORES,
    homology_dims: Sequence[int] = (0, 1),
    resamples: int = 1,
) -> list[str]:
    """The names :func:`persistence_metrics` returns for these layers and classes, in its order.

    ``psf`` is the PSF of the primary (deepest, ``max(layers)``) layer; ``psf/layer_{i}`` one
    per layer; ``psf/class_{c}`` and ``h{k}/...`` belong to the primary layer. With
    ``resamples > 1`` each primary-layer headline score ``s`` (``psf``,
    ``h{k}/total_persistence``, ``h{k}/entropy``) is followed by ``s/std``, its standard error
    (see :func:`persistence_metrics`).
    """
    std = check_resamples(resamples) > 1
    names: list[str] = []
    if "psf" in scores:
        names += ["psf", *(["psf/std"] if std else [])]
        names += [*(f"psf/layer_{i}" for i in layers), *(f"psf/class_{c}" for c in classes)]
    for k in homology_dims:
        for s in ("total_persistence", "entropy"):
            if s in scores:
                names += [f"h{k}/{s}", *([f"h{k}/{s}/std"] if std else [])]
    return names


@dataclass
class PersistenceMetrics:
    """Result of :func:`persistence_metrics`.

    Attributes:
        values: ``{name: 0-d tensor}``, names as :func:`metric_names` (no prefix).
        layer: the primary layer (the deepest of those measured).
        diagrams: ``{class: [H0, H1]}`` raw diagrams of the primary layer, ``(m, 2)`` each.
        num_points: ``{class: points used}`` in the primary layer.
        examples_std: ``{headline name: 0-d tensor}``, the standard errors over the examples
            (:func:`examples_stderr`; empty without ``/std`` names or with ``std_splits=0``).
        redraw_std: ``{headline name: 0-d tensor}``, the standard errors of the mean over the
            ``resamples`` re-draws of the per-class sample (0 when no class exceeds the cap;
            empty with ``resamples=1``). ``values["<name>/std"]`` is
            ``sqrt(examples_std**2 + redraw_std**2)``.
    """

    values: dict[str, Tensor]
    layer: int
    diagrams: dict[int, list[Tensor]]
    num_points: dict[int, int]
    examples_std: dict[str, Tensor] = field(default_factory=dict)
    redraw_std: dict[str, Tensor] = field(default_factory=dict)


def _one_draw(
    points: Mapping[int, Tensor],
    labels: Tensor,
    dims: tuple[int, ...],
    preset: str | PSFPreset | None,
    seed: int,
    backend: str,
) -> tuple[dict[str, Tensor], PersistenceSummary]:
    """Every value of one draw of the per-class sample (same seed for every layer)."""
    primary = max(points)
    values: dict[str, Tensor] = {}
    main: PersistenceSummary | None = None
    for layer, cloud in points.items():
        summary = persistence_summary(
            cloud, labels, homology_dims=dims, preset=preset, seed=seed, backend=backend
        )
        values[f"psf/layer_{layer}"] = summary.psf
        if layer == primary:
            main = summary
    assert main is not None
    values["psf"] = main.psf
    values.update({f"psf/class_{c}": v for c, v in main.psf_per_class.items()})
    for k in dims:
        values[f"h{k}/total_persistence"] = main.total_persistence[k]
        values[f"h{k}/entropy"] = main.entropy[k]
    return values, main


def persistence_metrics(
    points: Mapping[int, Tensor],
    labels: Tensor,
    *,
    scores: Sequence[str] = SCORES,
    homology_dims: Sequence[int] = (0, 1),
    preset: str | PSFPreset | None = "default",
    seed: int = 0,
    backend: str = "torch",
    resamples: int = 1,
    std_splits: int = STD_SPLITS,
) -> PersistenceMetrics:
    """Every metric of a persistence lens for the clouds of several layers.

    Args:
        points: ``{layer: (n, d) tensor}``, all rows aligned with ``labels``.
        labels: ``(n,)`` integer labels, >= 2 classes.
        scores: subset of :data:`SCORES` to return.
        homology_dims: subset of ``(0, 1)`` for ``total_persistence`` / ``entropy``.
        preset, seed, backend: as :func:`~lightning_topo.scores.psf` (sampling per class is
            the preset's; the same seed is used for every layer).
        resamples: int >= 1 (default 1): every value is the mean over this many seeded
            re-draws of the per-class sample (draw 0 uses ``seed``, so ``resamples=1`` is
            the single draw), and the ``.../std`` names hold the standard errors of the
            primary-layer headline scores. Classes at or below the cap are used whole
            (re-drawing changes nothing): if no class exceeds it, everything is computed once.
        std_splits: int >= 0 (default :data:`STD_SPLITS`): with ``resamples > 1``, each
            ``.../std`` is the standard error over the *examples* (:func:`examples_stderr`,
            half-sampling with this many random splits of every class of the primary layer)
            combined in quadrature with the standard error of the re-draws, so it is > 0 for
            any cloud with a class of at least 6 points. ``0``: the re-draw part only (what
            was logged before; 0 whenever no class exceeds the cap). Costs ``2 * std_splits``
            diagram passes on clouds of half the size per measurement.

    Returns:
        :class:`PersistenceMetrics`; ``values`` has exactly the keys of :func:`metric_names`
        (with the same ``resamples``); ``diagrams`` and ``num_points`` are draw 0's.

    Raises:
        ValueError: no layers, or any error of :func:`~lightning_topo.scores.psf`.
    """
    scores = check_scores(scores)
    dims = check_homology_dims(homology_dims)
    resamples = check_resamples(resamples)
    std_splits = check_std_splits(std_splits)
    if not points:
        raise ValueError("points must hold at least one layer: {layer: (n, d) tensor}")
    seeds = [seed]
    if resamples > 1 and isinstance(labels, Tensor):
        seeds = resample_seeds(labels, get_preset(preset), seed, resamples)
    draws = [_one_draw(points, labels, dims, preset, s, backend) for s in seeds]
    main = draws[0][1]
    names = metric_names(
        list(points), list(main.psf_per_class), scores=scores, homology_dims=dims, resamples=resamples
    )
    values: dict[str, Tensor] = {}
    for name in draws[0][0]:
        values[name], values[f"{name}/std"] = mean_and_stderr([d[0][name] for d in draws])
    headline = [n[: -len("/std")] for n in names if n.endswith("/std")]
    redraw = {n: values[f"{n}/std"] for n in headline}
    examples: dict[str, Tensor] = {}
    if headline and std_splits > 0:
        primary = max(points)
        examples = examples_stderr(
            points[primary], labels, homology_dims=dims, preset=preset, seed=seed, backend=backend,
            splits=std_splits,
        )  # fmt: skip
        for n in headline:
            values[f"{n}/std"] = torch.hypot(examples[n].to(redraw[n]), redraw[n])
    return PersistenceMetrics(
        values={n: values[n] for n in names},
        layer=max(points),
        diagrams=main.diagrams,
        num_points=main.num_points,
        examples_std={n: examples[n] for n in headline if n in examples},
        redraw_std=redraw,
    )
