"""Importance of FFN units and attention heads of a BERT-family encoder (higher = keep).

An importance method is a callable (:data:`ImportanceFn`) that maps a model, the units' recorded
outputs and a unit kind to one score tensor per encoder layer. The built-in methods are registered
by name (:data:`METHODS`); any other callable with the same signature may be passed as ``method``,
as Lightning's ``ModelPruning`` accepts a custom pruning function. Built-in methods
(``docs/pruning.md``, methods.md §3; both topological readings are our **choice**, the paper's code
is not public):

``topological-1d`` (reading B, :func:`h0_of_each_unit_cloud`)
    Each unit's outputs over the ``N`` calibration positions form the unit's own point cloud. For an
    FFN unit the cloud is 1-D; its finite H0 bars are the gaps between consecutive sorted values, so
    ``stat="max"`` (default) scores the unit by its longest finite H0 bar = its largest gap, and
    ``stat="total"`` by the sum of its bars = its range. For a head the cloud is its ``N`` context
    vectors in ``R^head_size``; its H0 bars are the edge lengths of their minimum spanning tree
    (``"max"`` = longest edge, ``"total"`` = their sum).
``topological-redundancy`` (reading A, :func:`elder_merge_radius`)
    The units of one layer are the points (a unit = its centred, unit-norm output vector over the
    ``N`` positions); each unit scores its elder-rule H0 death radius in that cloud, i.e. how far it
    is from the nearest higher-energy unit in single linkage. A near-copy of another unit scores ~0.
``topological-contribution`` (reading C, :func:`h0_of_each_contribution_cloud`)
    The cloud of what the unit writes into the residual stream: at each calibration position the
    unit adds ``a_u(x) * w_u`` (FFN unit: its activation times its ``output.dense`` column; head: its
    context vector mapped by its slice of ``attention.output.dense``). Its H0 bars (``"max"`` or
    ``"total"``) are those of reading B measured in the space the unit actually affects, so a unit
    with wide gaps but near-zero outgoing weights no longer scores high.
``magnitude`` (:func:`weight_norm`)
    L2 norm of all weights and biases that belong to the unit (the group norm of Torch-Pruning's
    ``MagnitudeImportance(p=2)``).
``activation`` (:func:`activation_times_output_norm`)
    mean ``|output|`` over positions (head: mean L2 norm of its context vector) times the L2 norm of
    the unit's outgoing weights.
``random`` (:func:`seeded_uniform`)
    seeded uniform scores, the baseline every method must beat.

``topological`` is an alias of :data:`DEFAULT_TOPOLOGICAL` (``topological-contribution``), the reading chosen
by the three-seed benchmark (``docs/pruning.md``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_topo.data.files import write_text_atomic
from lightning_topo.encoding import model_inputs
from lightning_topo.pruning import layout
from lightning_topo.pruning.config import (
    DEFAULT_TOPOLOGICAL,
    DEFAULTS,
    METHODS,
    UNIT_KINDS,
    PruningConfig,
    check_method,
    check_stat,
    check_units,
    resolve_stat,
)
from lightning_topo.pruning.layout import encoder_layers
from lightning_topo.scores.checks import check_int, check_seed
from lightning_topo.topology import minimum_spanning_tree, pairwise_distances

__all__ = [
    "METHODS",
    "DEFAULT_TOPOLOGICAL",
    "UNIT_KINDS",
    "ImportanceFn",
    "ImportanceContext",
    "UnitOutputs",
    "ImportanceTable",
    "encoder_layers",
    "collect_unit_outputs",
    "redundancy_scores",
    "distribution_scores",
    "cloud_h0_scores",
    "h0_of_each_unit_cloud",
    "h0_of_each_contribution_cloud",
    "elder_merge_radius",
    "weight_norm",
    "activation_times_output_norm",
    "seeded_uniform",
    "builtin_method",
    "resolve_method",
    "compute_importance",
]


# ----------------------------------------------------------------------------- collection


@dataclass
class UnitOutputs:
    """Unit outputs at ``N`` calibration token positions (the same positions in every layer).

    Attributes:
        ffn: per layer, ``(N, intermediate_size_l)`` FFN outputs after the activation (or ``None``).
        heads: per layer, ``(N, num_heads_l, head_size)`` context vectors (or ``None``).
        num_positions: ``N``.
    """

    ffn: list[Tensor] | None
    heads: list[Tensor] | None
    num_positions: int


class _PositionSample:
    """A uniform sample without replacement of up to ``capacity`` token positions, streamed.

    Every position gets a seeded random key and the ``capacity`` smallest keys are kept (bottom-k),
    so memory stays ``O(capacity)`` however long the dataloader is. The rows of every recorded tensor
    (``(kind, layer) -> (positions, ...)``) are kept for the same positions.
    """

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity = capacity
        self.generator = torch.Generator().manual_seed(seed)
        self.keys = torch.empty(0)
        self.rows: dict[tuple[str, int], Tensor] = {}

    def add(self, new_rows: Mapping[tuple[str, int], Tensor], count: int) -> None:
        keys = torch.cat([self.keys, torch.rand(count, generator=self.generator)])
        self.keys, order = torch.topk(keys, min(self.capacity, keys.numel()), largest=False, sorted=False)
        for name, new in new_rows.items():
            old = self.rows.get(name)
            both = new if old is None else torch.cat([old, new])
            self.rows[name] = both.index_select(0, order)

    def per_layer(self, kind: str, n_layers: int) -> list[Tensor]:
        return [self.rows[kind, i] for i in range(n_layers)]


def _record_ffn(captured: dict, i: int, _module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
    captured["ffn", i] = inputs[0][captured["mask"]].detach().float().cpu()


def _record_heads(
    captured: dict, i: int, layer: nn.Module, _module: nn.Module, inputs: tuple[Tensor, ...]
) -> None:
    rows = inputs[0][captured["mask"]].detach().float().cpu()
    captured["heads", i] = rows.reshape(rows.shape[0], layout.num_heads(layer), layout.head_size(layer))


def _install_recorders(layers: nn.ModuleList, units: tuple[str, ...], captured: dict) -> list[Any]:
    """Forward pre-hooks on the output projections: what enters the FFN output projection (the
    units' values after the activation) and the attention output projection (the heads' context
    vectors, ``(positions, heads * head_size)``)."""
    handles = []
    for i, layer in enumerate(layers):
        if "ffn" in units:
            hook = partial(_record_ffn, captured, i)
            handles.append(layout.ffn_output(layer).register_forward_pre_hook(hook))
        if "heads" in units:
            hook = partial(_record_heads, captured, i, layer)
            handles.append(layout.attention_output(layer).register_forward_pre_hook(hook))
    return handles


def _record_batch(
    model: nn.Module, batch: Mapping[str, Any], captured: dict, sample: _PositionSample
) -> None:
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
    if "attention_mask" not in inputs:
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    mask = inputs["attention_mask"].bool()
    count = int(mask.sum())
    if count == 0:
        return
    captured.clear()
    captured["mask"] = mask
    model(**inputs)
    del captured["mask"]
    sample.add(captured, count)


def _record_all(
    model: nn.Module,
    layers: nn.ModuleList,
    dataloader: Iterable[Mapping[str, Any]],
    units: tuple[str, ...],
    max_batches: int | None,
    sample: _PositionSample,
) -> None:
    """Run the model on the batches in eval mode under ``no_grad``; hooks and training flag restored."""
    captured: dict = {}
    handles = _install_recorders(layers, units, captured)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b, batch in enumerate(dataloader):
                if max_batches is not None and b >= max_batches:
                    break
                _record_batch(model, batch, captured, sample)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def collect_unit_outputs(
    model: nn.Module,
    dataloader: Iterable[Mapping[str, Any]],
    *,
    units: Sequence[str] = DEFAULTS.units,
    max_positions: int = DEFAULTS.max_positions,
    max_batches: int | None = DEFAULTS.max_batches,
    seed: int = DEFAULTS.seed,
) -> UnitOutputs:
    """Record every FFN unit's and head's output at a sample of real (unmasked) token positions.

    Positions are a uniform sample without replacement of all positions under the attention mask
    (see :class:`_PositionSample`), the same positions in every layer. Batches go through
    :func:`lightning_topo.encoding.model_inputs`; the model runs in eval mode under ``no_grad`` and
    its training flag is restored afterwards.

    Args:
        model: BERT-family Hugging Face model (any head).
        dataloader: iterable of tokenised batches (``input_ids`` ``(B, S)``, optional
            ``attention_mask``, ``token_type_ids``).
        units: which kinds to record, subset of ``("ffn", "heads")``.
        max_positions: cap ``N`` on the number of token positions kept (``>= 2``).
        max_batches: stop after this many batches (``None``: all).
        seed: seed of the position sample.

    Raises:
        ValueError: a setting out of range, or a dataloader with fewer than 2 tokens under the attention mask.
        TypeError: a setting of the wrong type, ``dataloader`` is not iterable, or the model is not BERT-family.
    """
    units = check_units(units)
    max_positions = check_int(max_positions, "max_positions", minimum=2)
    max_batches = check_int(max_batches, "max_batches", minimum=1, allow_none=True)
    sample = _PositionSample(max_positions, check_seed(seed))  # type: ignore[arg-type]
    if not isinstance(dataloader, Iterable):
        raise TypeError(
            f"dataloader must be an iterable of tokenised batches; got {type(dataloader).__name__}"
        )
    layers = encoder_layers(model)
    _record_all(model, layers, dataloader, units, max_batches, sample)
    n = sample.keys.numel()
    if n < 2:
        raise ValueError(
            f"the calibration dataloader yielded {'no token' if n == 0 else 'only 1 token'} under the attention "
            "mask; pass batches with input_ids and an attention_mask that has ones (e.g. a few hundred sentences)"
        )
    return UnitOutputs(
        ffn=sample.per_layer("ffn", len(layers)) if "ffn" in units else None,
        heads=sample.per_layer("heads", len(layers)) if "heads" in units else None,
        num_positions=n,
    )


# ----------------------------------------------------------------------------- topological summaries


def redundancy_scores(points: Tensor, *, dead_tol: float = 1e-6) -> Tensor:
    """Reading A: elder-rule H0 death radius of each unit in the cloud of one layer's units.

    Each unit is a point: its outputs over the ``N`` positions, centred and scaled to unit norm.
    H0 of the Vietoris-Rips filtration of these points is their minimum spanning tree. A component
    is represented by its highest-energy unit (norm before scaling; ties: lower index), and when two
    components merge at radius ``r`` the lower-energy representative dies there. So ``r_f(u)`` is the
    single-linkage (minimax) distance from ``u`` to the nearest unit that beats it: of two duplicate
    units exactly one scores 0. Constant (dead) units score 0 and stay out of the tree.

    Args:
        points: ``(n, N)`` -- row ``u`` is unit ``u``'s outputs at ``N`` positions -- or
            ``(n, N, k)`` for heads (flattened after centring each of the ``k`` coordinates).
        dead_tol: a unit whose centred norm is ``<= dead_tol * max norm`` is dead (constant).

    Returns:
        ``(n,)`` float64: ``r_f`` per unit in ``[0, 2]``; ``+inf`` for the highest-energy unit;
        ``0`` for dead units.
    """
    x = points.detach().double()
    x = x - x.mean(dim=1, keepdim=True)
    x = x.reshape(x.shape[0], -1)
    n = x.shape[0]
    energy = x.norm(dim=1)
    scores = torch.zeros(n, dtype=torch.float64)
    alive = energy > dead_tol * energy.max().clamp_min(torch.finfo(torch.float64).tiny)
    idx = alive.nonzero().squeeze(1)
    m = idx.numel()
    if m == 0:
        return scores
    if m == 1:
        scores[idx] = math.inf
        return scores
    y = x[idx] / energy[idx, None]
    edges, lengths = minimum_spanning_tree(pairwise_distances(y))
    scores[idx] = _elder_radii(edges, lengths, energy[idx])
    return scores


def _elder_radii(edges: Tensor, lengths: Tensor, energy: Tensor) -> Tensor:
    """Elder-rule death radius of every vertex from a Prim-ordered MST (vectorised).

    Prim visits single-linkage clusters as contiguous runs, so the minimax (cophenetic) distance of
    the vertices at Prim positions ``i < j`` is ``max(reach[i+1..j])`` with ``reach[k]`` the length
    of the edge that added the ``k``-th vertex. A vertex dies when its cluster first holds a vertex
    that beats it (higher energy; tie: lower index), i.e. at the minimax distance to the nearest such
    vertex.
    """
    m = lengths.numel() + 1
    order = torch.cat([torch.zeros(1, dtype=torch.long), edges[:, 1].cpu()])
    reach = torch.cat([torch.full((1,), -math.inf, dtype=torch.float64), lengths.detach().cpu().double()])
    upper = torch.ones(m, m, dtype=torch.bool).triu(1)  # j > i
    a = torch.where(upper, reach.unsqueeze(0).expand(m, m), torch.full((), -math.inf, dtype=torch.float64))
    r = torch.cummax(a, dim=1).values  # r[i, j] = max(reach[i+1..j]) for j > i
    coph = torch.where(upper, r, r.T)  # symmetric minimax distances, Prim positions
    e = energy.detach().cpu().double()[order]
    beats = (e.unsqueeze(0) > e.unsqueeze(1)) | (
        (e.unsqueeze(0) == e.unsqueeze(1)) & (order.unsqueeze(0) < order.unsqueeze(1))
    )
    radius_pos = torch.where(beats, coph, torch.full((), math.inf, dtype=torch.float64)).min(dim=1).values
    out = torch.empty(m, dtype=torch.float64)
    out[order] = radius_pos
    return out


def distribution_scores(values: Tensor, *, stat: str = "max") -> Tensor:
    """Reading B for FFN units: the finite H0 bars of each unit's own 1-D cloud of output values.

    In 1-D the Vietoris-Rips H0 bars are exactly the gaps between consecutive sorted values, so the
    longest finite bar is the largest gap and the sum of bars is the range. ``"total"`` is computed
    as ``max - min`` (no sort: the gaps telescope); ``"max"`` sorts each unit's values (rows of the
    transposed, contiguous matrix: one ``sort`` over all units, no loop).

    Args:
        values: ``(N, n)`` -- column ``u`` holds unit ``u``'s outputs at ``N`` positions.
        stat: ``"max"`` (longest finite H0 bar = largest gap) or ``"total"`` (sum of bars = range).

    Returns:
        ``(n,)`` float64 scores; a constant unit scores 0.
    """
    check_stat(stat)
    v = values.detach().double()
    if stat == "total":
        return v.amax(dim=0) - v.amin(dim=0)
    ordered = torch.sort(v.T.contiguous(), dim=1).values  # (n, N)
    return torch.diff(ordered, dim=1).amax(dim=1)  # the H0 deaths are the gaps


#: Memory (bytes) for one chunk of heads' ``(heads, N, N)`` float64 distance terms in
#: :func:`cloud_h0_scores`; clouds too large for one head per chunk take the per-head path of
#: :func:`~lightning_topo.topology.pairwise_distances`, which checks the memory.
HEAD_CHUNK_BYTES = 256 * 2**20


def _batched_row_terms(x: Tensor) -> tuple[Tensor, Tensor]:
    """For ``b`` clouds ``(b, N, k)`` (centred first, as
    :func:`lightning_topo.topology.distances.squared_distances` does): ``w = |x_u|^2 - 2 x_u . x_v``
    ``(b, N, N)`` (one batched GEMM) and ``sq = |x_v|^2`` ``(b, N)``, so that the squared distance
    is ``w[u, v] + sq[v]``. Prim compares ``d(u, v)`` only with ``d(u', v)`` of the same ``v``, so
    it can run on ``w`` and add ``sq`` only where it picks the next vertex: one ``N x N`` pass less."""
    x = x - x.mean(dim=1, keepdim=True)
    sq = (x * x).sum(dim=2)
    w = torch.baddbmm(sq.unsqueeze(2), x, x.transpose(1, 2), beta=1.0, alpha=-2.0)
    return w, sq


def _batched_prim(w: np.ndarray, sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense Prim from vertex 0 on ``b`` matrices at once: ``(parents, new)``, each ``(b, N - 1)``.

    The squared distance of ``u`` and ``v`` in matrix ``i`` is ``w[i, u, v] + sq[i, v]``
    (:func:`_batched_row_terms`). The same steps and tie-breaking as
    :func:`lightning_topo.topology.minimum_spanning_tree` (next vertex: lowest index at minimal
    distance; parent: the earliest tree vertex at that distance), vectorised across the ``b``
    matrices so that the Python loop runs ``N - 1`` times per chunk of heads, not per head. (Exact
    ties in the distances may be broken differently, as the two round ``w + sq`` differently;
    every minimum spanning tree has the same edge lengths.)
    """
    b, n, _ = w.shape
    rows = np.arange(b)
    best = w[:, 0, :].copy()  # minus sq: the smallest w[u, v] over tree vertices u
    parent = np.zeros((b, n), dtype=np.int64)
    blocked = np.full((b, n), -np.inf, dtype=w.dtype)  # +inf once a vertex is in the tree
    blocked[:, 0] = np.inf
    best[:, 0] = np.inf
    closer = np.empty((b, n), dtype=bool)
    dist = np.empty((b, n), dtype=w.dtype)
    new = np.empty((b, n - 1), dtype=np.int64)
    par = np.empty((b, n - 1), dtype=np.int64)
    for k in range(n - 1):
        np.add(best, sq, out=dist)
        j = dist.argmin(axis=1)
        new[:, k] = j
        par[:, k] = parent[rows, j]
        blocked[rows, j] = np.inf
        row = w[rows, j]
        np.less(row, best, out=closer)  # strict: an earlier tree vertex keeps a tie
        np.copyto(parent, j[:, None], where=closer)
        np.minimum(best, row, out=best)
        np.maximum(best, blocked, out=best)
    return par, new


def cloud_h0_scores(clouds: Tensor, *, stat: str = "max") -> Tensor:
    """Reading B for heads: the finite H0 bars of each head's own cloud of context vectors.

    The bars of a Vietoris-Rips H0 diagram are the edge lengths of the cloud's minimum spanning
    tree. Heads are done in chunks (:data:`HEAD_CHUNK_BYTES`): one batched GEMM gives their squared
    distances (:func:`_batched_row_terms`), one batched Prim their trees (a tree of the squared
    distances is a tree of the distances: the square root keeps the order), and the bars are the
    square roots of the tree's entries. The longest bar and the total length do not depend on which minimum spanning tree
    is found, so the scores equal those of a per-head ``minimum_spanning_tree(pairwise_distances)``
    up to the rounding of the sum.

    Args:
        clouds: ``(N, n, k)`` -- ``N`` positions, ``n`` heads, head size ``k``.
        stat: ``"max"`` (longest bar = longest MST edge) or ``"total"`` (sum of MST edge lengths).

    Returns:
        ``(n,)`` float64.
    """
    check_stat(stat)
    x = clouds.detach().double().permute(1, 0, 2).contiguous()  # (n, N, k)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("cloud_h0_scores: the heads' context vectors have NaN or inf entries")
    heads, n_points = x.shape[0], x.shape[1]
    out = torch.empty(heads, dtype=torch.float64)
    per_head = n_points * n_points * 8
    if per_head > HEAD_CHUNK_BYTES:
        for h in range(heads):
            _, lengths = minimum_spanning_tree(pairwise_distances(x[h]))
            out[h] = lengths.max() if stat == "max" else lengths.sum()
        return out
    chunk = max(1, min(heads, HEAD_CHUNK_BYTES // per_head))
    for start in range(0, heads, chunk):
        w_t, sq_t = _batched_row_terms(x[start : start + chunk])
        w, sq = w_t.numpy(), sq_t.numpy()
        par, new = _batched_prim(w, sq)
        picked = w[np.arange(w.shape[0])[:, None], par, new] + np.take_along_axis(sq, new, axis=1)
        lengths = np.sqrt(np.maximum(picked, 0.0))
        out[start : start + chunk] = torch.from_numpy(
            lengths.max(axis=1) if stat == "max" else lengths.sum(axis=1)
        )
    return out


# ----------------------------------------------------------------------------- importance methods


@dataclass(frozen=True)
class ImportanceContext:
    """What an importance function gets besides the model and the outputs.

    Attributes:
        layers: the encoder layers (:func:`~lightning_topo.pruning.layout.encoder_layers`).
        stat: ``"max"`` or ``"total"``, the H0 summary (the caller's, or the method's own from
            :data:`~lightning_topo.pruning.config.METHOD_STATS` when the caller gave ``None``).
        generator: a CPU generator seeded with the caller's ``seed``, shared by all kinds in one
            :func:`compute_importance` call (for methods that draw random numbers).
    """

    layers: nn.ModuleList
    stat: str
    generator: torch.Generator


#: Signature of an importance method: ``fn(model, outputs, kind, ctx) -> scores``.
#:
#: * ``model``: the BERT-family model being pruned (do not modify it).
#: * ``outputs``: :class:`UnitOutputs` recorded on the calibration data, or ``None`` when the caller
#:   gave no dataloader (custom callables get outputs whenever a dataloader or ``outputs`` is given).
#: * ``kind``: ``"ffn"`` or ``"heads"``.
#: * ``ctx``: :class:`ImportanceContext`.
#: * returns: one 1-D tensor per encoder layer with one score per unit of ``kind`` in that layer
#:   (``intermediate_size_l`` FFN units or ``num_heads_l`` heads). Higher = keep; ``+inf`` is
#:   allowed, NaN is refused.
ImportanceFn = Callable[[nn.Module, UnitOutputs | None, str, ImportanceContext], Sequence[Tensor]]


def _outputs_of(outputs: UnitOutputs | None, kind: str, method: str) -> list[Tensor]:
    data = None if outputs is None else (outputs.ffn if kind == "ffn" else outputs.heads)
    if data is None:
        raise ValueError(
            f"method {method!r} needs the {kind!r} outputs of a calibration dataloader; pass dataloader= "
            f"(or outputs= recorded with units including {kind!r})"
        )
    return data


def h0_of_each_unit_cloud(
    model: nn.Module, outputs: UnitOutputs | None, kind: str, ctx: ImportanceContext
) -> list[Tensor]:
    """``topological-1d``: the longest (``stat="max"``) or summed finite H0 bars of each unit's own cloud.

    FFN unit: largest gap (or range) of its sorted output values (:func:`distribution_scores`).
    Head: longest edge (or total length) of the MST of its context vectors (:func:`cloud_h0_scores`).
    """
    data = _outputs_of(outputs, kind, "topological-1d")
    summary = distribution_scores if kind == "ffn" else cloud_h0_scores
    return [summary(x, stat=ctx.stat) for x in data]


def h0_of_each_contribution_cloud(
    model: nn.Module, outputs: UnitOutputs | None, kind: str, ctx: ImportanceContext
) -> list[Tensor]:
    """``topological-contribution``: H0 bars of each unit's cloud of residual-stream contributions.

    FFN unit ``u``: the points ``a_u(x_i) w_u`` (``w_u`` its column of ``output.dense``) lie on a
    line, so their bars are the 1-D bars of :func:`distribution_scores` times ``||w_u||``. Head
    ``h``: the points ``W_h c_h(x_i)`` with ``W_h`` (hidden, head_size) its slice of
    ``attention.output.dense``; since ``||W_h v|| = ||R_h v||`` for the QR factor ``R_h`` of
    ``W_h``, the MST is taken of ``c_h R_h^T`` in ``head_size`` dimensions (same bars, far cheaper).
    """
    data = _outputs_of(outputs, kind, "topological-contribution")
    out = []
    for x, layer in zip(data, ctx.layers, strict=True):
        if kind == "ffn":
            out.append(distribution_scores(x, stat=ctx.stat) * _outgoing_norm(layer, kind))
            continue
        h, d = layout.num_heads(layer), layout.head_size(layer)
        w = layout.attention_output(layer).weight.detach().double().cpu().reshape(-1, h, d)
        r = torch.linalg.qr(w.permute(1, 0, 2)).R  # (h, d, d): ||W_h v|| = ||R_h v||
        mapped = torch.einsum("nhk,hjk->nhj", x.double(), r)
        out.append(cloud_h0_scores(mapped, stat=ctx.stat))
    return out


def elder_merge_radius(
    model: nn.Module, outputs: UnitOutputs | None, kind: str, ctx: ImportanceContext
) -> list[Tensor]:
    """``topological-redundancy``: each unit's elder-rule H0 death radius among its layer's units
    (:func:`redundancy_scores`)."""
    data = _outputs_of(outputs, kind, "topological-redundancy")
    return [redundancy_scores(x.T if kind == "ffn" else x.permute(1, 0, 2)) for x in data]


@torch.no_grad()
def _unit_weight_norm(layer: nn.Module, kind: str) -> Tensor:
    if kind == "ffn":
        w_in, w_out = layout.ffn_input(layer), layout.ffn_output(layer)
        sq = w_in.weight.double().pow(2).sum(1) + w_out.weight.double().pow(2).sum(0)
        if w_in.bias is not None:
            sq = sq + w_in.bias.double().pow(2)
        return sq.sqrt().cpu()
    h, d = layout.num_heads(layer), layout.head_size(layer)
    out = layout.attention_output(layer).weight.double()
    sq = out.reshape(-1, h, d).pow(2).sum((0, 2))
    for lin in layout.head_projections(layer):
        sq = sq + lin.weight.double().reshape(h, d, -1).pow(2).sum((1, 2))
        if lin.bias is not None:
            sq = sq + lin.bias.double().reshape(h, d).pow(2).sum(1)
    return sq.sqrt().cpu()


def weight_norm(
    model: nn.Module, outputs: UnitOutputs | None, kind: str, ctx: ImportanceContext
) -> list[Tensor]:
    """``magnitude``: L2 norm of every weight and bias the unit owns (needs no data).

    FFN unit: its ``intermediate.dense`` row and bias and its ``output.dense`` column. Head: its
    query/key/value rows and biases and its ``attention.output.dense`` columns.
    """
    return [_unit_weight_norm(layer, kind) for layer in ctx.layers]


@torch.no_grad()
def _outgoing_norm(layer: nn.Module, kind: str) -> Tensor:
    if kind == "ffn":
        return layout.ffn_output(layer).weight.double().norm(dim=0).cpu()
    h, d = layout.num_heads(layer), layout.head_size(layer)
    w = layout.attention_output(layer).weight.double().reshape(-1, h, d)
    return w.pow(2).sum((0, 2)).sqrt().cpu()


def activation_times_output_norm(
    model: nn.Module, outputs: UnitOutputs | None, kind: str, ctx: ImportanceContext
) -> list[Tensor]:
    """``activation``: mean ``|output|`` over positions (head: mean L2 norm of its context vector)
    times the L2 norm of the unit's outgoing weights."""
    data = _outputs_of(outputs, kind, "activation")
    out = []
    for x, layer in zip(data, ctx.layers, strict=True):
        mean_abs = x.abs().mean(0) if kind == "ffn" else x.norm(dim=2).mean(0)
        out.append(mean_abs.double() * _outgoing_norm(layer, kind))
    return out


def seeded_uniform(
    model: nn.Module, outputs: UnitOutputs | None, kind: str, ctx: ImportanceContext
) -> list[Tensor]:
    """``random``: uniform scores in ``[0, 1)`` from ``ctx.generator`` (needs no data)."""
    widths = [
        layout.ffn_input(layer).out_features if kind == "ffn" else layout.num_heads(layer)
        for layer in ctx.layers
    ]
    return [torch.rand(n, generator=ctx.generator, dtype=torch.float64) for n in widths]


@dataclass(frozen=True)
class _Method:
    fn: ImportanceFn
    needs_data: bool


_REGISTRY: dict[str, _Method] = {
    "topological-1d": _Method(h0_of_each_unit_cloud, needs_data=True),
    "topological-redundancy": _Method(elder_merge_radius, needs_data=True),
    "topological-contribution": _Method(h0_of_each_contribution_cloud, needs_data=True),
    "magnitude": _Method(weight_norm, needs_data=False),
    "activation": _Method(activation_times_output_norm, needs_data=True),
    "random": _Method(seeded_uniform, needs_data=False),
}


def resolve_method(method: str) -> str:
    """``method`` with the ``"topological"`` alias resolved; ``ValueError`` for an unknown name."""
    if not isinstance(method, str):
        raise ValueError(f"resolve_method takes a method name from {METHODS}; got {method!r}")
    check_method(method)
    return DEFAULT_TOPOLOGICAL if method == "topological" else method


def builtin_method(name: str) -> ImportanceFn:
    """The importance function registered under ``name`` (aliases resolved)."""
    return _REGISTRY[resolve_method(name)].fn


# ----------------------------------------------------------------------------- table


@dataclass
class ImportanceTable:
    """Per-layer importance scores (higher = more important).

    Attributes:
        method: the method that produced the scores (aliases resolved).
        ffn: per layer ``(intermediate_size_l,)`` float64 scores, or ``None`` when not scored.
        heads: per layer ``(num_heads_l,)`` float64 scores, or ``None``.
        info: extra settings (``stat``, ``num_positions``, ``seed``).
    """

    method: str
    ffn: list[Tensor] | None
    heads: list[Tensor] | None
    info: dict[str, Any] = field(default_factory=dict)

    def scores(self, kind: str) -> list[Tensor] | None:
        """The per-layer score list of ``kind`` (``"ffn"`` or ``"heads"``)."""
        return {"ffn": self.ffn, "heads": self.heads}[kind]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per unit: ``layer``, ``kind``, ``unit``, ``score`` (``inf`` kept as ``float('inf')``)."""
        out = []
        for kind in UNIT_KINDS:
            per_layer = self.scores(kind)
            for layer, s in enumerate(per_layer or []):
                for unit, v in enumerate(s.tolist()):
                    out.append({"layer": layer, "kind": kind, "unit": unit, "score": v})
        return out

    def to_csv(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``layer,kind,unit,score`` rows (``inf`` written as ``inf``; atomic, refuses an
        existing file unless ``overwrite``)."""

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=["layer", "kind", "unit", "score"])
                w.writeheader()
                w.writerows(self.rows())

        return write_text_atomic(path, write, overwrite=overwrite)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: ``method``, ``info``, ``ffn``/``heads`` as lists of lists (``inf`` -> ``None``)."""

        def clean(per_layer):
            if per_layer is None:
                return None
            return [[None if not math.isfinite(v) else v for v in s.tolist()] for s in per_layer]

        return {"method": self.method, "info": self.info, "ffn": clean(self.ffn), "heads": clean(self.heads)}

    def to_json(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write :meth:`to_dict` as JSON (atomic; refuses an existing file unless ``overwrite``)."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1), overwrite=overwrite)

    def plot(self, kind: str = "ffn"):
        """A matplotlib figure with one box of scores per layer (``inf`` dropped); returns the figure."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        per_layer = self.scores(kind) or []
        fig, ax = plt.subplots(figsize=(1.2 + 0.6 * max(1, len(per_layer)), 3))
        data = [s[torch.isfinite(s)].numpy() for s in per_layer]
        ax.boxplot(data)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{self.method} score")
        ax.set_title(f"{kind} importance")
        fig.tight_layout()
        return fig


def _method_of(method: str | ImportanceFn) -> tuple[str, _Method | None, ImportanceFn]:
    """``(name, registry entry or None for a custom callable, function)``."""
    if isinstance(method, str):
        name = resolve_method(method)
        return name, _REGISTRY[name], _REGISTRY[name].fn
    check_method(method)
    return getattr(method, "__name__", type(method).__name__), None, method


def _checked_scores(method: str, kind: str, scores: Any, widths: list[int]) -> list[Tensor]:
    """``scores`` as float64 CPU tensors after checking one finite-or-+inf score per unit and layer."""
    where = f"importance method {method!r} ({kind})"
    if not isinstance(scores, Sequence) or len(scores) != len(widths):
        got = len(scores) if isinstance(scores, Sequence) else type(scores).__name__
        raise ValueError(f"{where} must return one score tensor per encoder layer ({len(widths)}); got {got}")
    out = []
    for i, (s, n) in enumerate(zip(scores, widths, strict=True)):
        t = torch.as_tensor(s).detach().to("cpu", torch.float64)
        if t.shape != (n,):
            raise ValueError(f"{where}: layer {i} has {n} units but the scores have shape {tuple(t.shape)}")
        if bool(torch.isnan(t).any() | (t == -math.inf).any()):
            raise ValueError(f"{where}: layer {i} has NaN or -inf scores; scores must be numbers or +inf")
        out.append(t)
    return out


def compute_importance(
    model: nn.Module,
    dataloader: Iterable[Mapping[str, Any]] | None = None,
    *,
    method: str | ImportanceFn = DEFAULTS.method,  # type: ignore[assignment]
    units: Sequence[str] = DEFAULTS.units,
    max_positions: int = DEFAULTS.max_positions,
    max_batches: int | None = DEFAULTS.max_batches,
    stat: str | None = DEFAULTS.stat,
    seed: int = DEFAULTS.seed,
    outputs: UnitOutputs | None = None,
) -> ImportanceTable:
    """Score every FFN unit and attention head of ``model`` with ``method`` (higher = keep).

    Args:
        model: BERT-family Hugging Face model; not modified.
        dataloader: calibration batches (needed by every built-in method but ``magnitude`` and
            ``random``; a custom callable gets :class:`UnitOutputs` whenever one is given).
        method: a name from :data:`METHODS` or an :data:`ImportanceFn` callable.
        units, max_positions, max_batches, stat, seed: as in
            :class:`~lightning_topo.pruning.config.PruningConfig`.
        outputs: precomputed :func:`collect_unit_outputs` result (skips the forward passes).

    Returns:
        An :class:`ImportanceTable`.

    Raises:
        ValueError: a bad setting, a method that needs data without a dataloader, or scores of the
            wrong shape or with NaN from a custom method.
        TypeError: not a BERT-family model.
    """
    cfg = PruningConfig(
        method=method, units=units, max_positions=max_positions, max_batches=max_batches, stat=stat, seed=seed
    )
    name, entry, fn = _method_of(cfg.method)
    layers = encoder_layers(model)
    if outputs is None and dataloader is None and entry is not None and entry.needs_data:
        raise ValueError(f"method {name!r} needs a calibration dataloader (batches with input_ids)")
    if outputs is None and dataloader is not None and (entry is None or entry.needs_data):
        outputs = collect_unit_outputs(
            model,
            dataloader,
            units=cfg.units,
            max_positions=cfg.max_positions,
            max_batches=cfg.max_batches,
            seed=cfg.seed,
        )
    stat = resolve_stat(name, cfg.stat)
    ctx = ImportanceContext(layers=layers, stat=stat, generator=torch.Generator().manual_seed(cfg.seed))
    widths = layout.layer_widths(model)
    result: dict[str, list[Tensor] | None] = {"ffn": None, "heads": None}
    for kind in cfg.units:
        result[kind] = _checked_scores(name, kind, fn(model, outputs, kind, ctx), widths[kind])
    info = {
        "stat": stat,
        "seed": cfg.seed,
        "num_positions": None if outputs is None else outputs.num_positions,
    }
    return ImportanceTable(method=name, ffn=result["ffn"], heads=result["heads"], info=info)
