"""Importance of FFN units and attention heads of a BERT-family encoder.

Two topological scores (``docs/pruning.md``, methods.md §3; both readings are our **choice**,
the paper's code is not public) and three baselines, all with one interface:

``topological-redundancy`` (reading A)
    For one layer, each unit is a point: its outputs over the ``N`` calibration positions,
    centred over positions and scaled to unit norm (a head: its context vectors over the positions,
    centred per coordinate and flattened). H0 of the Vietoris–Rips filtration over the layer's
    units is their minimum spanning tree (:func:`lightning_topo.topology.minimum_spanning_tree`).
    Each death is given to one unit by the elder rule: a component is represented by its unit
    with the highest energy (norm before scaling; ties: lower index wins), and on a merge at radius
    ``r`` the lower-energy representative dies. So ``r_f(u)`` = the single-linkage (minimax) distance
    from ``u`` to the nearest unit that beats it; the top unit keeps ``+inf``. Of two duplicate units
    exactly one gets ``r_f = 0``. Constant (dead) units get ``r_f = 0`` and stay out of the tree.
``topological-1d`` (reading B)
    Each FFN unit's ``N`` output values are a 1-D point cloud whose H0 deaths are the sorted gaps
    (sort + diff over all units at once). ``stat="max"`` (default) scores the unit by its largest
    gap (the last merge radius ``r_f``), ``stat="total"`` by total persistence (= the range). A
    head's cloud is its ``N`` context vectors in ``R^{head_size}``; its H0 is their MST.
``magnitude``
    L2 norm of all weights and biases that belong to the unit (FFN: ``intermediate.dense`` row and
    bias, ``output.dense`` column; head: its Q/K/V rows and biases, its ``attention.output.dense``
    columns) -- the group norm Torch-Pruning's ``MagnitudeImportance(p=2)`` uses.
``activation``
    mean ``|output|`` over positions (head: mean L2 norm of its context vector) times the L2 norm of
    the unit's outgoing weights.
``random``
    seeded uniform scores.

``topological`` is an alias of the reading chosen by the benchmark (:data:`DEFAULT_TOPOLOGICAL`).

No step loops over units in Python: the elder rule uses the fact that Prim's order lists the
single-linkage clusters of every radius as contiguous runs, so the minimax distance between the
units at Prim positions ``i < j`` is ``max(lengths[i:j])`` and all of them come from one ``cummax``
over an ``(n, n)`` matrix (``O(n^2)`` memory, like the distance matrix itself).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_topo.encoding import model_inputs
from lightning_topo.pruning.config import (
    DEFAULT_TOPOLOGICAL,
    DEFAULTS,
    METHODS,
    UNIT_KINDS,
    check_int,
    check_method,
    check_stat,
    check_units,
)

__all__ = [
    "METHODS",
    "DEFAULT_TOPOLOGICAL",
    "UNIT_KINDS",
    "UnitOutputs",
    "ImportanceTable",
    "encoder_layers",
    "collect_unit_outputs",
    "redundancy_scores",
    "distribution_scores",
    "cloud_h0_scores",
    "compute_importance",
]

_DATA_FREE = ("magnitude", "random")


# ----------------------------------------------------------------------------- model structure


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``encoder.layer`` list of a BERT-family model (BERT, RoBERTa, ELECTRA, MiniLM, ...).

    Raises:
        TypeError: if the model has no ``encoder.layer`` whose layers have
            ``attention.self.{query,key,value}``, ``attention.output.dense``, ``intermediate.dense``
            and ``output.dense`` linear layers.
    """
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    problem = None
    if layers is None or len(layers) == 0:
        problem = "it has no encoder.layer list"
    else:
        for i, layer in enumerate(layers):
            try:
                attn = layer.attention.self
                linears = [
                    attn.query,
                    attn.key,
                    attn.value,
                    layer.attention.output.dense,
                    layer.intermediate.dense,
                    layer.output.dense,
                ]
                attn.num_attention_heads, attn.attention_head_size  # noqa: B018
            except AttributeError as err:
                problem = f"layer {i} lacks {err}"
                break
            if not all(isinstance(m, nn.Linear) for m in linears):
                problem = f"layer {i} has non-Linear projections"
                break
    if problem is not None:
        raise TypeError(
            f"structured pruning needs a BERT-family model (encoder.layer[i].attention.self.query/key/value, "
            f"attention.output.dense, intermediate.dense, output.dense); {type(model).__name__}: {problem}"
        )
    return layers


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


def collect_unit_outputs(
    model: nn.Module,
    dataloader: Iterable[Mapping[str, Any]],
    *,
    units: Sequence[str] = DEFAULTS.units,
    max_positions: int = DEFAULTS.max_positions,
    max_batches: int | None = DEFAULTS.max_batches,
    seed: int = DEFAULTS.seed,
) -> UnitOutputs:
    """Record every FFN unit's and head's output at real (unmasked) token positions.

    Forward hooks on ``layer.intermediate`` (output after the activation) and ``layer.attention.self``
    (context vectors, before ``attention.output.dense``). Batches go through
    :func:`lightning_topo.encoding.model_inputs`. Positions are a uniform sample without replacement
    of all positions under the attention mask in the dataloader (bottom-``max_positions`` of seeded
    random keys, so memory stays ``O(max_positions)``).

    Args:
        model: BERT-family Hugging Face model (any head); run in eval mode under ``no_grad``, its
            training flag restored afterwards.
        dataloader: iterable of tokenised batches (``input_ids`` ``(B, S)``, optional
            ``attention_mask``, ``token_type_ids``).
        units: which kinds to record, subset of ``("ffn", "heads")``.
        max_positions: cap ``N`` on the number of token positions kept (default 2048).
        max_batches: stop after this many batches (default: all).
        seed: seed of the position sample.

    Raises:
        ValueError: if the dataloader yields no token under the attention mask.
    """
    units = check_units(units)
    max_positions = check_int("max_positions", max_positions, 2)
    max_batches = check_int("max_batches", max_batches, 1, allow_none=True)
    seed = check_int("seed", seed, 0)
    layers = encoder_layers(model)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    keep_keys = torch.empty(0)
    buf_ffn: list[Tensor | None] = [None] * len(layers)
    buf_heads: list[Tensor | None] = [None] * len(layers)
    current: dict[str, Any] = {}

    def ffn_hook(i):
        def hook(_mod, _inp, out):
            current["ffn", i] = out[current["mask"]].detach().float().cpu()

        return hook

    def head_hook(i, attn):
        def hook(_mod, _inp, out):
            ctx = out[0] if isinstance(out, tuple) else out
            sel = ctx[current["mask"]].detach().float().cpu()
            current["heads", i] = sel.reshape(
                sel.shape[0], attn.num_attention_heads, attn.attention_head_size
            )

        return hook

    handles = []
    for i, layer in enumerate(layers):
        if "ffn" in units:
            handles.append(layer.intermediate.register_forward_hook(ffn_hook(i)))
        if "heads" in units:
            handles.append(layer.attention.self.register_forward_hook(head_hook(i, layer.attention.self)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b, batch in enumerate(dataloader):
                if max_batches is not None and b >= max_batches:
                    break
                inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
                if "attention_mask" not in inputs:
                    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
                mask = inputs["attention_mask"].bool()
                n_new = int(mask.sum())
                if n_new == 0:
                    continue
                current.clear()
                current["mask"] = mask
                model(**inputs)
                keys = torch.cat([keep_keys, torch.rand(n_new, generator=gen)])
                k = min(max_positions, keys.numel())
                keep_keys, order = torch.topk(keys, k, largest=False, sorted=False)
                for i in range(len(layers)):
                    if "ffn" in units:
                        buf_ffn[i] = _merge(buf_ffn[i], current["ffn", i], order)
                    if "heads" in units:
                        buf_heads[i] = _merge(buf_heads[i], current["heads", i], order)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    n = keep_keys.numel()
    if n == 0:
        raise ValueError(
            "the calibration dataloader yielded no token under the attention mask; pass batches with "
            "input_ids and an attention_mask that has ones (e.g. a few hundred training sentences)"
        )
    if n < 2:
        raise ValueError(f"calibration needs at least 2 token positions; got {n}")
    return UnitOutputs(
        ffn=list(buf_ffn) if "ffn" in units else None,  # type: ignore[arg-type]
        heads=list(buf_heads) if "heads" in units else None,  # type: ignore[arg-type]
        num_positions=n,
    )


def _merge(old: Tensor | None, new: Tensor, order: Tensor) -> Tensor:
    both = new if old is None else torch.cat([old, new])
    return both.index_select(0, order)


# ----------------------------------------------------------------------------- scores


def redundancy_scores(points: Tensor, *, dead_tol: float = 1e-6) -> Tensor:
    """Reading A: elder-rule H0 merge radius of each unit among the units of one layer.

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
    from lightning_topo.topology import minimum_spanning_tree, pairwise_distances

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


def distribution_scores(values: Tensor, *, stat: str = DEFAULTS.stat) -> Tensor:
    """Reading B for scalar units: H0 of each unit's own 1-D output cloud, vectorised.

    Args:
        values: ``(N, n)`` -- column ``u`` holds unit ``u``'s outputs at ``N`` positions.
        stat: ``"max"`` (largest gap = last merge radius) or ``"total"`` (sum of gaps = range).

    Returns:
        ``(n,)`` float64 scores; a constant unit scores 0.
    """
    check_stat(stat)
    v = values.detach().double()
    gaps = torch.diff(torch.sort(v, dim=0).values, dim=0)  # (N-1, n) = the H0 deaths
    return gaps.amax(dim=0) if stat == "max" else gaps.sum(dim=0)


def cloud_h0_scores(clouds: Tensor, *, stat: str = DEFAULTS.stat) -> Tensor:
    """Reading B for vector units (heads): H0 of each head's own cloud of context vectors.

    Args:
        clouds: ``(N, n, k)`` -- ``N`` positions, ``n`` heads, head size ``k``.
        stat: ``"max"`` (longest MST edge) or ``"total"`` (sum of MST edge lengths).

    Returns:
        ``(n,)`` float64. One MST per head (a loop over heads, not over neurons).
    """
    check_stat(stat)
    from lightning_topo.topology import minimum_spanning_tree, pairwise_distances

    out = torch.empty(clouds.shape[1], dtype=torch.float64)
    for h in range(clouds.shape[1]):
        _, lengths = minimum_spanning_tree(pairwise_distances(clouds[:, h].detach().double()))
        out[h] = lengths.max() if stat == "max" else lengths.sum()
    return out


def _ffn_weights(layer: nn.Module) -> tuple[Tensor, Tensor | None, Tensor]:
    return layer.intermediate.dense.weight, layer.intermediate.dense.bias, layer.output.dense.weight


def _magnitude(layer: nn.Module, kind: str) -> Tensor:
    with torch.no_grad():
        if kind == "ffn":
            w_in, b_in, w_out = _ffn_weights(layer)
            sq = w_in.double().pow(2).sum(1) + w_out.double().pow(2).sum(0)
            if b_in is not None:
                sq = sq + b_in.double().pow(2)
            return sq.sqrt().cpu()
        attn = layer.attention.self
        h, d = attn.num_attention_heads, attn.attention_head_size
        sq = torch.zeros(h, dtype=torch.float64, device=attn.query.weight.device)
        for lin in (attn.query, attn.key, attn.value):
            sq += lin.weight.double().reshape(h, d, -1).pow(2).sum((1, 2))
            if lin.bias is not None:
                sq += lin.bias.double().reshape(h, d).pow(2).sum(1)
        sq += layer.attention.output.dense.weight.double().reshape(-1, h, d).pow(2).sum((0, 2))
        return sq.sqrt().cpu()


def _out_norm(layer: nn.Module, kind: str) -> Tensor:
    with torch.no_grad():
        if kind == "ffn":
            return layer.output.dense.weight.double().norm(dim=0).cpu()
        attn = layer.attention.self
        h, d = attn.num_attention_heads, attn.attention_head_size
        w = layer.attention.output.dense.weight.double().reshape(-1, h, d)
        return w.pow(2).sum((0, 2)).sqrt().cpu()


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

    def to_csv(self, path: str | Path) -> None:
        """Write ``layer,kind,unit,score`` rows (``inf`` written as ``inf``)."""
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["layer", "kind", "unit", "score"])
            w.writeheader()
            w.writerows(self.rows())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: ``method``, ``info``, ``ffn``/``heads`` as lists of lists (``inf`` -> ``None``)."""

        def clean(per_layer):
            if per_layer is None:
                return None
            return [[None if not math.isfinite(v) else v for v in s.tolist()] for s in per_layer]

        return {"method": self.method, "info": self.info, "ffn": clean(self.ffn), "heads": clean(self.heads)}

    def to_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

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


def resolve_method(method: str) -> str:
    """``method`` with the ``"topological"`` alias resolved; raises ``ValueError`` for unknown names."""
    check_method(method)
    if not isinstance(method, str):
        raise ValueError(f"resolve_method takes a method name from {METHODS}; got {method!r}")
    return DEFAULT_TOPOLOGICAL if method == "topological" else method


def compute_importance(
    model: nn.Module,
    dataloader: Iterable[Mapping[str, Any]] | None = None,
    *,
    method: str = DEFAULTS.method,  # type: ignore[assignment]
    units: Sequence[str] = DEFAULTS.units,
    max_positions: int = DEFAULTS.max_positions,
    max_batches: int | None = DEFAULTS.max_batches,
    stat: str = DEFAULTS.stat,
    seed: int = DEFAULTS.seed,
    outputs: UnitOutputs | None = None,
) -> ImportanceTable:
    """Score every FFN unit and attention head of ``model`` with ``method``.

    Args:
        model: BERT-family Hugging Face model.
        dataloader: calibration batches (needed by every method but ``magnitude`` and ``random``).
        method: one of :data:`METHODS` (default ``"topological"`` = :data:`DEFAULT_TOPOLOGICAL`).
        units: kinds to score, subset of ``("ffn", "heads")``.
        max_positions: token positions sampled for calibration (default 2048).
        max_batches: use at most this many calibration batches.
        stat: reading B's summary, ``"max"`` (largest gap, default) or ``"total"`` (range).
        seed: seeds the position sample and ``random``.
        outputs: precomputed :func:`collect_unit_outputs` result (skips the forward passes).

    Returns:
        An :class:`ImportanceTable`; higher scores are kept first.
    """
    method = resolve_method(method)
    units = check_units(units)
    check_stat(stat)
    seed = check_int("seed", seed, 0)
    layers = encoder_layers(model)
    if method not in _DATA_FREE and outputs is None:
        if dataloader is None:
            raise ValueError(f"method {method!r} needs a calibration dataloader")
        outputs = collect_unit_outputs(
            model, dataloader, units=units, max_positions=max_positions, max_batches=max_batches, seed=seed
        )
    gen = torch.Generator().manual_seed(seed)
    result: dict[str, list[Tensor] | None] = {"ffn": None, "heads": None}
    for kind in units:
        per_layer = []
        for i, layer in enumerate(layers):
            if method == "magnitude":
                s = _magnitude(layer, kind)
            elif method == "random":
                n = (
                    layer.intermediate.dense.out_features
                    if kind == "ffn"
                    else layer.attention.self.num_attention_heads
                )
                s = torch.rand(n, generator=gen, dtype=torch.float64)
            else:
                data = (outputs.ffn if kind == "ffn" else outputs.heads)[i]  # type: ignore[union-attr,index]
                if method == "activation":
                    mean_abs = data.abs().mean(0) if kind == "ffn" else data.norm(dim=2).mean(0)
                    s = mean_abs.double() * _out_norm(layer, kind)
                elif method == "topological-redundancy":
                    s = redundancy_scores(data.T if kind == "ffn" else data.permute(1, 0, 2))
                else:  # topological-1d
                    s = (
                        distribution_scores(data, stat=stat)
                        if kind == "ffn"
                        else cloud_h0_scores(data, stat=stat)
                    )
            per_layer.append(s)
        result[kind] = per_layer
    info = {"stat": stat, "seed": seed, "num_positions": None if outputs is None else outputs.num_positions}
    return ImportanceTable(method=method, ffn=result["ffn"], heads=result["heads"], info=info)
