r"""
Metric names
============

The one place where lens metric names are built and read back. Every name is slash-separated::

    {prefix}/{score...}[/layer_{i}][/class_{c}][/{detail...}][/std]
    {metric}/{pearson|spearman}_{target}          (a correlation of ``metric`` with ``target``)

``prefix`` is the lens's ``log_prefix`` (``topo``, ``geometry``, ``concepts``, ``probe``,
``prune``, or the user's own); ``score`` one or more components (``psf``, ``h0/entropy``,
``cone``, ``aligned/sentiment``); ``layer_{i}`` the hidden-state index (0 = embeddings, ``i`` =
output of encoder layer ``i``); ``class_{c}`` a class; ``detail`` what is measured inside the
layer (``input``, ``heads``, ``attention_output``); ``std`` marks a standard error.

Lenses build names with :func:`metric_name`; the report, the plots and :func:`analyze` read them
with :func:`parse_metric_name`, so nobody parses names with a private regular expression.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

__all__ = ["MetricName", "metric_name", "parse_metric_name", "target_suffix"]

_LAYER = re.compile(r"^layer_(\d+)$")
_CLASS = re.compile(r"^class_(.+)$")
_CORRELATION = re.compile(r"^(pearson|spearman)_(.+)$")
CORRELATIONS = ("pearson", "spearman")


def target_suffix(target: str) -> str:
    """The form a monitored metric takes in a correlation's name: ``val/acc`` -> ``val_acc``."""
    return target.replace("/", "_")


@dataclass(frozen=True)
class MetricName:
    """A parsed metric name (see the module docstring for the grammar).

    Attributes:
        prefix: first component (``"topo"``).
        score: the score's components after the prefix and before any layer/class (``("psf",)``).
        layer: hidden-state index, or ``None`` for a name without ``layer_{i}``.
        klass: class label as written in the name (``"0"``), or ``None``.
        detail: components after the layer/class (``("heads",)``).
        std: the name is the standard error of the score (ends in ``/std``).
        correlation: ``(kind, target)`` for a correlation name (``("spearman", "val_acc")``), else ``None``.
    """

    prefix: str
    score: tuple[str, ...]
    layer: int | None = None
    klass: str | None = None
    detail: tuple[str, ...] = ()
    std: bool = False
    correlation: tuple[str, str] | None = None

    def __str__(self) -> str:
        parts = [self.prefix, *self.score]
        if self.layer is not None:
            parts.append(f"layer_{self.layer}")
        if self.klass is not None:
            parts.append(f"class_{self.klass}")
        parts += list(self.detail)
        if self.std:
            parts.append("std")
        if self.correlation is not None:
            parts.append(f"{self.correlation[0]}_{self.correlation[1]}")
        return "/".join(parts)

    @property
    def base(self) -> MetricName:
        """The score itself: without ``/std`` and without a correlation suffix."""
        return replace(self, std=False, correlation=None)

    @property
    def series(self) -> MetricName:
        """The name with its layer removed: all ``layer_{i}`` of one score share this key (one panel)."""
        return replace(self, layer=None)

    @property
    def family(self) -> str:
        """``prefix/score`` (``"topo/psf"``, ``"geometry/cone"``)."""
        return "/".join([self.prefix, *self.score])


def metric_name(
    prefix: str,
    *score: str,
    layer: int | None = None,
    klass: object = None,
    detail: tuple[str, ...] | str = (),
    std: bool = False,
) -> str:
    """Build a name: ``metric_name("topo", "psf", layer=6)`` -> ``"topo/psf/layer_6"``."""
    if not prefix or not score:
        raise ValueError(f"a metric name needs a prefix and a score; got prefix={prefix!r}, score={score!r}")
    detail = (detail,) if isinstance(detail, str) else tuple(detail)
    return str(
        MetricName(
            prefix=prefix.strip("/"),
            score=tuple(score),
            layer=None if layer is None else int(layer),
            klass=None if klass is None else str(klass),
            detail=detail,
            std=std,
        )
    )


def parse_metric_name(name: str, prefixes: tuple[str, ...] | None = None) -> MetricName | None:
    """Read ``name`` back into its parts; ``None`` when it has no score (one component) or its
    prefix is not in ``prefixes`` (when given). Multi-component prefixes are matched first."""
    parts = [p for p in str(name).split("/") if p]
    if len(parts) < 2:
        return None
    prefix_len = 1
    if prefixes is not None:
        for p in sorted(prefixes, key=lambda s: -s.count("/")):
            n = p.strip("/").count("/") + 1
            if "/".join(parts[:n]) == p.strip("/") and len(parts) > n:
                prefix_len = n
                break
        else:
            return None
    prefix, rest = "/".join(parts[:prefix_len]), parts[prefix_len:]
    correlation = None
    m = _CORRELATION.match(rest[-1])
    if m and len(rest) > 1:
        correlation = (m.group(1), m.group(2))
        rest = rest[:-1]
    std = len(rest) > 1 and rest[-1] == "std"
    if std:
        rest = rest[:-1]
    score: list[str] = []
    layer = klass = None
    detail: list[str] = []
    for part in rest:
        lm, cm = _LAYER.match(part), _CLASS.match(part)
        if lm and layer is None and klass is None and score:
            layer = int(lm.group(1))
        elif cm and klass is None and score:
            klass = cm.group(1)
        elif layer is None and klass is None:
            score.append(part)
        else:
            detail.append(part)
    if not score:
        return None
    return MetricName(prefix, tuple(score), layer, klass, tuple(detail), std, correlation)
