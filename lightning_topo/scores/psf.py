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

Example::

    points = torch.randn(200, 32, requires_grad=True)
    labels = torch.randint(0, 2, (200,))
    score = psf(points, labels)            # 0-d tensor
    score.backward()                       # gradients in points.grad
    loss_fn = PSFLoss(weight=0.1, mode="max")
    loss = task_loss + loss_fn(points, labels)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightning_topo.representations import _check_labels, sample_per_class
from lightning_topo.scores.presets import PSFPreset, get_preset
from lightning_topo.topology import persistence_diagrams, persistence_entropy, total_persistence
from lightning_topo.topology._checks import check_points

__all__ = [
    "psf",
    "psf_per_class",
    "psf_from_diagrams",
    "class_diagrams",
    "persistence_summary",
    "PersistenceSummary",
    "PSFLoss",
]


def psf_from_diagrams(diagrams: Sequence[Tensor]) -> Tensor:
    """``psf_c`` of one class from its finite diagrams (H0 and H1 for PSF).

    Args:
        diagrams: ``(m_k, 2)`` tensors of finite ``(birth, death)`` pairs; all are pooled
            into ``P_c``.

    Returns:
        0-d tensor ``((S(3,2) + S(2,2)) / 2) / |P_c|`` after dividing ``P_c`` by its largest
        coordinate; differentiable w.r.t. the diagrams.

    Raises:
        ValueError: ``P_c`` is empty or all its coordinates are 0 (all points identical).
    """
    pairs = torch.cat([d.reshape(-1, 2) for d in diagrams])
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


def _prepare(
    points: Tensor,
    labels: Tensor,
    preset: str | PSFPreset | None,
    sampling: str | None,
    max_points_per_class: int | None,
    bandwidth: float | None,
    seed: int,
) -> tuple[Tensor, Tensor, list[int]]:
    points = check_points(points, "points")
    labels = _check_labels(labels, points.shape[0], "labels")
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
    return points, labels, classes


def class_diagrams(
    points: Tensor,
    labels: Tensor,
    *,
    max_dim: int = 1,
    backend: str = "auto",
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
    backend: str = "auto",
) -> Tensor:
    """``psf_c`` for every class (see :func:`psf`).

    Returns:
        ``(C,)`` tensor, one entry per distinct label in ascending label order.
    """
    points, labels, _ = _prepare(points, labels, preset, sampling, max_points_per_class, bandwidth, seed)
    diagrams = class_diagrams(points, labels, max_dim=1, backend=backend)
    return torch.stack([psf_from_diagrams(d) for d in diagrams.values()])


def psf(
    points: Tensor,
    labels: Tensor,
    *,
    preset: str | PSFPreset | None = "default",
    sampling: str | None = None,
    max_points_per_class: int | None = None,
    bandwidth: float | None = None,
    seed: int = 0,
    backend: str = "auto",
) -> Tensor:
    """BERTops' persistence scoring function: the mean over classes of ``psf_c``.

    Args:
        points: ``(n, d)`` float32/float64 point cloud (e.g. [CLS] vectors), finite.
        labels: ``(n,)`` integer class labels; at least 2 distinct values, each with >= 2 points
            after sampling.
        preset: ``"default"`` (random subsample, cap 512 per class) or ``"bertops"`` (KDE
            resample to 5,000 when a class has more), or a :class:`PSFPreset`. Only its sampling
            fields are used here (layer and pooling matter when collecting hidden states).
        sampling: override the preset's rule: ``"random"``, ``"kde"`` or ``"none"``.
        max_points_per_class: override the preset's cap (``None``: the preset's).
        bandwidth: override the KDE bandwidth.
        seed: sampling seed (the same seed gives the same score).
        backend: persistence backend (``"auto"``, ``"torch"``, ``"torchph"``).

    Returns:
        0-d tensor in ``points``' dtype, differentiable w.r.t. ``points``.

    Raises:
        TypeError: ``points`` not a float tensor or ``labels`` not an integer tensor.
        ValueError: bad shapes, ``len(labels) != len(points)``, NaN/inf, fewer than 2 classes, a
            class with fewer than 2 points, or an unknown preset/sampling.
    """
    return psf_per_class(
        points,
        labels,
        preset=preset,
        sampling=sampling,
        max_points_per_class=max_points_per_class,
        bandwidth=bandwidth,
        seed=seed,
        backend=backend,
    ).mean()


@dataclass
class PersistenceSummary:
    """Everything the monitor logs about one point cloud, from one set of diagrams.

    Attributes:
        psf: 0-d tensor, mean of ``psf_per_class``.
        psf_per_class: ``{class: 0-d tensor}``.
        total_persistence: ``{dim: 0-d tensor}``, mean over classes of ``Σ (d − b)`` of the raw
            (unnormalised) class diagrams.
        entropy: ``{dim: 0-d tensor}``, mean over classes of the persistence entropy.
        diagrams: ``{class: [H0, H1]}`` raw diagrams ``(m, 2)``.
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
    backend: str = "auto",
) -> PersistenceSummary:
    """PSF, per-class PSF and per-dimension total persistence / entropy from one diagram pass.

    Arguments as :func:`psf`; ``homology_dims`` (subset of ``{0, 1}``) selects the dimensions
    whose total persistence (``p = 1``) and persistence entropy are averaged over classes.
    """
    dims = sorted({int(d) for d in homology_dims})
    if any(d not in (0, 1) for d in dims):
        raise ValueError(f"homology_dims must be a subset of (0, 1); got {tuple(homology_dims)}")
    points, labels, _ = _prepare(points, labels, preset, sampling, max_points_per_class, bandwidth, seed)
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


class PSFLoss(nn.Module):
    """PSF as an auxiliary loss term: ``weight * psf`` (``mode="min"``) or ``-weight * psf`` (``"max"``).

    Args:
        weight: non-negative multiplier.
        mode: ``"max"`` to push PSF up, ``"min"`` to push it down.
        preset, sampling, max_points_per_class, bandwidth, seed, backend: as :func:`psf`.

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
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' (maximise PSF) or 'min' (minimise PSF); got {mode!r}")
        if weight < 0:
            raise ValueError(f"weight must be >= 0 (use mode to pick the direction); got {weight}")
        get_preset(preset)
        self.weight = float(weight)
        self.mode = mode
        self.preset = preset
        self.sampling = sampling
        self.max_points_per_class = max_points_per_class
        self.bandwidth = bandwidth
        self.seed = seed
        self.backend = backend

    def forward(self, points: Tensor, labels: Tensor) -> Tensor:
        """``points: (n, d)``, ``labels: (n,)`` -> 0-d loss tensor."""
        value = psf(
            points,
            labels,
            preset=self.preset,
            sampling=self.sampling,
            max_points_per_class=self.max_points_per_class,
            bandwidth=self.bandwidth,
            seed=self.seed,
            backend=self.backend,
        )
        sign = -1.0 if self.mode == "max" else 1.0
        return sign * self.weight * value

    def extra_repr(self) -> str:
        return f"weight={self.weight}, mode={self.mode!r}, preset={self.preset!r}"
