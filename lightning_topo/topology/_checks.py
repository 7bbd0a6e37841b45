"""Input validation shared by the topology functions (private)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_float_tensor(x: object, name: str) -> Tensor:
    """Return ``x`` if it is a floating-point tensor, else raise ``TypeError`` naming ``name``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        kind = "a floating-point dtype" if not x.is_floating_point() else "float32 or float64 precision"
        raise TypeError(
            f"{name} must have {kind} (float32 or float64); got {x.dtype}. "
            f"Convert it first, e.g. {name}.float() or {name}.double()"
        )
    return x


def check_finite(x: Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` has NaN or infinite entries."""
    # one reduction: a finite sum proves every entry finite (NaN/inf propagate); only when
    # the sum is not finite (bad entries, or overflow) do the exact elementwise check
    if bool(torch.isfinite(x.detach().sum())) or bool(torch.isfinite(x).all()):
        return
    n_nan = int(torch.isnan(x).sum())
    n_inf = int(torch.isinf(x).sum())
    raise ValueError(
        f"{name} must be finite; got {n_nan} NaN and {n_inf} infinite entries. "
        "Remove or impute them before computing persistence"
    )


def check_points(points: object, name: str = "points", *, finite: bool = True) -> Tensor:
    """Validate a point cloud ``(n, d)``: float dtype, 2-D, n >= 2, d >= 1, finite.

    ``finite=False`` skips the value check (for callers that detect NaN/inf more cheaply
    later and then call :func:`check_finite`).
    """
    points = check_float_tensor(points, name)
    if points.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor of shape (n, d); got shape {tuple(points.shape)}")
    n, d = points.shape
    if n < 2:
        raise ValueError(f"{name} needs at least 2 points to have a persistence diagram; got n={n}")
    if d < 1:
        raise ValueError(f"{name} must have at least 1 coordinate per point; got shape {tuple(points.shape)}")
    if finite:
        check_finite(points, name)
    return points


def check_distance_matrix(distances: object, name: str = "distances") -> Tensor:
    """Validate a distance matrix ``(n, n)``: float dtype, square, n >= 2, finite, non-negative."""
    distances = check_float_tensor(distances, name)
    if distances.dim() != 2 or distances.shape[0] != distances.shape[1]:
        raise ValueError(
            f"{name} must be a square 2-D distance matrix of shape (n, n); got shape {tuple(distances.shape)}"
        )
    n = distances.shape[0]
    if n < 2:
        raise ValueError(f"{name} needs at least 2 points to have a persistence diagram; got n={n}")
    check_finite(distances, name)
    smallest = float(distances.detach().min())
    if smallest < 0:
        raise ValueError(f"{name} must be non-negative; got a minimum of {smallest}")
    return distances


def check_input(x: object, distance_matrix: bool, name: str = "points") -> Tensor:
    """Validate ``x`` as a point cloud or, when ``distance_matrix`` is true, as a distance matrix."""
    if distance_matrix:
        return check_distance_matrix(x, name)
    return check_points(x, name)
