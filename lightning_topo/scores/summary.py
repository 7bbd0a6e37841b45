"""Everything a persistence lens logs, from one diagram pass per layer: PSF, H0/H1 statistics.

:func:`persistence_summary` measures one labelled cloud; :func:`persistence_metrics` measures
the clouds of several layers (sharing their labels) and returns flat, prefix-free metric names
(``"psf"``, ``"psf/layer_2"``, ``"psf/class_0"``, ``"h0/total_persistence"``, ...) with 0-d
tensors (with ``resamples > 1``: means over seeded re-draws of the per-class sample, plus the
standard errors ``"psf/std"``, ``"h0/total_persistence/std"``, ...), which is what :class:`~lightning_topo.callbacks.PersistenceScoreMonitor` logs after
adding its ``log_prefix``. :func:`metric_names` lists the same names without computing
anything (the monitor logs them as NaN when the hidden states are not finite).
"""

from __future__ import annotations

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
from lightning_topo.scores.sampling import check_resamples
from lightning_topo.topology import persistence_entropy, total_persistence

__all__ = [
    "SCORES",
    "PersistenceMetrics",
    "PersistenceSummary",
    "check_homology_dims",
    "check_scores",
    "metric_names",
    "persistence_metrics",
    "persistence_summary",
]

#: Score families :func:`persistence_metrics` can return.
SCORES: tuple[str, ...] = ("psf", "total_persistence", "entropy")


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
    ``h{k}/total_persistence``, ``h{k}/entropy``) is followed by ``s/std``, its standard error.
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
    """

    values: dict[str, Tensor]
    layer: int
    diagrams: dict[int, list[Tensor]]
    num_points: dict[int, int]


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
            (re-drawing changes nothing): if no class exceeds it, everything is computed once
            and every standard error is 0.

    Returns:
        :class:`PersistenceMetrics`; ``values`` has exactly the keys of :func:`metric_names`
        (with the same ``resamples``); ``diagrams`` and ``num_points`` are draw 0's.

    Raises:
        ValueError: no layers, or any error of :func:`~lightning_topo.scores.psf`.
    """
    scores = check_scores(scores)
    dims = check_homology_dims(homology_dims)
    resamples = check_resamples(resamples)
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
    return PersistenceMetrics(
        values={n: values[n] for n in names},
        layer=max(points),
        diagrams=main.diagrams,
        num_points=main.num_points,
    )
