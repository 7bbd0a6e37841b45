"""Every pruning setting and its default, validated once (``PruningConfig``).

The library functions (:func:`~lightning_topo.pruning.prune_model`,
:func:`~lightning_topo.pruning.compute_importance`, :func:`~lightning_topo.pruning.plan_keep_masks`),
the ``TopologicalPruning`` callback and the ``lightning-topo prune`` command all read their defaults
from :data:`DEFAULTS` and check their arguments with :class:`PruningConfig`, so a bad value is refused
with the same message, naming the argument, before any model is scored, changed or written.

Exception policy (the package's, :mod:`lightning_topo.scores.checks`): ``TypeError`` for a value of
the wrong type (``ratio="0.6"``, ``min_heads=1.5``, ``seed=None``), ``ValueError`` for a value of
the right type that is out of range or not one of the choices (``ratio=0``, ``method="nope"``).

This module imports only the leaf :mod:`lightning_topo.scores.checks` from the rest of the package.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_topo.scores.checks import check_int, check_seed

__all__ = [
    "PruningConfig",
    "DEFAULTS",
    "METHODS",
    "DEFAULT_TOPOLOGICAL",
    "UNIT_KINDS",
    "STATS",
    "METHOD_STATS",
    "resolve_stat",
    "check_units",
    "check_ratio",
    "check_quantile",
    "check_stat",
    "check_method",
]

#: Kinds of structural units that can be removed: FFN intermediate units and attention heads.
UNIT_KINDS: tuple[str, ...] = ("ffn", "heads")
#: Summaries of a unit's H0 diagram: ``"max"`` = longest finite bar, ``"total"`` = sum of bars.
STATS: tuple[str, ...] = ("max", "total")
#: The summary each topological reading uses when ``stat`` is ``None`` (the default), chosen by the
#: benchmark (``docs/pruning.md``); any other method, or a custom callable, gets ``"max"``.
METHOD_STATS: dict[str, str] = {"topological-1d": "max", "topological-contribution": "total"}
#: The reading that ``method="topological"`` stands for (chosen by the benchmark, ``docs/pruning.md``).
DEFAULT_TOPOLOGICAL = "topological-contribution"
#: Names of the built-in importance methods (``"topological"`` is an alias of :data:`DEFAULT_TOPOLOGICAL`).
METHODS: tuple[str, ...] = (
    "topological",
    "topological-redundancy",
    "topological-1d",
    "topological-contribution",
    "magnitude",
    "activation",
    "random",
)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_ratio(ratio: object, *, name: str = "ratio") -> float:
    """``ratio`` (fraction of encoder parameters kept) as a ``float`` in ``(0, 1]``; refuses None, NaN, bools."""
    accepted = f"{name} (fraction of encoder parameters kept) must be a number in (0, 1], e.g. 0.6"
    if not _is_real(ratio):
        raise TypeError(f"{accepted}; got {ratio!r} ({type(ratio).__name__})")
    if not math.isfinite(float(ratio)) or not 0.0 < float(ratio) <= 1.0:  # type: ignore[arg-type]
        raise ValueError(f"{accepted}; got {ratio!r}")
    return float(ratio)  # type: ignore[arg-type]


def check_quantile(quantile: object, *, name: str = "quantile") -> float | None:
    """``quantile`` (per-layer share of units dropped) as a ``float`` in ``[0, 1)``, or ``None``."""
    if quantile is None:
        return None
    accepted = f"{name} (per-layer share of units dropped) must be a number in [0, 1) or None"
    if not _is_real(quantile):
        raise TypeError(f"{accepted}; got {quantile!r} ({type(quantile).__name__})")
    if not math.isfinite(float(quantile)) or not 0.0 <= float(quantile) < 1.0:  # type: ignore[arg-type]
        raise ValueError(f"{accepted}; got {quantile!r}")
    return float(quantile)  # type: ignore[arg-type]


def check_units(units: object, *, name: str = "units") -> tuple[str, ...]:
    """``units`` as a tuple of distinct kinds from :data:`UNIT_KINDS`, in the given order.

    A single kind given as a string (``"ffn"``) means ``("ffn",)``; it is never split into characters.
    """
    if isinstance(units, str):
        units = (units,)
    if not isinstance(units, Sequence) or isinstance(units, bytes):
        raise TypeError(f"{name} must be a kind or a sequence of kinds from {UNIT_KINDS}; got {units!r}")
    out = tuple(dict.fromkeys(units))
    bad = [u for u in out if u not in UNIT_KINDS]
    if bad or not out:
        raise ValueError(
            f"{name} must be a non-empty subset of {UNIT_KINDS}, e.g. ('ffn', 'heads') or 'ffn'; got {units!r}"
        )
    return out


def check_stat(stat: object, *, name: str = "stat", allow_none: bool = False) -> str | None:
    """``stat`` if it is one of :data:`STATS` (or ``None`` when ``allow_none``: the method's own)."""
    if stat is None and allow_none:
        return None
    if stat not in STATS:
        none = " or None (the method's own, see METHOD_STATS)" if allow_none else ""
        raise ValueError(
            f"{name} must be 'max' (longest finite H0 bar) or 'total' (sum of H0 bars){none}; got {stat!r}"
        )
    return stat  # type: ignore[return-value]


def resolve_stat(method: str, stat: str | None) -> str:
    """``stat``, or for ``None`` the summary :data:`METHOD_STATS` gives ``method`` (else ``"max"``)."""
    if stat is not None:
        return check_stat(stat)  # type: ignore[return-value]
    return METHOD_STATS.get(method, "max")


def check_method(method: object, *, name: str = "method") -> str | Callable[..., Any]:
    """``method`` if it is a built-in name from :data:`METHODS` or a callable importance function."""
    if callable(method) and not isinstance(method, str):
        return method
    if not isinstance(method, str):
        raise TypeError(
            f"{name} must be one of {METHODS} or a callable importance function "
            f"(see lightning_topo.pruning.importance.ImportanceFn); got {method!r} ({type(method).__name__})"
        )
    if method not in METHODS:
        raise ValueError(
            f"{name} must be one of {METHODS} or a callable importance function "
            f"(see lightning_topo.pruning.importance.ImportanceFn); got {method!r}"
        )
    return method  # type: ignore[return-value]


@dataclass(frozen=True)
class PruningConfig:
    """All pruning settings with their defaults; every field is checked at construction.

    Attributes:
        method: importance method, a name from :data:`METHODS` or a callable
            (:data:`~lightning_topo.pruning.importance.ImportanceFn`). Default ``"topological"``.
        ratio: fraction of the encoder's parameters kept, in ``(0, 1]`` (default 0.6). May be
            ``None`` only when ``quantile`` is given.
        quantile: instead of ``ratio``, each layer drops this share of its lowest-scoring units,
            in ``[0, 1)`` (the paper's Q1/Q2/Q3 = 0.25/0.5/0.75). Default ``None``.
        units: kinds to prune, a non-empty subset of :data:`UNIT_KINDS` (a single string is one kind).
        min_heads: heads each layer keeps at least (``>= 1``; a layer without heads is not representable).
        min_ffn: FFN units each layer keeps at least (``>= 1``).
        ffn_multiple: with ``ratio``, pruned FFN widths are rounded down to a multiple of this
            (default 8, the SIMD-friendly width; ``1`` keeps the exact budget).
        max_positions: token positions sampled for calibration (``>= 2``, default 2048).
        max_batches: calibration batches read at most by the library functions (``None`` = all).
        calibration_batches: training batches the callback and the CLI draw for calibration (default 16).
        stat: summary of a unit's H0 diagram for ``topological-1d`` and ``topological-contribution``:
            ``"max"`` (longest finite bar) or ``"total"`` (sum of bars); ``None`` (default) = the
            method's own from :data:`METHOD_STATS` (``max`` for 1-D, ``total`` for contribution).
        seed: seeds the position sample and the ``random`` method (an integer ``>= 0``).

    Raises:
        TypeError: on the first field of a wrong type, naming it, what is accepted and what was given.
        ValueError: on the first field out of range or not one of the choices (the same message).
    """

    method: str | Callable[..., Any] = "topological"
    ratio: float | None = 0.6
    quantile: float | None = None
    units: tuple[str, ...] = UNIT_KINDS
    min_heads: int = 1
    min_ffn: int = 1
    ffn_multiple: int = 8
    max_positions: int = 2048
    max_batches: int | None = None
    calibration_batches: int = 16
    stat: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        checked = {
            "method": check_method(self.method),
            "quantile": check_quantile(self.quantile),
            "units": check_units(self.units),
            "min_heads": check_int(self.min_heads, "min_heads", minimum=1, hint=" (a layer needs at least one head)"),
            "min_ffn": check_int(self.min_ffn, "min_ffn", minimum=1, hint=" (a layer needs at least one FFN unit)"),
            "ffn_multiple": check_int(self.ffn_multiple, "ffn_multiple", minimum=1, hint=" (1 disables rounding)"),
            "max_positions": check_int(self.max_positions, "max_positions", minimum=2),
            "max_batches": check_int(self.max_batches, "max_batches", minimum=1, allow_none=True),
            "calibration_batches": check_int(self.calibration_batches, "calibration_batches", minimum=1),
            "stat": check_stat(self.stat, allow_none=True),
            "seed": check_seed(self.seed),
        }
        if self.ratio is not None or checked["quantile"] is None:
            checked["ratio"] = check_ratio(self.ratio)
        for key, value in checked.items():
            object.__setattr__(self, key, value)

    def replace(self, **changes: Any) -> PruningConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def importance_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~lightning_topo.pruning.compute_importance`."""
        keys = ("method", "units", "max_positions", "max_batches", "stat", "seed")
        return {k: getattr(self, k) for k in keys}

    def plan_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~lightning_topo.pruning.plan_keep_masks`."""
        keys = ("ratio", "quantile", "units", "min_heads", "min_ffn", "ffn_multiple")
        return {k: getattr(self, k) for k in keys}

    def prune_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~lightning_topo.pruning.prune_model` (all but ``calibration_batches``)."""
        out = dataclasses.asdict(self)
        out.pop("calibration_batches")
        return out


#: The defaults, used as the keyword defaults of the library functions.
DEFAULTS = PruningConfig()
