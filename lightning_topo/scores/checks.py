"""Argument checks shared by the scores, the collection step and the callbacks (a leaf module).

Every check raises *before* any work is done, with a message that names the argument, says
what is accepted and what was given. Types are checked strictly: a float where an int is
expected (``max_points_per_class=2.5``, ``layers=[1.7]``) is refused instead of being
truncated, and ``bool`` is never accepted as a number.

Only ``torch`` and ``numpy`` are imported here, so every package may import this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_bool",
    "check_choice",
    "check_int",
    "check_labels",
    "check_real",
    "check_seed",
]


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_int(
    value: object, name: str, *, minimum: int | None = None, allow_none: bool = False
) -> int | None:
    """``value`` as an ``int`` (``>= minimum`` when given; ``None`` passes when ``allow_none``).

    Raises:
        TypeError: not an int (floats such as ``2.5`` or ``2.0`` and bools are refused).
        ValueError: below ``minimum``.
    """
    accepted = "an int" + ("" if minimum is None else f" >= {minimum}") + (" or None" if allow_none else "")
    if value is None and allow_none:
        return None
    if not _is_int(value):
        raise TypeError(f"{name} must be {accepted}; got {value!r} ({type(value).__name__})")
    if minimum is not None and int(value) < minimum:  # type: ignore[call-overload]
        raise ValueError(f"{name} must be {accepted}; got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_real(
    value: object, name: str, *, minimum: float | None = None, strict: bool = False, allow_none: bool = False
) -> float | None:
    """``value`` as a finite ``float`` (``>= minimum``, or ``> minimum`` when ``strict``).

    Raises:
        TypeError: not a real number (strings, bools and tensors are refused).
        ValueError: NaN, infinite, or below the bound.
    """
    bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
    accepted = f"a finite number{bound}" + (" or None" if allow_none else "")
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be {accepted}; got {value!r} ({type(value).__name__})")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be {accepted}; got {value!r}")
    if minimum is not None and (out <= minimum if strict else out < minimum):
        raise ValueError(f"{name} must be {accepted}; got {value!r}")
    return out


def check_seed(seed: object, name: str = "seed") -> int:
    """A sampling seed: an int in ``0 .. 2**63 - 1``.

    ``None`` is refused rather than read as "random": every score in this package is
    reproducible from its seed (the same seed and data give the same value).
    """
    if seed is None:
        raise TypeError(
            f"{name} must be an int >= 0; got None. Scores are seeded so that they are reproducible: "
            f"pass an explicit {name} (e.g. {name}=0), and different seeds for independent draws"
        )
    value = check_int(seed, name, minimum=0)
    if value >= 2**63:  # type: ignore[operator]
        raise ValueError(f"{name} must be below 2**63; got {seed!r}")
    return value  # type: ignore[return-value]


def check_bool(value: object, name: str) -> bool:
    """``value`` if it is a ``bool``, else ``TypeError`` (``"false"`` or ``0`` are refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {value!r} ({type(value).__name__})")
    return value


def check_choice(value: object, name: str, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``, else ``ValueError`` listing them."""
    if isinstance(value, bool) or value not in tuple(choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}; got {value!r}")
    return value


def check_labels(labels: object, n: int, name: str = "labels") -> Tensor:
    """Validate class labels for ``n`` points: a 1-D integer tensor of length ``n``.

    Raises:
        TypeError: not a tensor, or not an integer dtype.
        ValueError: not 1-D, or a length other than ``n``.
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer class labels; got {type(labels).__name__}")
    if labels.dim() != 1:
        raise ValueError(f"{name} must be 1-D of shape (n,); got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype; got {labels.dtype}. Convert with {name}.long()")
    if labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} entries but points has {n} rows; they must match")
    return labels
