"""Named settings for PSF, shared by :func:`~lightning_topo.scores.psf` and the callback.

``"bertops"`` reproduces the paper's code (Chauhan et al. 2022, github chauhanjatin10/BERTops):
last hidden layer, [CLS] vector, the training examples, and when a class has more than 5,000
points a Gaussian KDE resample (bandwidth 1.0) to 5,000. ``"default"`` is our faster choice
(methods.md §2, **choice**): same layer and pooling, the validation examples, a seeded random
subsample of at most 512 points per class.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from lightning_topo.scores.checks import check_choice, check_int, check_real
from lightning_topo.scores.sampling import SAMPLING_METHODS, check_max_points_per_class

__all__ = ["PSFPreset", "PRESETS", "SAMPLING_METHODS", "POOLINGS", "SPLITS", "get_preset"]

#: Token poolings: ``"cls"`` (first token) or ``"mean"`` (mean over the attention mask).
POOLINGS: tuple[str, ...] = ("cls", "mean")
#: Data splits a callback can measure: the validation or the training dataloader.
SPLITS: tuple[str, ...] = ("val", "train")


@dataclass(frozen=True)
class PSFPreset:
    """Settings of one PSF measurement; every field is validated at construction.

    Attributes:
        layer: hidden-state index (0 = embeddings, ``i`` = encoder layer ``i``, ``-1`` = last).
        pooling: ``"cls"`` or ``"mean"``.
        sampling: ``"random"``, ``"kde"`` or ``"none"``; applied only to classes with more
            than ``max_points_per_class`` points.
        max_points_per_class: cap on the points per class, an int >= 2 (``None``: no cap).
        bandwidth: KDE bandwidth (standard deviation of the Gaussian noise, > 0), for ``"kde"``.
        split: data split the callback measures by default (``"val"`` or ``"train"``; BERTops
            used the training examples).

    Raises:
        TypeError / ValueError: a field of the wrong type or value (the message names it).
    """

    layer: int = -1
    pooling: str = "cls"
    sampling: str = "random"
    max_points_per_class: int | None = 512
    bandwidth: float = 1.0
    split: str = "val"

    def __post_init__(self) -> None:
        check_int(self.layer, "layer")
        check_choice(self.pooling, "pooling", POOLINGS)
        check_choice(self.sampling, "sampling", SAMPLING_METHODS)
        check_max_points_per_class(self.max_points_per_class)
        check_real(self.bandwidth, "bandwidth", minimum=0.0, strict=True)
        check_choice(self.split, "split", SPLITS)

    def override(self, **kwargs: Any) -> PSFPreset:
        """A validated copy with the given fields replaced; ``None`` values keep the preset's value."""
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})


PRESETS: dict[str, PSFPreset] = {
    "default": PSFPreset(),
    "bertops": PSFPreset(
        layer=-1, pooling="cls", sampling="kde", max_points_per_class=5000, bandwidth=1.0, split="train"
    ),
}


def get_preset(preset: str | PSFPreset | None) -> PSFPreset:
    """Resolve ``preset``: a name in :data:`PRESETS`, a :class:`PSFPreset`, or ``None`` (``"default"``).

    Raises:
        ValueError: unknown preset name (or a value of another type).
    """
    if preset is None:
        return PRESETS["default"]
    if isinstance(preset, PSFPreset):
        return preset
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)} or a PSFPreset; got {preset!r}")
    return PRESETS[preset]
