"""Named settings for PSF, shared by :func:`~lightning_topo.scores.psf` and the callback.

``"bertops"`` reproduces the paper's code (Chauhan et al. 2022, github chauhanjatin10/BERTops):
last hidden layer, [CLS] vector, and when a class has more than 5,000 points a Gaussian KDE
resample (bandwidth 1.0) to 5,000, on the training examples. ``"default"`` is our faster choice (methods.md §2,
**choice**): same layer and pooling, a seeded random subsample of at most 512 points per class.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

__all__ = ["PSFPreset", "PRESETS", "SAMPLING_METHODS", "POOLINGS", "get_preset"]

#: Per-class sampling rules: ``"random"`` (subsample without replacement), ``"kde"``
#: (Gaussian KDE resample: random points plus ``N(0, bandwidth^2)`` noise, as
#: ``sklearn.neighbors.KernelDensity(bandwidth).sample``), ``"none"`` (keep every point).
SAMPLING_METHODS: tuple[str, ...] = ("random", "kde", "none")
#: Token poolings: ``"cls"`` (first token) or ``"mean"`` (mean over the attention mask).
POOLINGS: tuple[str, ...] = ("cls", "mean")


@dataclass(frozen=True)
class PSFPreset:
    """Settings of one PSF measurement.

    Attributes:
        layer: hidden-state index (0 = embeddings, ``i`` = encoder layer ``i``, ``-1`` = last).
        pooling: ``"cls"`` or ``"mean"``.
        sampling: ``"random"``, ``"kde"`` or ``"none"``; applied only to classes with more
            than ``max_points_per_class`` points.
        max_points_per_class: cap on the points per class (``None``: no cap).
        bandwidth: KDE bandwidth (standard deviation of the Gaussian noise), for ``"kde"``.
        max_dim: highest homology dimension (PSF uses H0 and H1: 1).
        split: data split the callback measures by default (``"val"`` or ``"train"``; BERTops
            used the training examples).
    """

    layer: int = -1
    pooling: str = "cls"
    sampling: str = "random"
    max_points_per_class: int | None = 512
    bandwidth: float = 1.0
    max_dim: int = 1
    split: str = "val"

    def override(self, **kwargs: Any) -> PSFPreset:
        """A copy with the given fields replaced; ``None`` values keep the preset's value."""
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})


PRESETS: dict[str, PSFPreset] = {
    "default": PSFPreset(),
    "bertops": PSFPreset(
        layer=-1, pooling="cls", sampling="kde", max_points_per_class=5000, bandwidth=1.0, split="train"
    ),
}


def get_preset(preset: str | PSFPreset | None) -> PSFPreset:
    """Resolve ``preset`` (a name in :data:`PRESETS`, a :class:`PSFPreset`, or ``None`` = ``"default"``).

    Raises:
        ValueError: unknown preset name.
    """
    if preset is None:
        return PRESETS["default"]
    if isinstance(preset, PSFPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}; got {preset!r}")
    return PRESETS[preset]
