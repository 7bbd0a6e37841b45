"""Latent concepts: Ward clustering, alignment with labels, matching between models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_topo.scores.concepts import (
    align_concepts,
    chance_match_share,
    chance_polar_share,
    concept_top_words,
    default_n_concepts,
    discover_concepts,
    match_concepts,
    polar_concepts,
)


def _clusters(n_clusters: int = 6, per: int = 25, dim: int = 16, seed: int = 0):
    """Well-separated Gaussian blobs (centres ~100 apart, noise 1), tokens shuffled."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, dim, generator=g) * 100
    truth = torch.arange(n_clusters).repeat_interleave(per)
    points = centres[truth] + torch.randn(truth.numel(), dim, generator=g)
    order = torch.randperm(truth.numel(), generator=g)
    return points[order], truth[order]


def _same_partition(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_well_separated_clusters_are_found_and_aligned():
    points, truth = _clusters()
    ids = discover_concepts(points, n_concepts=6)
    assert ids.shape == truth.shape and ids.dtype == torch.long
    assert _same_partition(ids, truth)
    names = [f"tag{int(t)}" for t in truth]
    al = align_concepts(ids, names, theta=0.9)
    assert al.share == 1.0
    for cid in range(6):
        members = {names[i] for i in torch.nonzero(ids == cid).flatten().tolist()}
        assert al.labels[cid] == members.pop()
    assert torch.equal(al.sizes, torch.bincount(ids))
    assert torch.allclose(al.purity, torch.ones(6, dtype=torch.float64))


def test_ward_partition_agrees_with_scipy():
    from scipy.cluster.hierarchy import fcluster, linkage

    x = np.random.default_rng(3).standard_normal((150, 8))
    ids = discover_concepts(x, n_concepts=12)
    ref = fcluster(linkage(x, method="ward"), 12, criterion="maxclust")
    assert _same_partition(ids, ref)


def test_discover_is_deterministic_and_numbered_by_first_appearance():
    x = torch.randn(120, 10, generator=torch.Generator().manual_seed(1))
    a, b = discover_concepts(x, 7), discover_concepts(x.clone(), 7)
    assert torch.equal(a, b)
    firsts = [int(torch.nonzero(a == c)[0]) for c in range(7)]
    assert firsts == sorted(firsts) and a[0] == 0


def test_default_n_concepts_scales_with_tokens():
    assert default_n_concepts(2000) == 100
    assert default_n_concepts(100_000) == 600
    assert default_n_concepts(5) == 1
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(2))
    assert int(discover_concepts(x).max()) + 1 == 10


def test_model_matches_itself_fully_and_a_shuffled_model_far_less():
    points, _ = _clusters(n_clusters=10, per=20, seed=4)
    ids = discover_concepts(points + 0.0, n_concepts=40)
    assert match_concepts(ids, ids).share == 1.0
    assert torch.equal(match_concepts(ids, ids).matches, torch.arange(40))
    perm = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(5))
    shuffled = discover_concepts(points[perm], n_concepts=40)  # token i now has another token's vector
    result = match_concepts(ids, shuffled)
    assert result.share < 0.3
    assert (result.matches[result.overlap < 0.9] == -1).all()


def test_alignment_at_exactly_theta_is_included():
    ids = torch.zeros(10, dtype=torch.long)
    labels = ["x"] * 7 + ["y"] * 3
    assert align_concepts(ids, labels, theta=0.7).labels == ["x"]  # 0.7 * 10 > 7.0 in floating point
    assert align_concepts(ids, ["x"] * 6 + ["y"] * 4, theta=0.7).labels == [None]
    assert align_concepts(ids, ["x"] * 9 + [None], theta=0.9).share == 1.0
    assert align_concepts(ids, ["x"] * 8 + [None] * 2, theta=0.9).share == 0.0


def test_match_at_exactly_theta_is_included():
    a = torch.tensor([0] * 7 + [1] * 3)
    b = torch.zeros(10, dtype=torch.long)
    assert match_concepts(a, b, theta=0.7).share == 1.0
    assert match_concepts(a, b, theta=0.71).share == 0.0
    # overlap is measured against B's concept: A's concept 0 lies wholly in B's concept 0
    assert match_concepts(b, a, theta=1.0).share == 1.0


def test_none_labels_count_but_never_align():
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    al = align_concepts(ids, [None, None, None, "a", "a", None], theta=0.6)
    assert al.labels == [None, "a"]
    assert al.share == 0.5
    assert al.purity.tolist() == pytest.approx([0.0, 2 / 3])


def test_polar_concepts_and_top_words():
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    classes = torch.tensor([0, 0, 1, 1, 1, 0, 0, 0, 1])
    polar = polar_concepts(ids, classes, num_classes=2)
    assert polar[1] == (1, 1.0)
    assert polar[0][0] == 2 and polar[0][1] == pytest.approx(0.75)
    words = ["a", "b", "a", "c", "c", "d", "d", "e", "d"]
    top = concept_top_words(ids, words, top_k=1)
    assert top == [[("a", 2)], [("c", 2)], [("d", 3)]]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: discover_concepts(torch.randn(5, 3), n_concepts=6), "n_concepts"),
        (lambda: discover_concepts(torch.randn(5, 3), n_concepts=0), "n_concepts"),
        (lambda: discover_concepts(torch.empty(0, 3)), "empty"),
        (lambda: discover_concepts(torch.randn(5)), r"\(n_tokens, d\)"),
        (lambda: discover_concepts(torch.tensor([[0.0], [float("nan")]])), "NaN"),
        (lambda: align_concepts([0, 1], ["a"]), "token_labels"),
        (lambda: align_concepts([0, 1], ["a", "b"], theta=0.0), "theta"),
        (lambda: align_concepts([0, 1], ["a", "b"], theta=1.5), "theta"),
        (lambda: match_concepts([0, 1], [0, 1, 1]), "same token set"),
        (lambda: match_concepts([0, -1], [0, 1]), "ids_a"),
        (lambda: polar_concepts([0, 1], [0, 2], num_classes=2), "token_classes"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_describe_layer_reports_shares_and_readable_concepts():
    from lightning_topo.scores.concepts import describe_layer

    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    ref = torch.tensor([0, 0, 0, 1, 1, 2])
    words = ["good", "great", "good", "the", ",", "the"]
    classes = torch.tensor([1, 1, 1, 0, 1, 0])
    sets = {"punctuation": [None, None, None, None, "punctuation", None]}
    out = describe_layer(ids, words, classes, 2, sets, reference_ids=ref, theta=0.9, top_k=2)
    assert out["matched"] == 0.5 and out["polar"] == 0.5 and out["aligned"] == {"punctuation": 0.0}
    first, second = out["concepts"]
    assert (
        first["words"] == [["good", 2], ["great", 1]] and first["polar_class"] == 1 and first["matched"] == 0
    )
    assert second["polar_class"] is None and second["matched"] is None
    assert second["class_share"] == pytest.approx(2 / 3, abs=1e-4)
    assert describe_layer(ids, words, classes, 2, {})["matched"] is None


def test_chance_polar_share_is_the_binomial_tail():
    assert chance_polar_share([2], [0.5, 0.5], theta=0.9) == pytest.approx(0.5)
    assert chance_polar_share([5, 0], [0.5, 0.5], theta=0.9) == pytest.approx(2 * 0.5**5)
    assert chance_polar_share(torch.tensor([10]), [0.8, 0.2], theta=0.9) == pytest.approx(
        0.8**10 + 10 * 0.8**9 * 0.2 + 0.2**10 + 10 * 0.2**9 * 0.8
    )
    # Monte Carlo check of the definition: random classes for concepts of mixed sizes
    g = torch.Generator().manual_seed(0)
    sizes = [3, 7, 12]
    hits = []
    for _ in range(4000):
        ids = torch.arange(3).repeat_interleave(torch.tensor(sizes))
        classes = (torch.rand(ids.numel(), generator=g) < 0.3).long().tolist()
        hits.append(align_concepts(ids, classes, theta=0.9).share)
    assert float(np.mean(hits)) == pytest.approx(chance_polar_share(sizes, [0.7, 0.3], 0.9), abs=0.01)


def test_chance_match_share_is_high_for_singletons_and_low_for_big_concepts():
    big = torch.arange(10).repeat_interleave(20)
    assert match_concepts(big, big).share == 1.0
    assert chance_match_share(big, big) < 0.1
    singles = torch.arange(200)
    assert chance_match_share(big, singles) == 1.0


def test_metric_names_agree_with_metrics():
    from lightning_topo.scores.concepts import concept_metric_names, concept_metrics, describe_layer

    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    words = ["a", "b", "c", "d", "e", "f"]
    classes = torch.tensor([0, 0, 1, 1, 0, 1])
    sets = {"lexical": words, "casing": ["lower"] * 6}
    for ref in (None, ids):
        desc = {layer: describe_layer(ids, words, classes, 2, sets, reference_ids=ref) for layer in (0, 3)}
        metrics = concept_metrics(desc)
        assert list(metrics) == concept_metric_names([0, 3], list(sets), matched=ref is not None)
        assert metrics["polar/layer_3"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(("n", "d", "k"), [(120, 16, 6), (300, 64, 15), (200, 768, 10)])
def test_ward_engine_gives_scikit_learns_partition(n, d, k):
    """discover_concepts (distances from one matrix product + SciPy's Ward) = scikit-learn's Ward cut at k."""
    from sklearn.cluster import AgglomerativeClustering

    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + torch.randn(5, d, generator=g, dtype=torch.float64)[
        torch.arange(n) % 5
    ] * 3
    ours = discover_concepts(x, k)
    ref = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x.numpy())
    assert int(ours.max()) + 1 == k and _same_partition(ours, ref)


def test_ward_cut_has_exactly_k_clusters_with_tied_heights():
    points = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0], [11.0]], dtype=torch.float64)  # equal gaps: ties
    for k in range(1, 7):
        assert int(discover_concepts(points, k).max()) + 1 == k
