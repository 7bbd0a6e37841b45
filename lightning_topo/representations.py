"""Collect pooled hidden states from a dataloader, per layer, with per-class sampling.

The one collection step behind every score and callback: run the model batch by batch through
:func:`lightning_topo.encoding.encode_batch` (under ``torch.no_grad()``, in eval mode, on the
module's device), pool each selected layer to one vector per sequence, gather across DDP ranks,
and subsample each class (seeded).

Layer indices follow ``EncodedBatch.hidden_states``: 0 is the embedding output, ``i`` the output
of encoder layer ``i`` and ``-1`` the last layer; negative indices are normalised to
``0..num_layers``.

Order independence (**choice**): before sampling, the points are put in a canonical order
(lexicographic in their coordinates), so the subsample depends only on the set of points and
the seed, not on the dataloader order or on how DDP ranks split the data.

Example::

    reps = collect_representations(model, val_loader, layers=[-1, 6], pooling="cls",
                                   max_points_per_class=512, seed=0)
    reps.points[12].shape  # (n, hidden) for the last layer of a 12-layer model
    reps.labels.shape      # (n,)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from lightning_topo.encoding import EncodedBatch, encode_batch, ensure_hidden_state_capture

__all__ = [
    "Representations",
    "NonFiniteHiddenStatesError",
    "collect_representations",
    "RepresentationCollector",
    "resolve_layers",
    "pool_hidden_states",
    "canonical_order",
    "sample_per_class",
    "is_distributed",
    "all_gather_variable",
    "run_on_rank_zero_and_broadcast",
]

T = TypeVar("T")

LayerSpec = int | Sequence[int] | str


class NonFiniteHiddenStatesError(ValueError):
    """Hidden states with NaN/inf entries (usually a diverged model)."""


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

    @property
    def classes(self) -> list[int]:
        """Distinct labels, sorted."""
        return [int(c) for c in torch.unique(self.labels).tolist()]

    def class_counts(self) -> dict[int, int]:
        """Number of points per class."""
        values, counts = torch.unique(self.labels, return_counts=True)
        return {int(v): int(c) for v, c in zip(values.tolist(), counts.tolist(), strict=True)}


# ----------------------------------------------------------------------------- layers / pooling


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
    n_states = num_layers + 1
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be an int, a list of ints or 'all'; got {layers!r}")
        return list(range(n_states))
    if isinstance(layers, bool):
        raise TypeError(f"layers must be an int, a list of ints or 'all'; got {layers!r}")
    items = [layers] if isinstance(layers, int) else list(layers)
    if not items:
        raise ValueError("layers must name at least one layer; got an empty list")
    out: list[int] = []
    for layer in items:
        if isinstance(layer, bool) or not isinstance(layer, int | np.integer):
            raise TypeError(f"layers must contain ints; got {layer!r} ({type(layer).__name__})")
        layer = int(layer)
        if not -n_states <= layer < n_states:
            raise ValueError(
                f"layers: index {layer} is out of range for a model with {num_layers} encoder layers; "
                f"valid indices are {-n_states}..{num_layers} (0 = embeddings, -1 = last layer)"
            )
        layer = layer % n_states
        if layer not in out:
            out.append(layer)
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
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        if attention_mask is None:
            return hidden.mean(dim=1)
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    raise ValueError(f"pooling must be 'cls' or 'mean'; got {pooling!r}")


# ----------------------------------------------------------------------------- sampling


def canonical_order(points: Tensor) -> Tensor:
    """Row permutation ``(n,)`` sorting ``points`` lexicographically (column 0 first).

    Used so that sampling does not depend on the order the points arrived in.
    """
    x = points.detach().to("cpu", torch.float64).numpy()
    if x.shape[0] <= 1:
        return torch.arange(x.shape[0], device=points.device)
    order = np.lexsort(x.T[::-1])
    return torch.from_numpy(order.astype(np.int64)).to(points.device)


def _check_labels(labels: object, n: int, name: str = "labels") -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer class labels; got {type(labels).__name__}")
    if labels.dim() != 1:
        raise ValueError(f"{name} must be 1-D of shape (n,); got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype; got {labels.dtype}. Convert with {name}.long()")
    if labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} entries but points has {n} rows; they must match")
    return labels


def sample_per_class(
    points: Tensor,
    labels: Tensor,
    max_points_per_class: int | None,
    *,
    method: str = "random",
    bandwidth: float = 1.0,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Cap the number of points of every class (seeded, differentiable w.r.t. ``points``).

    Classes with at most ``max_points_per_class`` points are kept whole. Larger classes are
    either subsampled without replacement (``method="random"``) or resampled from a Gaussian
    kernel density estimate (``method="kde"``: ``max_points_per_class`` points drawn with
    replacement plus ``N(0, bandwidth^2 I)`` noise, exactly what
    ``sklearn.neighbors.KernelDensity(kernel="gaussian", bandwidth=bandwidth).sample`` does;
    BERTops' rule). ``method="none"`` keeps every point. Points are put in
    :func:`canonical_order` first, so the result depends on the point set and ``seed`` only.

    Args:
        points: ``(n, d)`` float tensor.
        labels: ``(n,)`` integer labels.
        max_points_per_class: cap per class (``None``: no cap).
        method: ``"random"``, ``"kde"`` or ``"none"``.
        bandwidth: KDE noise standard deviation (``method="kde"``).
        seed: seed of the sampling generator.

    Returns:
        ``(points, labels)``: the inputs unchanged when no class exceeds the cap, else the
        sampled points grouped by class in ascending label order.
    """
    from lightning_topo.scores.presets import SAMPLING_METHODS

    if method not in SAMPLING_METHODS:
        raise ValueError(f"sampling method must be one of {SAMPLING_METHODS}; got {method!r}")
    if max_points_per_class is not None and (
        isinstance(max_points_per_class, bool) or int(max_points_per_class) < 2
    ):
        raise ValueError(
            f"max_points_per_class must be an int >= 2 or None (no cap); got {max_points_per_class!r}"
        )
    labels = _check_labels(labels, points.shape[0])
    if method == "none" or max_points_per_class is None:
        return points, labels
    if int(torch.unique(labels, return_counts=True)[1].max()) <= max_points_per_class:
        return points, labels
    order = canonical_order(points)
    points, labels = points[order], labels[order]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    out_points: list[Tensor] = []
    out_labels: list[Tensor] = []
    labels_cpu = labels.cpu()
    for c in torch.unique(labels_cpu).tolist():
        idx = torch.nonzero(labels_cpu == c, as_tuple=False).flatten()
        n_c = idx.numel()
        if max_points_per_class is not None and n_c > max_points_per_class:
            k = int(max_points_per_class)
            if method == "random":
                pick = torch.sort(torch.randperm(n_c, generator=gen)[:k]).values
                sel = points[idx[pick].to(points.device)]
            else:  # kde
                pick = torch.randint(0, n_c, (k,), generator=gen)
                noise = torch.randn(k, points.shape[1], generator=gen, dtype=torch.float64)
                sel = points[idx[pick].to(points.device)] + (bandwidth * noise).to(
                    points.device, points.dtype
                )
        else:
            sel = points[idx.to(points.device)]
        out_points.append(sel)
        out_labels.append(torch.full((sel.shape[0],), int(c), dtype=torch.long, device=labels.device))
    return torch.cat(out_points), torch.cat(out_labels)


def _subsample_indices(labels: Tensor, key: Tensor, max_points_per_class: int, seed: int) -> Tensor:
    """Row indices (into the original order) of a seeded per-class random subsample."""
    order = canonical_order(key)
    labels_sorted = labels[order].cpu()
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    keep: list[Tensor] = []
    for c in torch.unique(labels_sorted).tolist():
        idx = torch.nonzero(labels_sorted == c, as_tuple=False).flatten()
        if idx.numel() > max_points_per_class:
            pick = torch.sort(torch.randperm(idx.numel(), generator=gen)[:max_points_per_class]).values
            idx = idx[pick]
        keep.append(idx)
    return order.cpu()[torch.cat(keep)]


# ----------------------------------------------------------------------------- distributed


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one process."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _comm_device(tensor: Tensor) -> torch.device:
    backend = torch.distributed.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_variable(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` (``(n_r, ...)``, ``n_r`` may differ by rank) from all ranks, rank order.

    Every rank receives the full ``(sum n_r, ...)`` tensor, on ``tensor.device``. Without an
    initialised process group (or with one process) returns ``tensor`` unchanged.
    """
    if not is_distributed():
        return tensor
    dist = torch.distributed
    device = _comm_device(tensor)
    local = tensor.detach().to(device).contiguous()
    size = torch.tensor([local.shape[0]], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    if local.shape[0] < longest:
        pad = torch.zeros((longest - local.shape[0], *local.shape[1:]), dtype=local.dtype, device=device)
        local = torch.cat([local, pad])
    buffers = [torch.empty_like(local) for _ in counts]
    dist.all_gather(buffers, local)
    return torch.cat([b[:n] for b, n in zip(buffers, counts, strict=True)]).to(tensor.device)


def run_on_rank_zero_and_broadcast(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give its (picklable) result to every rank.

    Without an initialised multi-process group this is just ``fn()``. Tensors in the result
    should be on the CPU. An exception on rank 0 is re-raised on every rank (so no rank waits
    forever).
    """
    if not is_distributed():
        return fn()
    dist = torch.distributed
    payload: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            payload[0] = ("ok", fn())
        except Exception as err:  # re-raised on all ranks below
            payload[0] = ("error", err)
    device = _comm_device(torch.empty(0))
    dist.broadcast_object_list(payload, src=0, device=device)
    status, value = payload[0]
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


def _module_device(module: torch.nn.Module) -> torch.device:
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


class RepresentationCollector:
    """Accumulates pooled hidden states batch by batch; :meth:`finalize` gathers and samples.

    :func:`collect_representations` drives it over a dataloader; a callback can instead feed it
    the :class:`~lightning_topo.encoding.EncodedBatch` a ``validation_step`` already computed
    (no second forward pass).

    Args:
        layers: int, list of ints or ``"all"``; resolved against the first batch's depth.
        pooling: ``"cls"`` or ``"mean"``.
    """

    def __init__(self, layers: LayerSpec = -1, pooling: str = "cls") -> None:
        from lightning_topo.scores.presets import POOLINGS

        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
        self.layers = layers
        self.pooling = pooling
        self.num_layers = -1
        self.num_batches = 0
        self._selected: list[int] | None = None
        self._chunks: dict[int, list[Tensor]] = {}
        self._labels: list[Tensor] = []

    def add(self, encoded: EncodedBatch, batch: Mapping[str, Any] | None = None) -> None:
        """Pool the selected layers of one encoded batch (``labels`` from ``encoded`` or ``batch``).

        Raises:
            ValueError: no labels, or a layer index out of range for the model.
        """
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

    def reset(self) -> None:
        """Forget every batch added so far."""
        self.__init__(self.layers, self.pooling)  # type: ignore[misc]

    def finalize(
        self, *, max_points_per_class: int | None = None, seed: int = 0, gather: bool = True
    ) -> Representations:
        """Concatenate, gather across DDP ranks, check finiteness, subsample per class.

        Raises:
            ValueError: nothing was added.
            NonFiniteHiddenStatesError: NaN/inf hidden states (names the layer).
        """
        if self._selected is None:
            raise ValueError("dataloader yielded no batches; nothing to collect")
        selected = self._selected
        labels_all = torch.cat(self._labels)
        points = {layer: torch.cat(self._chunks[layer]) for layer in selected}
        if gather and is_distributed():
            labels_all = all_gather_variable(labels_all)
            points = {layer: all_gather_variable(p) for layer, p in points.items()}
        for layer, p in points.items():
            if not bool(torch.isfinite(p).all()):
                n_bad = int((~torch.isfinite(p)).any(dim=1).sum())
                raise NonFiniteHiddenStatesError(
                    f"hidden states of layer {layer} have NaN/inf entries in {n_bad} of {p.shape[0]} "
                    "examples; the model has diverged (lower the learning rate, enable gradient "
                    "clipping) or the input is bad"
                )
        if max_points_per_class is not None:
            keep = _subsample_indices(labels_all, points[selected[-1]], int(max_points_per_class), seed)
            labels_all = labels_all[keep.to(labels_all.device)]
            points = {layer: p[keep.to(p.device)] for layer, p in points.items()}
        return Representations(
            points=points, labels=labels_all, num_layers=self.num_layers, pooling=self.pooling
        )


def collect_representations(
    module: torch.nn.Module,
    dataloader: Iterable[Mapping[str, Any]],
    *,
    layers: LayerSpec = -1,
    pooling: str = "cls",
    max_points_per_class: int | None = None,
    max_batches: int | None = None,
    seed: int = 0,
    gather: bool = True,
) -> Representations:
    """Pooled hidden states of the examples in ``dataloader``, per layer, with their labels.

    Runs under ``torch.no_grad()`` with ``module`` in eval mode (its previous mode is restored),
    batches moved to the module's device; the global CPU random state is restored afterwards, so
    collecting does not change a training run's random stream. Under DDP (``gather=True`` and an initialised process
    group with world size > 1) every rank encodes its shard and the shards are all-gathered, so
    every rank returns the same full set (then sampled identically).

    Args:
        module: a module with ``encode(batch) -> EncodedBatch`` or a Hugging Face encoder
            (see :func:`~lightning_topo.encoding.encode_batch`).
        dataloader: iterable of dict batches with ``input_ids``, ``attention_mask`` and
            ``labels`` ``(batch,)``.
        layers: int, list of ints, or ``"all"`` (see :func:`resolve_layers`).
        pooling: ``"cls"`` or ``"mean"`` (mean over the attention mask).
        max_points_per_class: seeded random subsample cap per class (``None``: keep all).
        max_batches: read at most this many batches (per rank under DDP).
        seed: sampling seed.
        gather: gather the shards of all DDP ranks.

    Returns:
        :class:`Representations` with ``points[layer]`` of shape ``(n, d)`` on the module's device.

    Raises:
        ValueError: empty dataloader, batches without labels, an out-of-range layer, a bad
            ``pooling``, or NaN/inf hidden states (the message names the layer).
    """
    from lightning_topo.scores.presets import POOLINGS

    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be a positive int or None; got {max_batches!r}")
    if max_points_per_class is not None and max_points_per_class < 2:
        raise ValueError(f"max_points_per_class must be >= 2 or None; got {max_points_per_class!r}")
    device = _module_device(module)
    ensure_hidden_state_capture(module)
    collector = RepresentationCollector(layers=layers, pooling=pooling)
    was_training = module.training
    module.eval()
    try:
        # iterating a DataLoader draws its base seed from the global CPU generator: fork it so that
        # measuring does not change the training run's random stream (dropout, shuffling)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            batches = dataloader if max_batches is None else islice(dataloader, max_batches)
            for batch in batches:
                batch = _move_to_device(batch, device)
                collector.add(encode_batch(module, batch), batch)
    finally:
        module.train(was_training)
    return collector.finalize(max_points_per_class=max_points_per_class, seed=seed, gather=gather)
