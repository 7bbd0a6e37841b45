"""Argument checks shared by the scores, the collection step and the callbacks (a leaf module).

Every check raises *before* any work is done, with a message that names the argument, says
what is accepted and what was given. Types are checked strictly: a float where an int is
expected (``max_points_per_class=2.5``, ``layers=[1.7]``) is refused instead of being
truncated, and ``bool`` is never accepted as a number.

Only ``torch`` and ``numpy`` are imported here, so every package may import this module.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "LayerSpec",
    "check_bool",
    "check_choice",
    "check_int",
    "check_labels",
    "check_layers",
    "check_real",
    "check_seed",
    "check_text",
    "resolve_layers",
]

#: A layer selection: a hidden-state index, a sequence of indices, or ``"all"``.
LayerSpec = int | Sequence[int] | str


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_int(
    value: object, name: str, *, minimum: int | None = None, allow_none: bool = False, hint: str = ""
) -> int | None:
    """``value`` as an ``int`` (``>= minimum`` when given; ``None`` passes when ``allow_none``).

    ``hint`` is appended to what is accepted, e.g. ``" (a layer needs at least one head)"``.

    Raises:
        TypeError: not an int (floats such as ``2.5`` or ``2.0`` and bools are refused).
        ValueError: below ``minimum``.
    """
    accepted = "an int" + ("" if minimum is None else f" >= {minimum}") + (" or None" if allow_none else "") + hint
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


def check_text(
    value: object, name: str, what: str = "a non-empty string", *, allow_none: bool = False, path: bool = False
) -> str | None:
    """``value`` if it is a string that is not blank (``None`` passes when ``allow_none``).

    With ``path=True`` an ``os.PathLike`` (e.g. a ``pathlib.Path``) is accepted and returned as
    its string. ``what`` is what the message says is accepted, e.g. ``"a folder path or None"``.

    Raises:
        TypeError: not a string (nor a path with ``path=True``).
        ValueError: an empty or all-whitespace string.
    """
    if value is None and allow_none:
        return None
    if path and isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {what}; got {value!r} ({type(value).__name__})")
    if not value.strip():
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return value


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


def check_layers(layers: object, name: str = "layers") -> int | list[int] | str:
    """Validate a layer selection without knowing the model's depth (done at construction).

    Returns:
        ``layers`` as an ``int``, a list of ints, or ``"all"``.

    Raises:
        TypeError: not an int, a sequence of ints or ``"all"`` (``1.7`` or ``True`` are refused,
            never truncated).
        ValueError: an empty sequence or another string.
    """
    accepted = "an int, a list of ints or 'all'"
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"{name} must be {accepted}; got {layers!r}")
        return layers
    if isinstance(layers, Integral) and not isinstance(layers, bool):
        return int(layers)
    if not isinstance(layers, Sequence):
        raise TypeError(f"{name} must be {accepted}; got {layers!r} ({type(layers).__name__})")
    items = list(layers)
    if not items:
        raise ValueError(f"{name} must name at least one layer; got an empty list")
    return [check_int(x, f"{name}[{i}]") for i, x in enumerate(items)]  # type: ignore[misc]


def resolve_layers(layers: LayerSpec, num_layers: int) -> list[int]:
    """Normalise a layer selection to non-negative hidden-state indices ``0..num_layers``.

    Args:
        layers: an int, a sequence of ints, or ``"all"`` (every hidden state, embeddings
            included: ``0..num_layers``). Negative indices count from the end (``-1`` = last).
        num_layers: number of encoder layers of the model.

    Returns:
        Distinct indices in the requested order.

    Raises:
        ValueError: an index outside ``-(num_layers + 1)..num_layers``, an empty list, or an
            unknown string.
        TypeError: not an int, a sequence of ints or ``"all"``.
    """
    spec = check_layers(layers)
    n_states = num_layers + 1
    if spec == "all":
        return list(range(n_states))
    out: list[int] = []
    for layer in [spec] if isinstance(spec, int) else spec:
        if not -n_states <= layer < n_states:
            raise ValueError(
                f"layers: index {layer} is out of range for a model with {num_layers} encoder layers; "
                f"valid indices are {-n_states}..{num_layers} (0 = embeddings, -1 = last layer)"
            )
        if layer % n_states not in out:
            out.append(layer % n_states)
    return out
