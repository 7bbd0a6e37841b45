r"""The base of every lens metric: a :class:`torchmetrics.Metric` over hidden states.

A lens is a torchmetrics ``Metric``: ``update`` takes one batch's hidden states (plus the labels
and, where the lens needs them, the token ids), states are registered with
``add_state(..., dist_reduce_fx=...)`` so that ``reset`` and the synchronisation over DDP
processes are torchmetrics', and ``compute`` returns a typed :class:`LensResult` whose metric
names are generated once (:mod:`lightning_topo.scores.names`).

The same object serves its monitor callback, :func:`lightning_topo.analyze` and a user's own
``validation_step``::

    self.val_psf = PersistenceScore(layers=-1)          # in __init__
    out = self.net(**inputs, output_hidden_states=True)  # in validation_step
    self.val_psf.update(out.hidden_states, batch["attention_mask"], batch["labels"])
    ...
    self.log_dict(self.val_psf.compute().metrics())      # in on_validation_epoch_end
    self.val_psf.reset()

Layers follow one convention in every lens: hidden-state indices, ``0`` the embeddings, ``i``
the output of encoder layer ``i``, negative from the end (``-1`` the last), or ``"all"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_topo.representations.capture import HiddenStateCapture, num_hidden_layers
from lightning_topo.scores.checks import LayerSpec, check_int, check_layers, check_seed, resolve_layers
from lightning_topo.scores.names import metric_name

__all__ = ["LensMetric", "LensResult"]


@dataclass
class LensResult:
    """What a lens computed in one measurement.

    Attributes:
        values: ``{name: 0-d tensor}``, names without the prefix (``"psf"``, ``"psf/layer_6"``).
        headline: the key of ``values`` that is the lens's headline score (no layer in its name).
        layers: the hidden-state indices measured, ascending.
        prefix: the lens's metric prefix (``"topo"``).
        extras: what figures need besides the numbers (diagrams, per-head values, ...).
    """

    values: dict[str, Tensor]
    headline: str
    layers: list[int]
    prefix: str
    extras: dict[str, Any] = field(default_factory=dict)

    def metrics(self, prefix: str | None = None) -> dict[str, float]:
        """``{"{prefix}/{name}": float}`` of every value (``prefix``: the lens's by default)."""
        p = (prefix or self.prefix).strip("/")
        return {f"{p}/{name}": float(value) for name, value in self.values.items()}

    def headline_name(self, prefix: str | None = None) -> str:
        return f"{(prefix or self.prefix).strip('/')}/{self.headline}"

    @classmethod
    def nan(cls, names: Sequence[str], headline: str, layers: list[int], prefix: str) -> LensResult:
        """A result with NaN under every name (a diverged model: EarlyStopping(check_finite) sees it)."""
        return cls({n: torch.tensor(math.nan) for n in names}, headline, layers, prefix)


class LensMetric(Metric):
    r"""Base of the four lens metrics (see the module docstring).

    Subclasses declare ``prefix`` (the default ``log_prefix``), ``headline`` (the headline score
    name without prefix), register their states in ``__init__`` and implement ``update`` and
    ``compute``.

    Args:
        layers: hidden-state index, list of indices or ``"all"`` (see the module docstring).
        max_samples: the most examples (sequences) one measurement reads on each process
            (``None``: all); the same meaning in every lens.
        seed: seed of every random choice of the lens (int >= 0).
        kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``process_group``, ...).

    Raises:
        TypeError / ValueError: a bad argument (the message names it).
    """

    is_differentiable: ClassVar[bool] = False
    higher_is_better: ClassVar[bool | None] = None
    full_state_update: ClassVar[bool] = False
    prefix: ClassVar[str] = "lens"
    headline: ClassVar[str] = ""
    #: Whether :meth:`compute` is costly enough to run on one process and broadcast (monitors read it).
    compute_on_rank_zero: ClassVar[bool] = False

    def __init__(
        self, layers: LayerSpec = -1, max_samples: int | None = None, seed: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.layers = check_layers(layers)
        self.max_samples = check_int(max_samples, "max_samples", minimum=1, allow_none=True)
        self.seed = check_seed(seed)
        self.num_layers: int | None = None
        self._seen = 0

    def bind(self, num_layers: int) -> list[int]:
        """Resolve ``layers`` for a model with ``num_layers`` encoder layers (ascending indices).

        Raises:
            ValueError: an index out of range (the message gives the valid range).
        """
        self.num_layers = int(num_layers)
        return self.selected_layers

    @property
    def selected_layers(self) -> list[int]:
        if self.num_layers is None:
            raise RuntimeError(f"{type(self).__name__}: call bind(num_layers) or update(...) first")
        return sorted(resolve_layers(self.layers, self.num_layers))

    def _take(self, n: int) -> int:
        """How many of the next ``n`` examples still fit under ``max_samples`` (this process)."""
        room = n if self.max_samples is None else max(0, min(n, self.max_samples - self._seen))
        self._seen += room
        return room

    def reset(self) -> None:
        super().reset()
        self._seen = 0

    # ------------------------------------------------------------------ how drivers feed the lens
    # A monitor and analyze() never look inside a lens: they build its capture, run the model,
    # and hand each captured call to update_from. A lens that needs more than hidden states
    # (geometry: attention internals) overrides these two.
    #: Whether update needs class labels (drivers refuse label-less data before any training).
    needs_labels: ClassVar[bool] = True

    def check_model(self, model: Any) -> None:
        """Refuse a model the lens cannot read, before anything runs (default: the layer count).

        Raises:
            TypeError: not a supported encoder. ValueError: ``layers`` out of range.
        """
        self.bind(num_hidden_layers(model))

    def make_capture(self, model: Any) -> Any:
        """The forward hooks that give this lens its inputs (``attach``/``detach``/``pop``)."""
        return HiddenStateCapture(model, keep=self.selected_layers)

    def update_from(self, captured: Any, labels: Tensor | None) -> None:
        """``update`` from one item of ``make_capture(model).pop()`` and the batch's labels."""
        self.update(captured.hidden_states, captured.attention_mask, labels, captured.input_ids)

    def name(self, *score: str, **parts: Any) -> str:
        """A metric name of this lens without prefix (the grammar of :mod:`~lightning_topo.scores.names`)."""
        return metric_name(self.prefix, *score, **parts).split("/", 1)[1]
