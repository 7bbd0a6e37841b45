"""Correlation of score histories with a monitored metric (torchmetrics' Pearson and Spearman).

A lens callback records one value per measurement of each score and of the metric it is
compared with (e.g. ``val/acc``); :func:`correlation_metrics` turns those series into the
``{score}/pearson_{metric}`` and ``{score}/spearman_{metric}`` values it logs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lightning_topo.scores.names import target_suffix

__all__ = ["correlation_metrics", "correlation_names", "pearson_spearman"]


def pearson_spearman(
    values: Sequence[float] | Tensor, target: Sequence[float] | Tensor
) -> tuple[Tensor, Tensor]:
    """Pearson and Spearman correlation of two equally long series ``(m,)``, ``m >= 2``.

    Returns:
        Two 0-d float64 tensors; both NaN when either series is constant (the correlation is
        undefined; torchmetrics would warn and return a clipped value instead).

    Raises:
        ValueError: different lengths or fewer than 2 values.
    """
    # torchmetrics is imported here, not at module level: importing it loads transformers (its
    # text metrics), which would make `import lightning_topo.scores` slow and touch sys.meta_path.
    from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

    x = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(target, dtype=torch.float64).reshape(-1)
    if x.numel() != y.numel() or x.numel() < 2:
        raise ValueError(
            f"values and target must be two series of the same length >= 2; got {x.numel()} and {y.numel()}"
        )
    if bool(x.std() == 0) or bool(y.std() == 0):
        nan = torch.tensor(math.nan, dtype=torch.float64)
        return nan, nan.clone()
    return pearson_corrcoef(x, y), spearman_corrcoef(x, y)


def correlation_names(name: str, target_name: str) -> tuple[str, str]:
    """The names of ``name``'s Pearson and Spearman correlations with ``target_name``:
    ``("topo/psf/pearson_val_acc", "topo/psf/spearman_val_acc")`` for ``topo/psf`` and ``val/acc``."""
    suffix = target_suffix(target_name)
    return f"{name}/pearson_{suffix}", f"{name}/spearman_{suffix}"


def correlation_metrics(
    series: Mapping[str, Sequence[float]],
    target: Sequence[float],
    *,
    target_name: str,
    min_points: int = 3,
) -> dict[str, Tensor]:
    """Correlate every score series with ``target``, over the measurements where both are finite.

    Args:
        series: ``{score name: values}``, each aligned with ``target`` (one value per measurement).
        target: the monitored metric's value at each measurement.
        target_name: the metric's name; ``/`` becomes ``_`` in the result's names.
        min_points: a score needs at least this many finite pairs (default 3) to get a value.

    Returns:
        ``{f"{score}/pearson_{metric}": 0-d tensor, f"{score}/spearman_{metric}": ...}``, e.g.
        ``topo/psf/pearson_val_acc``; NaN when either series is constant.
    """
    y = torch.as_tensor(list(target), dtype=torch.float64)
    out: dict[str, Tensor] = {}
    for name, values in series.items():
        x = torch.as_tensor(list(values), dtype=torch.float64)
        if x.shape != y.shape:
            raise ValueError(f"series {name!r} has {x.numel()} values but target has {y.numel()}")
        keep = torch.isfinite(x) & torch.isfinite(y)
        if int(keep.sum()) < min_points:
            continue
        pearson, spearman = pearson_spearman(x[keep], y[keep])
        pearson_name, spearman_name = correlation_names(name, target_name)
        out[pearson_name], out[spearman_name] = pearson, spearman
    return out
