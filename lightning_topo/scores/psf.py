"""PSF, the persistence scoring function of BERTops (Chauhan et al. 2022), differentiable.

For every class ``c`` (methods.md §2, from the authors' public code):

1. ``P_c`` = finite H0 pairs ∪ finite H1 pairs of the Vietoris–Rips filtration of the class's
   points (Euclidean).
2. Every birth and death in ``P_c`` is divided by the largest coordinate in ``P_c`` (a max over
   gathered distances, so it stays differentiable).
3. ``S(p, q) = Σ_{(b, d) ∈ P_c} |d − b|^p · |(d + b) / 2|^q``.
4. ``psf_c = ((S(3, 2) + S(2, 2)) / 2) / |P_c|``.

``PSF`` is the mean of ``psf_c`` over the classes. Because of the max-normalisation PSF is
invariant to scaling all points by ``c > 0`` (and to translations and rotations).

Sampling (see :mod:`lightning_topo.scores.presets`): classes larger than
``max_points_per_class`` are subsampled (``"random"``, our default, cap 512) or resampled
from a Gaussian KDE (``"kde"``, the paper's rule, cap 5,000).

Sampling noise: ``resamples=k`` averages PSF over ``k`` seeded re-draws of the per-class sample
and ``return_std=True`` also returns the standard error of that mean (see :func:`psf`).

Example::

    points = torch.randn(200, 32, requires_grad=True)
    labels = torch.randint(0, 2, (200,))
    score = psf(points, labels)            # 0-d tensor
    score.backward()                       # gradients in points.grad
    loss_fn = PSFLoss(weight=0.1, mode="max")
    loss = task_loss + loss_fn(points, labels)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_topo.scores.checks import check_bool, check_choice, check_labels, check_real, check_seed
from lightning_topo.scores.presets import PSFPreset, get_preset
from lightning_topo.scores.sampling import check_resamples, draw_seeds, draws_differ, sample_per_class
from lightning_topo.topology import check_points, persistence_diagrams
from lightning_topo.topology.diagrams import BACKENDS

__all__ = [
    "psf",
    "psf_per_class",
    "psf_from_diagrams",
    "class_diagrams",
    "mean_and_stderr",
    "resample_seeds",
    "prepare_classes",
    "PSFLoss",
    "ZERO_LENGTH_RTOL",
]


#: Bars shorter than this share of the class's largest birth/death count as zero-length and are
#: dropped with them, so near-duplicate points (the same input through another batch differs by
#: float32 rounding, ~1e-7-1e-6 relative) give the same PSF as exact duplicates (docs/psf.md,
#: "Duplicates, collapsed classes and reversed pairs").
ZERO_LENGTH_RTOL = 1e-5


def psf_from_diagrams(diagrams: Sequence[Tensor]) -> Tensor:
    """``psf_c`` of one class from its finite diagrams (H0 and H1 for PSF).

    Args:
        diagrams: ``(m_k, 2)`` tensors of finite ``(birth, death)`` pairs with ``death >= birth``;
            all are pooled into ``P_c``. Pairs shorter than :data:`ZERO_LENGTH_RTOL` times the
            largest coordinate are dropped (zero-length bars: duplicate points).

    Returns:
        0-d tensor ``((S(3,2) + S(2,2)) / 2) / |P_c|`` after dividing ``P_c`` by its largest
        coordinate; differentiable w.r.t. the diagrams. A class left with a single pair (two
        distinct points, e.g. 19 identical points and one other) has PSF 0.25 whatever its
        geometry; that case warns.

    Raises:
        ValueError: ``P_c`` is empty or all its coordinates are 0 (all points identical), or a
            pair has ``death < birth`` (not a persistence diagram; it is not clamped).
    """
    pairs = torch.cat([d.reshape(-1, 2) for d in diagrams])
    reversed_ = pairs[:, 1] < pairs[:, 0]
    if bool(reversed_.any()):
        row = int(reversed_.nonzero()[0, 0])
        b, d = (float(v) for v in pairs[row].detach())
        raise ValueError(
            f"diagrams hold {int(reversed_.sum())} pair(s) with death < birth, e.g. row {row}: (birth {b:.6g}, "
            f"death {d:.6g}); a persistence pair has death >= birth. Check how the diagram was built"
        )
    if pairs.shape[0] and bool(pairs.detach().amax() > 0):
        length = (pairs[:, 1] - pairs[:, 0]).detach()
        pairs = pairs[length > ZERO_LENGTH_RTOL * pairs.detach().amax()]
    if pairs.shape[0] == 1:
        warnings.warn(
            "psf: a class has a single persistence pair (two distinct points, up to ZERO_LENGTH_RTOL); its "
            "psf is 0.25 whatever the points. Its hidden states have collapsed, or the class is too small",
            stacklevel=2,
        )
    if pairs.shape[0] == 0:
        raise ValueError(
            "psf is undefined for a class with an empty persistence diagram (all its points are "
            "identical); check the labels and the hidden states"
        )
    scale = pairs.amax()
    if not bool(scale > 0):
        raise ValueError("psf is undefined when every birth and death is 0 (all points of a class identical)")
    pairs = pairs / scale
    birth, death = pairs[:, 0], pairs[:, 1]
    length = (death - birth).abs()
    mid_sq = ((death + birth) / 2).abs().pow(2)
    s32 = (length.pow(3) * mid_sq).sum()
    s22 = (length.pow(2) * mid_sq).sum()
    return ((s32 + s22) / 2) / pairs.shape[0]


def prepare_classes(
    points: Tensor,
    labels: Tensor,
    *,
    preset: str | PSFPreset | None = "default",
    sampling: str | None = None,
    max_points_per_class: int | None = None,
    bandwidth: float | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Check a labelled cloud and sample each class as the preset says (the first step of PSF).

    Args:
        points: ``(n, d)`` float32/float64, finite.
        labels: ``(n,)`` integer labels, at least 2 distinct values.
        preset, sampling, max_points_per_class, bandwidth, seed: as :func:`psf`.

    Returns:
        ``(points, labels)`` after sampling; every class has at least 2 points.

    Raises:
        TypeError / ValueError: bad points, labels or argument (the message names it), fewer
            than 2 classes, or a class with fewer than 2 points.
    """
    points = check_points(points, "points")
    labels = check_labels(labels, points.shape[0], "labels")
    seed = check_seed(seed)
    settings = get_preset(preset).override(
        sampling=sampling, max_points_per_class=max_points_per_class, bandwidth=bandwidth
    )
    classes = [int(c) for c in torch.unique(labels).tolist()]
    if len(classes) < 2:
        raise ValueError(
            f"psf needs at least 2 classes; got labels with {len(classes)} distinct value "
            f"({', '.join(map(str, classes))}). Collect examples of every class (e.g. more validation batches)"
        )
    points, labels = sample_per_class(
        points,
        labels.to(points.device),
        settings.max_points_per_class,
        method=settings.sampling,
        bandwidth=settings.bandwidth,
        seed=seed,
    )
    counts = {int(c): int((labels == c).sum()) for c in classes}
    small = {c: n for c, n in counts.items() if n < 2}
    if small:
        raise ValueError(
            f"labels: every class needs at least 2 points for a persistence diagram; got {small} "
            "(class: count). Use more data (max_batches, max_points_per_class) or drop these classes"
        )
    return points, labels


def class_diagrams(
    points: Tensor,
    labels: Tensor,
    *,
    max_dim: int = 1,
    backend: str = "torch",
) -> dict[int, list[Tensor]]:
    """Finite persistence diagrams of each class's point cloud (no sampling, no checks on classes).

    Args:
        points: ``(n, d)`` float tensor.
        labels: ``(n,)`` integer labels.
        max_dim: highest homology dimension (0 or 1).
        backend: see :func:`~lightning_topo.topology.persistence_diagrams`.

    Returns:
        ``{class: [H0 (m_0, 2), ..., H_max_dim]}``, classes ascending; differentiable.
    """
    out: dict[int, list[Tensor]] = {}
    for c in torch.unique(labels).tolist():
        cloud = points[labels == c]
        out[int(c)] = persistence_diagrams(cloud, max_dim, backend=backend)
    return out


def psf_per_class(
    points: Tensor,
    labels: Tensor,
    *,
    preset: str | PSFPreset | None = "default",
    sampling: str | None = None,
    max_points_per_class: int | None = None,
    bandwidth: float | None = None,
    seed: int = 0,
    backend: str = "torch",
) -> Tensor:
    """``psf_c`` for every class (see :func:`psf`).

    Returns:
        ``(C,)`` tensor, one entry per distinct label in ascending label order.
    """
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
    return torch.stack([psf_from_diagrams(d) for d in diagrams.values()])


def mean_and_stderr(values: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Mean of ``k`` 0-d tensors and the standard error of that mean.

    Args:
        values: ``k >= 1`` 0-d tensors (one score per re-draw).

    Returns:
        ``(mean, stderr)``: ``mean`` is differentiable (for ``k = 1`` it is ``values[0]``
        itself); ``stderr = std(values, ddof=1) / sqrt(k)`` is detached (a report of the
        sampling noise, not a training signal) and is 0 for ``k = 1``.
    """
    if len(values) == 1:
        return values[0], torch.zeros_like(values[0]).detach()
    stacked = torch.stack(list(values))
    stderr = stacked.detach().std(unbiased=True) / len(values) ** 0.5
    return stacked.mean(), stderr


def resample_seeds(labels: Tensor, settings: PSFPreset, seed: int, resamples: int) -> list[int]:
    """Seeds of the re-draws that can differ: ``[seed]`` when ``resamples == 1`` or when no class
    of ``labels`` exceeds ``settings``' cap (those classes are used whole, so a re-draw would
    give the same sample), else :func:`~lightning_topo.scores.sampling.draw_seeds`."""
    resamples = check_resamples(resamples)
    seed = check_seed(seed)
    if resamples == 1 or not draws_differ(labels, settings.max_points_per_class, settings.sampling):
        return [seed]
    return draw_seeds(seed, resamples)


def psf(
    points: Tensor,
    labels: Tensor,
    *,
    preset: str | PSFPreset | None = "default",
    sampling: str | None = None,
    max_points_per_class: int | None = None,
    bandwidth: float | None = None,
    seed: int = 0,
    backend: str = "torch",
    resamples: int = 1,
    return_std: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """BERTops' persistence scoring function: the mean over classes of ``psf_c``.

    Args:
        points: ``(n, d)`` float32/float64 point cloud (e.g. [CLS] vectors), finite.
        labels: ``(n,)`` integer class labels; at least 2 distinct values, each with >= 2 points
            after sampling.
        preset: ``"default"`` (random subsample, cap 512 per class) or ``"bertops"`` (KDE
            resample to 5,000 when a class has more), or a :class:`PSFPreset`. Only its sampling
            fields are used here (layer and pooling matter when collecting hidden states).
        sampling: override the preset's rule: ``"random"``, ``"kde"`` or ``"none"``.
        max_points_per_class: override the preset's cap, an int >= 2 (``None``: the preset's;
            ``sampling="none"`` keeps every point).
        bandwidth: override the KDE bandwidth (finite, > 0).
        seed: sampling seed, an int >= 0 (the same seed gives the same score; ``None`` is
            refused so that every score is reproducible).
        backend: persistence backend, see :func:`~lightning_topo.topology.persistence_diagrams`
            (default ``"torch"``: MST for H0, giotto-ph generators for H1).
        resamples: int >= 1 (default 1). PSF is the mean over ``resamples`` seeded re-draws
            of the per-class sample; draw 0 uses ``seed`` (so ``resamples=1`` is the single
            draw), draw ``r`` a seed derived from ``(seed, r)``. Only classes above the cap
            are re-drawn: classes at or below it are used whole, where re-drawing changes
            nothing, so when no class exceeds the cap PSF is computed once and its standard
            error is 0.
        return_std: also return the standard error of the mean over the re-draws.

    Returns:
        0-d tensor in ``points``' dtype, differentiable w.r.t. ``points`` (through the mean
        over re-draws); with ``return_std=True`` a pair ``(psf, stderr)``, ``stderr`` detached.

    Raises:
        TypeError: ``points`` not a float tensor, ``labels`` not an integer tensor, or an
            argument of the wrong type (``max_points_per_class=2.5``, ``seed=None``).
        ValueError: bad shapes, ``len(labels) != len(points)``, NaN/inf, fewer than 2 classes, a
            class with fewer than 2 points, or an unknown preset/sampling or a bad value
            (``bandwidth=nan``).
    """
    settings = get_preset(preset).override(
        sampling=sampling, max_points_per_class=max_points_per_class, bandwidth=bandwidth
    )
    check_resamples(resamples)
    check_bool(return_std, "return_std")
    n = check_points(points, "points").shape[0]
    seeds = resample_seeds(check_labels(labels, n, "labels"), settings, seed, resamples)
    values = [psf_per_class(points, labels, preset=settings, seed=s, backend=backend).mean() for s in seeds]
    mean, stderr = mean_and_stderr(values)
    return (mean, stderr) if return_std else mean


class PSFLoss(nn.Module):
    """PSF as an auxiliary loss term: ``weight * psf`` (``mode="min"``) or ``-weight * psf`` (``"max"``).

    Args:
        weight: finite multiplier >= 0 (default 1.0); the direction is set by ``mode``.
        mode: ``"max"`` (default) to push PSF up, ``"min"`` to push it down.
        preset, sampling, max_points_per_class, bandwidth, seed, backend: as :func:`psf`;
            all are validated here, at construction.

    Raises:
        TypeError / ValueError: a bad argument (``weight=nan``, ``weight="0.1"``, ...); the
            message names it.

    Example::

        aux = PSFLoss(weight=0.05, mode="min")
        cls = encoded.hidden_states[-1][:, 0]          # (batch, d)
        loss = F.cross_entropy(logits, labels) + aux(cls, labels)

    Each batch needs >= 2 classes with >= 2 examples each.
    """

    def __init__(
        self,
        weight: float = 1.0,
        mode: str = "max",
        *,
        preset: str | PSFPreset | None = "default",
        sampling: str | None = None,
        max_points_per_class: int | None = None,
        bandwidth: float | None = None,
        seed: int = 0,
        backend: str = "torch",
    ) -> None:
        super().__init__()
        check_choice(mode, "mode", ("max", "min"))
        self.weight = check_real(weight, "weight", minimum=0.0)
        self.mode = mode
        # resolve once: a bad preset, sampling, cap, bandwidth, seed or backend fails here, not
        # at the first training step
        self.settings = get_preset(preset).override(
            sampling=sampling, max_points_per_class=max_points_per_class, bandwidth=bandwidth
        )
        self.preset = preset
        self.seed = check_seed(seed)
        self.backend = check_choice(backend, "backend", BACKENDS)

    def forward(self, points: Tensor, labels: Tensor) -> Tensor:
        """``points: (n, d)``, ``labels: (n,)`` -> 0-d loss tensor."""
        value = psf(points, labels, preset=self.settings, seed=self.seed, backend=self.backend)
        sign = -1.0 if self.mode == "max" else 1.0
        return sign * self.weight * value

    def extra_repr(self) -> str:
        return f"weight={self.weight}, mode={self.mode!r}, preset={self.preset!r}"
