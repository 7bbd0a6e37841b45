"""Input validation shared by the topology functions.

:func:`check_points` is public (exported by :mod:`lightning_topo.topology`) so that callers
such as the scores validate a point cloud with the very same rules and messages.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["check_points", "check_distance_matrix", "check_float_tensor", "check_finite", "max_abs"]


def check_float_tensor(x: object, name: str) -> Tensor:
    """Return ``x`` if it is a float32/float64 tensor with values, else raise naming ``name``:
    ``TypeError`` for another type or dtype, ``ValueError`` for a meta-device tensor (shape only)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        kind = "a floating-point dtype" if not x.is_floating_point() else "float32 or float64 precision"
        raise TypeError(
            f"{name} must have {kind} (float32 or float64); got {x.dtype}. "
            f"Convert it first, e.g. {name}.float() or {name}.double()"
        )
    if x.device.type == "meta":
        raise ValueError(
            f"{name} is a tensor on the meta device: it has a shape {tuple(x.shape)} but no values, so it "
            f"has no persistence diagram. Pass real data (e.g. {name}.to_empty(device='cpu') and fill it, or "
            "the hidden states of a model loaded on cpu/cuda)"
        )
    return x


def check_finite(x: Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` has NaN or infinite entries."""
    if bool(torch.isfinite(x).all()):
        return
    n_nan = int(torch.isnan(x).sum())
    n_inf = int(torch.isinf(x).sum())
    raise ValueError(
        f"{name} must be finite; got {n_nan} NaN and {n_inf} infinite entries. "
        "Remove or impute them before computing persistence"
    )


def max_abs(x: Tensor, name: str) -> float:
    """Largest ``|x|`` entry (one pass, no temporary); raises ``ValueError`` on NaN/inf entries."""
    value = float(torch.linalg.vector_norm(x.detach(), ord=math.inf))
    if not math.isfinite(value):  # NaN and inf propagate into the max
        check_finite(x, name)
    return value


def check_points(points: object, name: str = "points", *, finite: bool = True) -> Tensor:
    """Validate a point cloud ``(n, d)``: float32/float64 tensor, 2-D, ``n >= 2``, ``d >= 1``, finite.

    Args:
        points: the candidate point cloud.
        name: argument name used in the error messages.
        finite: check for NaN/inf entries (``False`` for callers that check later, more cheaply).

    Returns:
        ``points`` itself (no copy).

    Raises:
        TypeError: not a tensor, or not float32/float64.
        ValueError: not 2-D, fewer than 2 points, no coordinates, or NaN/inf entries.
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
        max_abs(points, name)
    return points


def symmetry_tolerance(dtype: torch.dtype, largest: float) -> float:
    """Rounding allowed in a distance matrix's symmetry and diagonal: ``16 sqrt(eps) max|D|``.

    A matrix computed by a GEMM (e.g. ``torch.cdist``) has a diagonal of about
    ``sqrt(eps) |x|`` instead of 0; this keeps such matrices while refusing real asymmetry.
    """
    return 16.0 * math.sqrt(torch.finfo(dtype).eps) * largest


def _largest_asymmetry(distances: Tensor, block: int = 1024) -> float:
    """``max |D - D^T|`` in blocks of rows (never an n x n temporary)."""
    worst = 0.0
    for start in range(0, distances.shape[0], block):
        rows = distances[start : start + block]
        cols = distances[:, start : start + block].T
        worst = max(worst, float((rows - cols).abs().max()))
    return worst


def check_distance_matrix(distances: object, name: str = "distances") -> Tensor:
    """Validate a distance matrix ``(n, n)``: float32/float64, ``n >= 2``, finite, non-negative,
    symmetric and zero on the diagonal up to rounding (see :func:`symmetry_tolerance`).

    Raises:
        TypeError: not a tensor, or not float32/float64.
        ValueError: not square, fewer than 2 points, NaN/inf, negative, asymmetric or a
            non-zero diagonal.
    """
    distances = check_float_tensor(distances, name)
    if distances.dim() != 2 or distances.shape[0] != distances.shape[1]:
        raise ValueError(
            f"{name} must be a square 2-D distance matrix of shape (n, n); got shape {tuple(distances.shape)}"
        )
    n = distances.shape[0]
    if n < 2:
        raise ValueError(f"{name} needs at least 2 points to have a persistence diagram; got n={n}")
    d = distances.detach()
    largest = max_abs(d, name)
    smallest = float(d.min())
    if smallest < 0:
        raise ValueError(f"{name} must be non-negative; got a minimum of {smallest}")
    tol = symmetry_tolerance(d.dtype, largest)
    diagonal = float(d.diagonal().max())
    if diagonal > tol:
        raise ValueError(
            f"{name} must have a zero diagonal (a point is at distance 0 from itself); got a "
            f"diagonal entry of {diagonal:.6g} (allowed rounding {tol:.3g}). Set it with "
            f"{name}.fill_diagonal_(0) if it is a distance matrix, or pass the points instead"
        )
    asym = _largest_asymmetry(d)
    if asym > tol:
        raise ValueError(
            f"{name} must be symmetric (D[i, j] == D[j, i]); got |D - D.T| up to {asym:.6g} "
            f"(allowed rounding {tol:.3g}). Symmetrise it, e.g. ({name} + {name}.T) / 2, if the "
            "asymmetry is noise, or pass the points instead"
        )
    return distances


def check_input(x: object, distance_matrix: bool, name: str = "points") -> Tensor:
    """Validate ``x`` as a point cloud or, when ``distance_matrix`` is true, as a distance matrix."""
    if distance_matrix:
        return check_distance_matrix(x, name)
    return check_points(x, name)
