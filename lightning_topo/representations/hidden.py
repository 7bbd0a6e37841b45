"""Collect pooled hidden states per layer, per class: the one collection step behind every lens.

:class:`RepresentationCollector` pools the selected layers of
:class:`~lightning_topo.encoding.EncodedBatch` es as they come (a callback feeds it the batches
a ``validation_step`` already encoded: no second forward pass); :func:`collect_representations`
drives it over a dataloader. :meth:`RepresentationCollector.finalize` concatenates, gathers the
shards of all processes through a ``gather`` function the caller passes in (a Lightning
callback passes one built on ``trainer.strategy.all_gather``; this module never imports
Lightning's ``Trainer`` nor calls ``torch.distributed`` itself), and takes one seeded per-class
subsample shared by every layer.

Layer indices follow ``EncodedBatch.hidden_states``: 0 is the embedding output, ``i`` the output
of encoder layer ``i`` and ``-1`` the last layer; negative indices are normalised to
``0..num_layers``. Sampling is order independent (see :mod:`lightning_topo.scores.sampling`).

Example::

    reps = collect_representations(model, val_loader, layers=[-1, 6], pooling="cls",
                                   max_points_per_class=512, seed=0)
    reps.points[12].shape  # (n, hidden) for the last layer of a 12-layer model
    reps.labels.shape      # (n,)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any, TypeVar

import torch
from torch import Tensor

from lightning_topo.encoding import EncodedBatch, encode_batch, ensure_hidden_state_capture, module_device
from lightning_topo.scores.checks import check_choice, check_int, check_seed
from lightning_topo.scores.presets import POOLINGS
from lightning_topo.scores.sampling import check_max_points_per_class, subsample_indices

__all__ = [
    "GatherFn",
    "LayerSpec",
    "NonFiniteHiddenStatesError",
    "RepresentationCollector",
    "Representations",
    "check_layers",
    "collect_representations",
    "gather_variable",
    "pool_hidden_states",
    "resolve_layers",
    "run_on_rank_zero_and_broadcast",
]

T = TypeVar("T")

#: A layer selection: an index, a sequence of indices, or ``"all"``.
LayerSpec = int | Sequence[int] | str
#: Concatenates a tensor ``(n_r, ...)`` over all processes, ``n_r`` may differ by rank (see
#: :func:`gather_variable`); ``None`` means a single process.
GatherFn = Callable[[Tensor], Tensor]


class NonFiniteHiddenStatesError(ValueError):
    """Hidden states with NaN/inf entries (usually a diverged model).

    Attributes:
        layer: the first layer found with non-finite values.
    """

    def __init__(self, message: str, layer: int) -> None:
        super().__init__(message)
        self.layer = layer


@dataclass
class Representations:
    """Pooled hidden states of a dataset.

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

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteHiddenStatesError` naming the first layer with NaN/inf values."""
        for layer, p in self.points.items():
            if not bool(torch.isfinite(p).all()):
                n_bad = int((~torch.isfinite(p)).any(dim=1).sum())
                raise NonFiniteHiddenStatesError(
                    f"hidden states of layer {layer} have NaN/inf entries in {n_bad} of {p.shape[0]} "
                    "examples; the model has diverged (lower the learning rate, enable gradient "
                    "clipping) or the input is bad",
                    layer=layer,
                )


# ----------------------------------------------------------------------------- layers / pooling


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


def gather_variable(tensor: Tensor, all_gather: Callable[[Tensor], Tensor]) -> Tensor:
    """Concatenate ``tensor`` ``(n_r, ...)`` of every process in rank order; ``n_r`` may differ.

    Args:
        tensor: this process's rows.
        all_gather: a collective that stacks a same-shaped tensor from every process into
            ``(world_size, ...)``, e.g. Lightning's ``trainer.strategy.all_gather`` under a
            multi-process strategy.

    Returns:
        ``(sum_r n_r, ...)`` on ``tensor.device``, the same on every process.

    Rows are padded to the longest shard, gathered, and the padding dropped again (two
    collectives: the sizes, then the rows).
    """
    local = tensor.detach().contiguous()
    sizes = all_gather(torch.tensor([local.shape[0]], dtype=torch.long, device=local.device))
    counts = [int(n) for n in sizes.reshape(-1).tolist()]
    longest = max(counts)
    if local.shape[0] < longest:
        pad = local.new_zeros((longest - local.shape[0], *local.shape[1:]))
        local = torch.cat([local, pad])
    stacked = all_gather(local)
    return torch.cat([stacked[r, :n] for r, n in enumerate(counts)]).to(tensor.device)


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


# ----------------------------------------------------------------------------- collection


def _move_to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_move_to_device(v, device) for v in batch)
    return batch


class RepresentationCollector:
    """Accumulates pooled hidden states batch by batch; :meth:`finalize` gathers and samples.

    :func:`collect_representations` drives it over a dataloader; a callback can instead feed it
    the :class:`~lightning_topo.encoding.EncodedBatch` a ``validation_step`` already computed
    (no second forward pass).

    Args:
        layers: int, list of ints or ``"all"``; checked here, resolved against the first
            batch's depth.
        pooling: ``"cls"`` (default) or ``"mean"``.
        max_batches: keep at most this many batches (``None``: all); :meth:`add` ignores the rest.

    Raises:
        TypeError / ValueError: a bad argument (the message names it).
    """

    def __init__(self, layers: LayerSpec = -1, pooling: str = "cls", max_batches: int | None = None) -> None:
        self.layers = check_layers(layers)
        self.pooling = check_choice(pooling, "pooling", POOLINGS)
        self.max_batches = check_int(max_batches, "max_batches", minimum=1, allow_none=True)
        self.num_layers = -1
        self.num_batches = 0
        self._selected: list[int] | None = None
        self._chunks: dict[int, list[Tensor]] = {}
        self._labels: list[Tensor] = []

    @property
    def full(self) -> bool:
        """Whether ``max_batches`` batches were added."""
        return self.max_batches is not None and self.num_batches >= self.max_batches

    def add(self, encoded: EncodedBatch, batch: Mapping[str, Any] | None = None) -> None:
        """Pool the selected layers of one encoded batch (``labels`` from ``encoded`` or ``batch``).

        Raises:
            ValueError: no labels, or a layer index out of range for the model.
        """
        if self.full:
            return
        if self._selected is None:
            self.num_layers = encoded.num_layers
            self._selected = resolve_layers(self.layers, self.num_layers)
            self._chunks = {layer: [] for layer in self._selected}
        labels = encoded.labels
        if labels is None and isinstance(batch, Mapping):
            labels = batch.get("labels")
        if labels is None:
            raise ValueError(
                "collecting representations needs class labels: the batches have no 'labels' key"
            )
        with torch.no_grad():
            self._labels.append(labels.detach().reshape(-1).long())
            for layer in self._selected:
                pooled = pool_hidden_states(
                    encoded.hidden_states[layer], encoded.attention_mask, self.pooling
                )
                if pooled.dtype in (torch.float16, torch.bfloat16):
                    pooled = pooled.float()
                self._chunks[layer].append(pooled.detach())
        self.num_batches += 1

    def finalize(
        self,
        *,
        max_points_per_class: int | None = None,
        seed: int = 0,
        gather: GatherFn | None = None,
        check_finite: bool = True,
    ) -> Representations:
        """Concatenate, gather across processes, check finiteness, subsample per class.

        Args:
            max_points_per_class: seeded random cap per class (``None``: keep all); one
                subsample, keyed on the deepest selected layer, is applied to every layer.
            seed: sampling seed.
            gather: concatenates a tensor over all processes (e.g.
                ``functools.partial(gather_variable, all_gather=trainer.strategy.all_gather)``);
                ``None`` for a single process. Every process must call ``finalize`` then.
            check_finite: raise on NaN/inf hidden states (else the caller checks with
                :meth:`Representations.check_finite`).

        Raises:
            ValueError: nothing was added.
            NonFiniteHiddenStatesError: NaN/inf hidden states (names the layer).
        """
        cap = check_max_points_per_class(max_points_per_class)
        seed = check_seed(seed)
        if self._selected is None:
            raise ValueError("the dataloader yielded no batches; nothing to collect")
        labels = torch.cat(self._labels)
        points = {layer: torch.cat(self._chunks[layer]) for layer in self._selected}
        if gather is not None:
            labels = gather(labels)
            points = {layer: gather(p) for layer, p in points.items()}
        reps = Representations(points=points, labels=labels, num_layers=self.num_layers, pooling=self.pooling)
        if check_finite:
            reps.check_finite()
        if cap is not None:
            keep = subsample_indices(labels, points[max(points)], cap, seed)
            reps.labels = labels[keep.to(labels.device)]
            reps.points = {layer: p[keep.to(p.device)] for layer, p in points.items()}
        return reps


def collect_representations(
    module: torch.nn.Module,
    dataloader: Iterable[Mapping[str, Any]],
    *,
    layers: LayerSpec = -1,
    pooling: str = "cls",
    max_points_per_class: int | None = None,
    max_batches: int | None = None,
    seed: int = 0,
    gather: GatherFn | None = None,
    check_finite: bool = True,
) -> Representations:
    """Pooled hidden states of the examples in ``dataloader``, per layer, with their labels.

    Runs under ``torch.no_grad()`` with ``module`` in eval mode (its previous mode is restored),
    batches moved to the module's device; the global CPU random state is restored afterwards, so
    collecting does not change a training run's random stream (iterating a ``DataLoader`` draws
    its base seed from it).

    Args:
        module: a module with ``encode(batch) -> EncodedBatch`` or a Hugging Face encoder
            (see :func:`~lightning_topo.encoding.encode_batch`).
        dataloader: iterable of dict batches with ``input_ids``, ``attention_mask`` and
            ``labels`` ``(batch,)``.
        layers: int, list of ints, or ``"all"`` (see :func:`resolve_layers`; default ``-1``).
        pooling: ``"cls"`` (default) or ``"mean"`` (mean over the attention mask).
        max_points_per_class: seeded random subsample cap per class, int >= 2 (``None``: keep all).
        max_batches: read at most this many batches (per process under DDP; ``None``: all).
        seed: sampling seed, int >= 0.
        gather: under DDP, a function concatenating the shards of all processes (see
            :meth:`RepresentationCollector.finalize`); ``None``: this process's batches only.
        check_finite: raise :class:`NonFiniteHiddenStatesError` on NaN/inf hidden states.

    Returns:
        :class:`Representations` with ``points[layer]`` of shape ``(n, d)`` on the module's device.

    Raises:
        TypeError / ValueError: a bad argument, an empty dataloader, batches without labels, an
            out-of-range layer, or NaN/inf hidden states (the message names the layer).
    """
    collector = RepresentationCollector(layers=layers, pooling=pooling, max_batches=max_batches)
    cap = check_max_points_per_class(max_points_per_class)
    seed = check_seed(seed)
    device = module_device(module)
    ensure_hidden_state_capture(module)
    was_training = module.training
    module.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for batch in dataloader:
                batch = _move_to_device(batch, device)
                collector.add(encode_batch(module, batch), batch)
                if collector.full:  # stop before the loader fetches another batch
                    break
    finally:
        module.train(was_training)
    return collector.finalize(max_points_per_class=cap, seed=seed, gather=gather, check_finite=check_finite)
