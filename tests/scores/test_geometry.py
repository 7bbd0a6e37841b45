"""Geometry scores on hand-made inputs with known answers, NumPy references and gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_topo.scores.geometry import (
    attention_entropy,
    attention_entropy_from_logits,
    cone_index,
    cone_index_per_head,
    directionality,
    geometry_metrics,
    matrix_histogram_entropy,
    metric_names,
    projection_singular_values,
    qk_spectral_entropy,
)

# ------------------------------------------------------------------------------- cone index


def test_cone_index_one_direction_is_n_and_normalised_one():
    direction = torch.tensor([0.6, -0.8, 0.0])
    scales = torch.tensor([0.5, 1.0, 3.0, 7.0, 0.1])
    x = (scales[:, None] * direction)[None]  # (1, 5, 3)
    assert cone_index(x).item() == pytest.approx(5.0, rel=1e-6)
    assert cone_index(x, normalize=True).item() == pytest.approx(1.0, rel=1e-6)


def test_cone_index_orthonormal_vectors_is_sqrt_n():
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    x = (q.T[:6] * torch.arange(1, 7, dtype=torch.float64)[:, None])[None]  # 6 orthogonal rows, varied norms
    assert cone_index(x).item() == pytest.approx(math.sqrt(6), rel=1e-9)
    assert cone_index(x, normalize=True).item() == pytest.approx(math.sqrt(6) / 6, rel=1e-9)


def test_cone_index_opposite_pair_is_zero():
    x = torch.tensor([[[1.0, 2.0, -2.0], [-3.0, -6.0, 6.0]]])
    assert cone_index(x).item() == pytest.approx(0.0, abs=1e-6)


def test_masked_padding_position_changes_nothing():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 5, generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 6] = 0
    got = cone_index(x, mask, normalize=True)
    for b, n in enumerate(mask.sum(1).tolist()):
        expected = cone_index(x[b : b + 1, :n], normalize=True)
        if b == 2:
            expected = cone_index(x[2:3, :6], normalize=True)
        assert got[b].item() == pytest.approx(expected.item(), rel=1e-6)
    # changing a masked position's vector does not move the value
    y = x.clone()
    y[1, 5] = 100.0
    assert torch.allclose(cone_index(y, mask), cone_index(x, mask))
    # ... but the same change without a mask does
    assert not torch.allclose(cone_index(y), cone_index(x))


def test_zero_vectors_are_skipped_without_nan_gradient():
    x = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    value = cone_index(x, normalize=True)
    assert value.item() == pytest.approx(1.0)  # two used positions, same direction
    value.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert cone_index(torch.zeros(1, 3, 2)).item() == 0.0


def test_cone_index_matches_numpy_reference():
    """The authors' ``distance_cone``: row-normalise, sum the rows, L2 norm."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 9, 6, generator=g, dtype=torch.float64) + 0.3
    for b in range(4):
        mat = x[b].numpy()
        expected = np.linalg.norm((mat / np.linalg.norm(mat, axis=1, keepdims=True)).sum(axis=0))
        assert cone_index(x)[b].item() == pytest.approx(expected, rel=1e-12)


def test_gradcheck_cone_index_float64():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.autograd.gradcheck(lambda t: cone_index(t, mask, normalize=True), (x,))
    assert torch.autograd.gradcheck(lambda t: cone_index(t), (x,))


def test_cone_index_per_head_equals_slices():
    g = torch.Generator().manual_seed(5)
    ctx = torch.randn(2, 6, 12, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    got = cone_index_per_head(ctx, 3, mask, normalize=True)
    assert got.shape == (2, 3)
    for h in range(3):
        expected = cone_index(ctx[:, :, 4 * h : 4 * h + 4], mask, normalize=True)
        assert torch.allclose(got[:, h], expected)
    assert torch.autograd.gradcheck(lambda t: cone_index_per_head(t, 3, mask), (ctx,))


def test_cone_index_rejects_empty_mask_rows_and_bad_input():
    x = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="no valid position in sequence"):
        cone_index(x, torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="shape"):
        cone_index(x, torch.ones(2, 5))
    with pytest.raises(ValueError, match="only 0 and 1"):
        cone_index(x, torch.full((2, 4), 2))
    with pytest.raises(ValueError, match="3-D"):
        cone_index(torch.randn(4, 3))
    with pytest.raises(TypeError, match="floating"):
        cone_index(torch.ones(2, 4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="num_heads"):
        cone_index_per_head(torch.randn(2, 4, 10), 3)


# ------------------------------------------------------------------------------- attention entropy


def _random_attention(seed: int, batch: int, heads: int, seq: int, key_mask: torch.Tensor | None = None):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, heads, seq, seq, generator=g, dtype=torch.float64) * 2
    if key_mask is not None:
        scores = scores.masked_fill(key_mask[:, None, None, :] == 0, float("-inf"))
    return scores.softmax(dim=-1)


def test_attention_entropy_matches_numpy_reference():
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, 1:] = 0
    attn = _random_attention(0, 3, 2, 6, mask)
    got = attention_entropy(attn, mask)
    p = attn.numpy()
    for b in range(3):
        n = int(mask[b].sum())
        for h in range(2):
            rows = p[b, h, :n]
            with np.errstate(divide="ignore", invalid="ignore"):
                terms = np.where(rows > 0, rows * np.log(rows), 0.0)
            expected = float(np.mean(-terms.sum(axis=1)))
            assert got[b, h].item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("seq", [1, 4, 9])
def test_uniform_attention_has_entropy_log_seq(seq):
    attn = torch.full((2, 3, seq, seq), 1.0 / seq)
    assert torch.allclose(attention_entropy(attn), torch.full((2, 3), math.log(seq)), atol=1e-6)


def test_uniform_over_valid_keys_is_log_of_valid_count_and_one_hot_is_zero():
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    attn = torch.zeros(1, 1, 5, 5)
    attn[..., :3] = 1.0 / 3
    assert attention_entropy(attn, mask).item() == pytest.approx(math.log(3), rel=1e-6)
    one_hot = torch.eye(5)[None, None]
    assert attention_entropy(one_hot).item() == 0.0


def test_attention_entropy_is_differentiable():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(s):
        return attention_entropy(s.masked_fill(mask[:, None, None, :] == 0, -1e9).softmax(-1), mask)

    assert torch.autograd.gradcheck(fn, (scores,))


def test_attention_entropy_rejects_scores_and_bad_masks():
    with pytest.raises(ValueError, match="sum to 1"):
        attention_entropy(torch.rand(1, 2, 3, 3) + 0.5)
    with pytest.raises(ValueError, match=">= 0"):
        attention_entropy(torch.randn(1, 2, 3, 3))
    with pytest.raises(ValueError, match="square"):
        attention_entropy(torch.full((1, 1, 3, 4), 0.25))
    with pytest.raises(ValueError, match="no valid position"):
        attention_entropy(torch.full((2, 1, 3, 3), 1 / 3), torch.tensor([[1, 1, 1], [0, 0, 0]]))


def test_entropy_from_logits_equals_entropy_of_the_masked_softmax():
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 2, 6, 6, generator=g, dtype=torch.float64) * 4
    probs = logits.masked_fill(mask[:, None, None, :] == 0, float("-inf")).softmax(-1)
    got = attention_entropy_from_logits(logits, mask)
    assert torch.allclose(got, attention_entropy(probs, mask), rtol=1e-10)
    assert got[2].abs().max().item() == 0.0  # one valid key: no uncertainty
    assert torch.allclose(
        attention_entropy_from_logits(torch.zeros(1, 1, 5, 5)), torch.full((1, 1), math.log(5)), atol=1e-6
    )
    x = logits[:2, :, :4, :4].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: attention_entropy_from_logits(t, mask[:2, :4]), (x,))
    with pytest.raises(ValueError, match="no valid position"):
        attention_entropy_from_logits(logits, torch.zeros(3, 6))


def test_matrix_histogram_entropy_follows_the_authors_binning():
    # pandas.cut(bins=2) edges for [0, 0.5, 1]: (-0.001, 0.5], (0.5, 1]: 0.5 falls in the first bin
    got = matrix_histogram_entropy(torch.tensor([[0.0, 0.5, 1.0]]), bins=2)
    expected = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert matrix_histogram_entropy(torch.tensor([0.0, 1.0, 0.0, 1.0])).item() == pytest.approx(math.log(2))
    assert matrix_histogram_entropy(torch.full((3, 3), 2.0)).item() == 0.0
    # continuous data: no value on an inner edge, so NumPy's histogram gives the same counts
    values = torch.randn(40, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    counts, _ = np.histogram(values.numpy().ravel(), bins=20)
    p = counts[counts > 0] / counts.sum()
    assert matrix_histogram_entropy(values).item() == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-12)


# ------------------------------------------------------------------------------- weights


def _heads(seed: int, num_heads: int = 3, d_head: int = 4, hidden: int = 10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_heads * d_head, hidden, generator=g, dtype=torch.float64)


def _full_m(w_q, w_k, num_heads, h):
    d_head = w_q.shape[0] // num_heads
    a = w_q[h * d_head : (h + 1) * d_head].numpy()
    b = w_k[h * d_head : (h + 1) * d_head].numpy()
    return a.T @ b  # (hidden, hidden): x_i^T M x_j = q_i . k_j


def test_directionality_is_one_for_symmetric_and_zero_for_antisymmetric():
    num_heads, d_head = 3, 4
    w_q = _heads(0, num_heads, d_head)
    g = torch.Generator().manual_seed(9)
    sym_blocks, anti_blocks = [], []
    for h in range(num_heads):
        r = torch.randn(d_head, d_head, generator=g, dtype=torch.float64)
        a = w_q[h * d_head : (h + 1) * d_head]
        sym_blocks.append((r + r.T) @ a)  # M = Aᵀ S A, S symmetric
        anti_blocks.append((r - r.T) @ a)  # M = Aᵀ G A, G antisymmetric
    assert torch.allclose(directionality(w_q, w_q, num_heads), torch.ones(num_heads, dtype=torch.float64))
    sym = directionality(w_q, torch.cat(sym_blocks), num_heads)
    anti = directionality(w_q, torch.cat(anti_blocks), num_heads)
    assert torch.allclose(sym, torch.ones(num_heads, dtype=torch.float64))
    assert torch.allclose(anti, torch.zeros(num_heads, dtype=torch.float64), atol=1e-12)


def test_directionality_and_spectral_entropy_match_the_full_product():
    num_heads = 3
    w_q, w_k = _heads(1, num_heads), _heads(2, num_heads)
    direc = directionality(w_q, w_k, num_heads)
    spec = qk_spectral_entropy(w_q, w_k, num_heads)
    spec_l2 = qk_spectral_entropy(w_q, w_k, num_heads, normalization="l2")
    for h in range(num_heads):
        m = _full_m(w_q, w_k, num_heads, h)
        s = (m + m.T) / 2
        assert direc[h].item() == pytest.approx(np.sum(s**2) / np.sum(m**2), rel=1e-10)
        sigma = np.linalg.svd(m, compute_uv=False)
        sigma = sigma[sigma > 1e-10 * sigma.max()]
        for p, got in ((sigma / sigma.sum(), spec[h]), (sigma / np.linalg.norm(sigma), spec_l2[h])):
            assert got.item() == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-8)


def test_spectral_entropy_known_answers():
    # W_q^h = W_k^h = rows of the identity: M_h = a projection with d_head equal singular values
    eye = torch.eye(8, dtype=torch.float64)
    assert torch.allclose(
        qk_spectral_entropy(eye, eye, 2), torch.full((2,), math.log(4), dtype=torch.float64)
    )
    # rank one M_h: entropy 0
    w = torch.zeros(4, 8, dtype=torch.float64)
    w[0, 0] = 1.0
    w[2, 1] = 2.0
    assert torch.allclose(qk_spectral_entropy(w, w, 2), torch.zeros(2, dtype=torch.float64), atol=1e-12)


def test_weight_scores_gradcheck():
    w_q = _heads(3, 2, 3, 5).requires_grad_()
    w_k = _heads(4, 2, 3, 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: directionality(a, b, 2), (w_q, w_k))
    assert torch.autograd.gradcheck(lambda a, b: qk_spectral_entropy(a, b, 2), (w_q, w_k))
    assert torch.autograd.gradcheck(lambda a: projection_singular_values(a, 2), (w_q,))


def test_projection_singular_values_are_those_of_each_row_block():
    w = _heads(5, 3, 4, 10)
    got = projection_singular_values(w, 3)
    assert got.shape == (3, 4)
    for h in range(3):
        expected = np.linalg.svd(w[4 * h : 4 * h + 4].numpy(), compute_uv=False)
        np.testing.assert_allclose(got[h].numpy(), expected, rtol=1e-10)


def test_zero_head_gives_nan_directionality_and_bad_shapes_raise():
    w_q = _heads(6, 2, 3, 5)
    w_k = w_q.clone()
    w_k[3:] = 0
    out = directionality(w_q, w_k, 2)
    assert out[0].item() == pytest.approx(1.0) and math.isnan(out[1].item())
    with pytest.raises(ValueError, match="multiple of num_heads"):
        directionality(w_q, w_q, 4)
    with pytest.raises(ValueError, match="same shape"):
        directionality(w_q, w_q[:, :4], 2)
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        projection_singular_values(w_q, 0)
    with pytest.raises(ValueError, match="normalization"):
        qk_spectral_entropy(w_q, w_q, 2, normalization="l1")


# ------------------------------------------------------------------------------- what a lens logs


def _layer_inputs(layers, heads=3, attention=True):
    g = torch.Generator().manual_seed(11)
    acts, weights = {}, {}
    for i in layers:
        acts[i] = {
            "cone/input": torch.rand((), generator=g),
            "cone/attention_output": torch.rand((), generator=g),
            "cone/output": torch.rand((), generator=g),
            "cone/heads": torch.rand(heads, generator=g),
        }
        if attention:
            acts[i]["attention_entropy"] = torch.rand(heads, generator=g)
        weights[i] = {
            "directionality": torch.rand(heads, generator=g),
            "qk_spectral_entropy": torch.rand(heads, generator=g),
        }
    return acts, weights


@pytest.mark.parametrize("attention", [True, False])
def test_geometry_metrics_names_agree_with_metric_names(attention):
    acts, weights = _layer_inputs([2, 5], attention=attention)
    result = geometry_metrics(acts, weights)
    assert list(result.values) == metric_names([2, 5], attention=attention)
    assert result.layers == [2, 5]
    assert result.values["cone/layer_5"] is acts[5]["cone/output"]
    assert result.values["cone/layer_2/heads"].item() == pytest.approx(acts[2]["cone/heads"].mean().item())
    assert set(result.heads) == {"cone_heads", "directionality", "qk_spectral_entropy"} | (
        {"attention_entropy"} if attention else set()
    )
    assert torch.equal(result.heads["directionality"][1], weights[5]["directionality"])


def test_geometry_metrics_ignores_nan_heads_and_refuses_mismatched_layers():
    acts, weights = _layer_inputs([1])
    weights[1]["directionality"] = torch.tensor([0.2, math.nan, 0.4])
    assert geometry_metrics(acts, weights).values["directionality/layer_1"].item() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="same layers"):
        geometry_metrics(acts, {2: weights[1]})
