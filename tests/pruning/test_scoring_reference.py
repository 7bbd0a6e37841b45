"""The fast topological scoring keeps exactly the units the previous per-head implementation kept.

The reference below is the implementation before the batched version (issue 24 item 5), kept
here and not in the package: FFN bars from a sort along the positions, and one
``minimum_spanning_tree(pairwise_distances(...))`` per head.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lightning_topo.pruning import (
    collect_unit_outputs,
    compute_importance,
    layout,
    plan_keep_masks,
    prune_model,
)
from lightning_topo.pruning import importance as imp
from lightning_topo.pruning.importance import ImportanceTable, cloud_h0_scores, distribution_scores
from lightning_topo.topology import minimum_spanning_tree, pairwise_distances


def _ref_distribution(values, stat):
    gaps = torch.diff(torch.sort(values.double(), dim=0).values, dim=0)
    return gaps.amax(dim=0) if stat == "max" else gaps.sum(dim=0)


def _ref_cloud(clouds, stat):
    out = torch.empty(clouds.shape[1], dtype=torch.float64)
    for h in range(clouds.shape[1]):
        _, lengths = minimum_spanning_tree(pairwise_distances(clouds[:, h].double()))
        out[h] = lengths.max() if stat == "max" else lengths.sum()
    return out


def _ref_table(model, outputs, method, stat):
    """The previous ``topological-1d`` / ``topological-contribution`` scores."""
    layers = layout.encoder_layers(model)
    ffn, heads = [], []
    for layer, values, context in zip(layers, outputs.ffn, outputs.heads, strict=True):
        if method == "topological-1d":
            ffn.append(_ref_distribution(values, stat))
            heads.append(_ref_cloud(context, stat))
            continue
        w_out = layout.ffn_output(layer).weight.detach().double()
        ffn.append(_ref_distribution(values, stat) * w_out.norm(dim=0))
        h, d = layout.num_heads(layer), layout.head_size(layer)
        w = layout.attention_output(layer).weight.detach().double().reshape(-1, h, d)
        r = torch.linalg.qr(w.permute(1, 0, 2)).R
        heads.append(_ref_cloud(torch.einsum("nhk,hjk->nhj", context.double(), r), stat))
    return ImportanceTable(method=method, ffn=ffn, heads=heads)


@pytest.fixture
def calibrated(tiny_classifier):
    g = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(4):
        ids = torch.randint(5, 128, (8, 12), generator=g)
        mask = (torch.arange(12)[None, :] < torch.randint(4, 13, (8, 1), generator=g)).long()
        batches.append({"input_ids": ids, "attention_mask": mask})
    model = copy.deepcopy(tiny_classifier)
    with torch.no_grad():  # spread the weights so that units differ clearly
        for p in model.parameters():
            p.mul_(8.0)
    return model, batches, collect_unit_outputs(model, batches)


@pytest.mark.parametrize(
    "method,stat",
    [
        ("topological-contribution", "total"),
        ("topological-contribution", "max"),
        ("topological-1d", "max"),
        ("topological-1d", "total"),
    ],
)
def test_fast_scores_and_kept_units_equal_the_reference(calibrated, method, stat):
    model, batches, outputs = calibrated
    fast = compute_importance(model, None, method=method, stat=stat, outputs=outputs)
    ref = _ref_table(model, outputs, method, stat)
    for kind in ("ffn", "heads"):  # equal up to the rounding of the distance GEMM (both compute
        for a, b in zip(fast.scores(kind), ref.scores(kind), strict=True):  # |x|^2 + |y|^2 - 2 x.y)
            torch.testing.assert_close(a, b, rtol=1e-8, atol=0)
    for ratio in (0.8, 0.6, 0.4):
        got = plan_keep_masks(model, fast, ratio=ratio, ffn_multiple=1)
        want = plan_keep_masks(model, ref, ratio=ratio, ffn_multiple=1)
        for kind in ("ffn", "heads"):
            for a, b in zip(getattr(got, kind), getattr(want, kind), strict=True):
                assert torch.equal(a, b), (kind, ratio)


def test_default_prune_model_keeps_the_reference_units(calibrated):
    """``method="topological"`` (contribution, total) end to end, against masks from the reference."""
    model, batches, outputs = calibrated
    ref = _ref_table(model, outputs, "topological-contribution", "total")
    want = plan_keep_masks(model, ref, ratio=0.5)
    _, info = prune_model(copy.deepcopy(model), batches, ratio=0.5, return_info=True)
    for kind in ("ffn", "heads"):
        for a, b in zip(getattr(info.masks, kind), getattr(want, kind), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    "chunk_bytes", [1, 40 * 40 * 8, 10**9]
)  # per-head fallback, one head per chunk, all heads
def test_cloud_scores_do_not_depend_on_the_chunking(chunk_bytes, monkeypatch):
    g = torch.Generator().manual_seed(0)
    clouds = torch.randn(40, 5, 3, generator=g, dtype=torch.float64)
    clouds[7] = clouds[3]  # a duplicate point: a zero-length bar
    monkeypatch.setattr(imp, "HEAD_CHUNK_BYTES", chunk_bytes)
    for stat in ("max", "total"):
        torch.testing.assert_close(
            cloud_h0_scores(clouds, stat=stat), _ref_cloud(clouds, stat), rtol=1e-10, atol=1e-12
        )


def test_batched_prim_builds_the_reference_tree():
    """Same vertex order and parents as topology.minimum_spanning_tree on clouds without ties; on a
    grid (exact ties, broken by rounding) another minimum spanning tree of the same lengths."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 30, 4, generator=g, dtype=torch.float64)
    w, sq = imp._batched_row_terms(x)
    par, new = imp._batched_prim(w.numpy(), sq.numpy())
    for i in range(3):
        edges, _ = minimum_spanning_tree(pairwise_distances(x[i]))
        assert np.array_equal(np.stack([par[i], new[i]], axis=1), edges.numpy())
    grid = torch.tensor(
        [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.5, 0.5]], dtype=torch.float64
    )
    w, sq = imp._batched_row_terms(grid[None])
    par, new = imp._batched_prim(w.numpy(), sq.numpy())
    _, lengths = minimum_spanning_tree(pairwise_distances(grid))
    ours = torch.linalg.vector_norm(grid[torch.from_numpy(par[0])] - grid[torch.from_numpy(new[0])], dim=1)
    assert sorted(set(new[0].tolist())) == [1, 2, 3, 4, 5]
    torch.testing.assert_close(torch.sort(ours).values, torch.sort(lengths).values)


def test_distribution_total_is_the_range():
    values = torch.tensor([[0.0, 5.0], [3.0, 5.0], [1.0, 5.0], [-2.0, 5.0]])
    assert distribution_scores(values, stat="total").tolist() == [5.0, 0.0]
    assert distribution_scores(values, stat="max").tolist() == [2.0, 0.0]


def test_non_finite_context_vectors_are_refused():
    clouds = torch.zeros(4, 2, 3)
    clouds[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        cloud_h0_scores(clouds)
