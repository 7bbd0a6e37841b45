"""Pooling, the pooled-vectors container and the rank-zero helper shared by the lenses.

Layer indices follow a model's ``output_hidden_states``: 0 is the embedding output, ``i`` the
output of encoder layer ``i`` and ``-1`` the last layer; negative indices are normalised to
``0..num_layers`` (:func:`resolve_layers`, from :mod:`lightning_topo.scores.checks`, re-exported
here with :func:`check_layers` and ``LayerSpec``). Hidden states are read by
:class:`~lightning_topo.representations.capture.HiddenStateCapture` and fed to the lens metrics
(:mod:`lightning_topo.metrics`); :func:`lightning_topo.analyze` drives them over a dataloader.
This module never imports Lightning's ``Trainer`` nor calls ``torch.distributed``: the one
distributed helper, :func:`run_on_rank_zero_and_broadcast`, takes the collective as an argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from lightning_topo.scores.checks import LayerSpec, check_choice, check_layers, resolve_layers
from lightning_topo.scores.presets import POOLINGS

__all__ = [
    "LayerSpec",
    "Representations",
    "check_layers",
    "pool_hidden_states",
    "resolve_layers",
    "run_on_rank_zero_and_broadcast",
]

T = TypeVar("T")

@dataclass
class Representations:
    """Pooled hidden states of a dataset (what :meth:`~lightning_topo.metrics.PersistenceScore.representations`
    returns).

    Attributes:
        points: ``{layer: (n, d) tensor}``, one entry per selected layer (non-negative index),
            all sharing the row order of ``labels``.
        labels: ``(n,)`` int64 class labels.
        num_layers: encoder layers of the model (``len(hidden_states) - 1``).
        pooling: ``"cls"`` or ``"mean"``.
    """

    points: dict[int, Tensor]
    labels: Tensor
    num_layers: int
    pooling: str

    @property
    def layers(self) -> list[int]:
        """The selected (non-negative) layer indices, in the order they were requested."""
        return list(self.points)

    def class_counts(self) -> dict[int, int]:
        """Number of points per class, classes ascending."""
        values, counts = torch.unique(self.labels, return_counts=True)
        return {int(v): int(c) for v, c in zip(values.tolist(), counts.tolist(), strict=True)}


# ----------------------------------------------------------------------------- pooling


def pool_hidden_states(hidden: Tensor, attention_mask: Tensor | None, pooling: str) -> Tensor:
    """Pool token vectors to one vector per sequence.

    Args:
        hidden: ``(batch, seq, d)`` hidden states.
        attention_mask: ``(batch, seq)``, 1 for real tokens (``None``: all real).
        pooling: ``"cls"`` (the first token) or ``"mean"`` (mean over the real tokens).

    Returns:
        ``(batch, d)`` tensor.
    """
    check_choice(pooling, "pooling", POOLINGS)
    if pooling == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


# ----------------------------------------------------------------------------- distributed


def run_on_rank_zero_and_broadcast(
    fn: Callable[[], T], *, is_global_zero: bool, broadcast: Callable[[Any], Any]
) -> T:
    """Run ``fn`` on the global-zero process only and hand its (picklable) result to every process.

    Args:
        fn: the computation (e.g. persistence diagrams of a gathered cloud).
        is_global_zero: whether this process computes (``trainer.is_global_zero``).
        broadcast: sends an object from global rank 0 to all processes and returns it
            (``trainer.strategy.broadcast``; the identity for a single process).

    An exception raised on rank 0 is re-raised on every process, so no process waits for a
    result that never comes. Tensors in the result should be on the CPU.
    """
    payload: tuple[str, Any] | None = None
    if is_global_zero:
        try:
            payload = ("ok", fn())
        except Exception as err:  # re-raised on every process below
            payload = ("error", err)
    status, value = broadcast(payload)
    if status == "error":
        raise value
    return value
