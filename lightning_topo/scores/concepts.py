"""Latent concepts of token representations and their alignment (Durrani et al. 2022).

Plain functions, no model and no I/O:

* :func:`discover_concepts` -- agglomerative clustering with Ward linkage of token vectors into
  latent concepts (the authors' ConceptX ``get_agglomerative_clusters.py`` uses scikit-learn's
  ``AgglomerativeClustering``, Ward, Euclidean; here the same Ward tree is built by SciPy from
  distances computed with one matrix product, and cut at ``K`` clusters as scikit-learn cuts it);
* :func:`align_concepts` -- a concept is aligned to a label when at least ``theta`` of its tokens
  carry it (human-defined concepts: POS, suffixes, the output class of the sentence, ...);
* :func:`match_concepts` -- which concepts of a model B are found again in a model A (e.g. the
  fine-tuned model against the pre-trained one) on the same tokens;
* :func:`polar_concepts`, :func:`concept_top_words` -- readable summaries.

What reproduces the authors' code and what is our choice is listed in ``docs/concepts.md``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform
from scipy.stats import binom
from torch import Tensor

__all__ = [
        "ConceptMatch",
    "FAMILIES",
    "LabelAlignment",
    "align_concepts",
    "chance_match_share",
    "chance_polar_share",
    "concept_metric_names",
    "concept_metrics",
    "concept_top_words",
    "default_n_concepts",
    "describe_layer",
    "discover_concepts",
    "match_concepts",
    "polar_concepts",
]

#: Upper bound of the default number of concepts (the paper's K on large corpora).
MAX_DEFAULT_CONCEPTS = 600
#: Tokens per concept of the default number of concepts.
TOKENS_PER_CONCEPT = 20
# Tolerance of the inclusive ``>= theta`` test: 7/10 must align at theta=0.7 although 0.7*10 > 7.0
# in floating point.
_EPS = 1e-9


def default_n_concepts(n_tokens: int) -> int:
    """Default number of concepts for ``n_tokens`` tokens: ``min(600, n_tokens // 20)``, at least 1.

    The paper clusters ~hundreds of thousands of tokens into K=600; on the small token sets of a
    training-time monitor K scales with the token count instead (our choice, methods.md 5).
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1; got {n_tokens}")
    return max(1, min(MAX_DEFAULT_CONCEPTS, n_tokens // TOKENS_PER_CONCEPT))


def discover_concepts(activations: Tensor | np.ndarray, n_concepts: int | None = None) -> Tensor:
    """Cluster token vectors into latent concepts by agglomerative clustering with Ward linkage.

    Deterministic: the same vectors in the same order give the same ids. Ids are renumbered by
    first appearance (token 0 is in concept 0, the first token not in concept 0 opens concept
    1, ...), so they do not depend on the clustering library's internal numbering.

    Args:
        activations: ``(n_tokens, d)`` token vectors (one layer). Computed in float64.
        n_concepts: number of concepts ``K`` (``1 <= K <= n_tokens``); ``None``:
            :func:`default_n_concepts` of ``n_tokens``.

    Returns:
        ``(n_tokens,)`` int64 concept id of every token, in ``[0, K)``.

    Raises:
        ValueError: empty or non-2-D ``activations``, non-finite values, or ``n_concepts``
            outside ``[1, n_tokens]``.
    """
    x = _as_points(activations)
    n = x.shape[0]
    k = default_n_concepts(n) if n_concepts is None else n_concepts
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n:
        raise ValueError(
            f"n_concepts must be an int in [1, n_tokens={n}]; got {n_concepts!r}. Use fewer concepts or "
            "a larger token set (n_concepts=None picks min(600, n_tokens // 20))."
        )
    if k == n:
        return _first_appearance(np.arange(n))
    if k == 1:
        return torch.zeros(n, dtype=torch.long)
    return _first_appearance(_cut_tree(ward_linkage(x), n, int(k)))


def ward_linkage(points: np.ndarray) -> np.ndarray:
    """SciPy's Ward linkage matrix ``(n - 1, 4)`` of ``(n, d)`` points (float64).

    The pairwise Euclidean distances come from one matrix product
    (``|a|^2 + |b|^2 - 2 a.b``, in float64, clamped at 0) instead of SciPy's ``pdist`` loop, which
    is what dominates the time at ``d = 768``; the tree is SciPy's nearest-neighbour-chain Ward,
    the same algorithm scikit-learn runs (``benchmarks/lenses_concepts.py`` and the tests check
    that the partitions agree).
    """
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float64))
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min_(0.0)
    d2.fill_diagonal_(0.0)
    condensed = squareform(d2.sqrt_().numpy(), checks=False)
    return linkage(condensed, method="ward")


def _cut_tree(tree: np.ndarray, n: int, k: int) -> np.ndarray:
    """Cluster of every point after the first ``n - k`` merges of a linkage matrix (scikit-learn's
    cut at ``n_clusters=k``: exactly ``k`` clusters, even with tied merge heights)."""
    parent = np.arange(2 * n - 1)

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = int(parent[a])
        return a

    for step in range(n - k):
        parent[root(int(tree[step, 0]))] = n + step
        parent[root(int(tree[step, 1]))] = n + step
    return np.array([root(i) for i in range(n)])


def _as_points(activations: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(activations, Tensor):
        x = activations.detach().to("cpu", torch.float64).numpy()
    else:
        x = np.asarray(activations, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"activations must be (n_tokens, d); got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("activations is empty (0 tokens): the token set has no tokens; give it text")
    if not np.isfinite(x).all():
        raise ValueError("activations has NaN or inf values; concepts of non-finite vectors are undefined")
    return x


def _first_appearance(labels: np.ndarray) -> Tensor:
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return torch.as_tensor(rank[inverse.reshape(-1)], dtype=torch.long)


def _as_ids(ids: Tensor | Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    arr = ids.detach().cpu().numpy() if isinstance(ids, Tensor) else np.asarray(ids)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of concept ids; got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0:
        raise ValueError(f"{name} must hold non-negative integer concept ids; got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _check_theta(theta: float) -> float:
    if isinstance(theta, bool) or not 0 < float(theta) <= 1:
        raise ValueError(f"theta must be in (0, 1] (share of a concept's tokens); got {theta!r}")
    return float(theta)


@dataclass(frozen=True)
class LabelAlignment:
    """Alignment of concepts with one label set.

    Attributes:
        labels: per concept id, the label it is aligned to, or ``None``.
        purity: ``(n_concepts,)`` share of the concept's tokens that carry its most frequent
            (non-``None``) label.
        sizes: ``(n_concepts,)`` tokens per concept.
        share: aligned concepts / concepts (the ``concepts/aligned/...`` metric).
    """

    labels: list[Hashable | None]
    purity: Tensor
    sizes: Tensor
    share: float


def align_concepts(
    concept_ids: Tensor | Sequence[int], token_labels: Sequence[Hashable | None], theta: float = 0.9
) -> LabelAlignment:
    """Align each concept with a label: ``l`` when at least ``theta`` of its tokens carry ``l``.

    The test is inclusive (a concept with exactly ``theta`` of its tokens labelled ``l`` is
    aligned). A ``None`` label means "no label in this set" (e.g. a word with no known suffix):
    it counts in the concept's size but a concept is never aligned to ``None``. When several
    labels reach ``theta`` (only possible for ``theta <= 0.5``) the most frequent wins, ties
    broken by first appearance in token order.

    Args:
        concept_ids: ``(n_tokens,)`` concept id of every token (from :func:`discover_concepts`).
        token_labels: ``n_tokens`` hashable labels (or ``None``), aligned with ``concept_ids``.
        theta: share threshold in ``(0, 1]``. Default 0.9 (the paper's).

    Raises:
        ValueError: lengths differ, bad ids or ``theta`` outside ``(0, 1]``.
    """
    ids = _as_ids(concept_ids, "concept_ids")
    theta = _check_theta(theta)
    if len(token_labels) != ids.size:
        raise ValueError(
            f"token_labels has {len(token_labels)} entries but concept_ids has {ids.size}; give one label "
            "per token (None for a token without a label)"
        )
    n_concepts = int(ids.max()) + 1
    counts: list[Counter] = [Counter() for _ in range(n_concepts)]
    for cid, label in zip(ids.tolist(), token_labels, strict=True):
        if label is not None:
            counts[cid][_hashable(label)] += 1
    sizes = np.bincount(ids, minlength=n_concepts)
    labels: list[Hashable | None] = []
    purity = np.zeros(n_concepts)
    for cid in range(n_concepts):
        if sizes[cid] == 0 or not counts[cid]:
            labels.append(None)
            continue
        best, count = counts[cid].most_common(1)[0]  # Counter keeps first-insertion order on ties
        purity[cid] = count / sizes[cid]
        labels.append(best if count >= theta * sizes[cid] - _EPS else None)
    present = sizes > 0
    aligned = sum(1 for cid in range(n_concepts) if present[cid] and labels[cid] is not None)
    return LabelAlignment(
        labels=labels,
        purity=torch.as_tensor(purity, dtype=torch.float64),
        sizes=torch.as_tensor(sizes, dtype=torch.long),
        share=aligned / int(present.sum()),
    )


def _hashable(label: Hashable) -> Hashable:
    return label.item() if isinstance(label, Tensor | np.generic) else label


@dataclass(frozen=True)
class ConceptMatch:
    """Concepts of model B found again in model A.

    Attributes:
        matches: ``(n_concepts_b,)`` id of the A concept each B concept matches, ``-1`` if none.
        overlap: ``(n_concepts_b,)`` the largest ``|c' ∩ c| / |c'|`` over A's concepts ``c``.
        share: matched B concepts / B concepts (the ``concepts/matched/...`` metric).
    """

    matches: Tensor
    overlap: Tensor
    share: float


def match_concepts(
    ids_a: Tensor | Sequence[int], ids_b: Tensor | Sequence[int], theta: float = 0.9
) -> ConceptMatch:
    """Match every concept ``c'`` of model B to a concept ``c`` of model A on the same tokens.

    ``c'`` matches ``c`` when at least ``theta`` of the tokens of ``c'`` lie in ``c``
    (``|c' ∩ c| / |c'| >= theta``, inclusive). For ``theta > 0.5`` a B concept matches at most
    one A concept. The overlap measure is our choice (the authors' repository has no model
    comparison script); see ``docs/concepts.md``.

    Args:
        ids_a: ``(n_tokens,)`` concept ids of model A (e.g. the pre-trained model).
        ids_b: ``(n_tokens,)`` concept ids of model B (e.g. the fine-tuned model), same tokens.
        theta: overlap threshold in ``(0, 1]``. Default 0.9.

    Raises:
        ValueError: lengths differ, bad ids or ``theta`` outside ``(0, 1]``.
    """
    a = _as_ids(ids_a, "ids_a")
    b = _as_ids(ids_b, "ids_b")
    theta = _check_theta(theta)
    if a.size != b.size:
        raise ValueError(
            f"ids_a has {a.size} tokens and ids_b has {b.size}; both models must be clustered on the same "
            "token set"
        )
    n_a, n_b = int(a.max()) + 1, int(b.max()) + 1
    table = np.zeros((n_b, n_a), dtype=np.int64)
    np.add.at(table, (b, a), 1)
    sizes = table.sum(axis=1)
    present = sizes > 0
    best = table.argmax(axis=1)
    overlap = np.where(present, table.max(axis=1) / np.maximum(sizes, 1), 0.0)
    matched = present & (table.max(axis=1) >= theta * sizes - _EPS)
    return ConceptMatch(
        matches=torch.as_tensor(np.where(matched, best, -1), dtype=torch.long),
        overlap=torch.as_tensor(overlap, dtype=torch.float64),
        share=int(matched.sum()) / int(present.sum()),
    )


def polar_concepts(
    concept_ids: Tensor | Sequence[int], token_classes: Sequence[int] | Tensor, num_classes: int
) -> dict[int, tuple[int, float]]:
    """The most polar concept of each output class: ``{class: (concept id, share of that class)}``.

    A concept's polarity towards class ``c`` is the share of its tokens that come from
    sentences of class ``c``; the most polar concept of ``c`` has the highest share, ties broken
    by the larger concept, then the smaller id. Used to pick adversarial trigger words.

    Args:
        concept_ids: ``(n_tokens,)`` concept ids (e.g. of the top layer).
        token_classes: ``(n_tokens,)`` output class of each token's sentence, in ``[0, num_classes)``.
        num_classes: number of output classes (``>= 2``).
    """
    ids = _as_ids(concept_ids, "concept_ids")
    cls = _as_ids(token_classes, "token_classes")
    if cls.size != ids.size or num_classes < 2 or cls.max() >= num_classes:
        raise ValueError(
            f"token_classes must give one class in [0, num_classes={num_classes}) per token "
            f"({ids.size} tokens); got {cls.size} entries with max {int(cls.max())}"
        )
    table = np.zeros((int(ids.max()) + 1, num_classes), dtype=np.int64)
    np.add.at(table, (ids, cls), 1)
    sizes = table.sum(axis=1)
    share = table / np.maximum(sizes, 1)[:, None]
    out: dict[int, tuple[int, float]] = {}
    for c in range(num_classes):
        order = np.lexsort((np.arange(sizes.size), -sizes, -share[:, c]))
        out[c] = (int(order[0]), float(share[order[0], c]))
    return out


def concept_top_words(
    concept_ids: Tensor | Sequence[int], words: Sequence[str], top_k: int = 10
) -> list[list[tuple[str, int]]]:
    """Per concept id, its ``top_k`` most frequent words with their counts (ties: first appearance).

    Args:
        concept_ids: ``(n_tokens,)`` concept ids.
        words: ``n_tokens`` word forms, aligned with ``concept_ids``.
        top_k: words kept per concept (``>= 1``).
    """
    ids = _as_ids(concept_ids, "concept_ids")
    if len(words) != ids.size:
        raise ValueError(
            f"words has {len(words)} entries but concept_ids has {ids.size}; give one word per token"
        )
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1; got {top_k}")
    counts: list[Counter] = [Counter() for _ in range(int(ids.max()) + 1)]
    for cid, word in zip(ids.tolist(), words, strict=True):
        counts[cid][word] += 1
    return [c.most_common(top_k) for c in counts]


def chance_polar_share(
    sizes: Tensor | Sequence[int], class_shares: Sequence[float], theta: float = 0.9
) -> float:
    """Polar share expected by chance: concepts of these sizes, token classes drawn independently.

    For a concept of ``n`` tokens whose classes are i.i.d. with probabilities ``class_shares``,
    it is aligned to class ``c`` when ``Binomial(n, p_c) >= ceil(theta * n)``; the result is the
    mean over concepts of ``sum_c P(aligned to c)`` (exact for ``theta > 0.5``, where the events
    are disjoint; an upper bound otherwise). Small concepts are aligned by chance often (a
    2-token concept is polar half of the time for two balanced classes), so read
    ``concepts/polar`` against this baseline (our addition; the paper's K=600 clusters of a
    large corpus are big enough for it to vanish).

    Args:
        sizes: tokens per concept (zeros are skipped). class_shares: share of each class among
            the tokens. theta: the alignment threshold.
    """
    theta = _check_theta(theta)
    n = np.asarray(sizes.tolist() if isinstance(sizes, Tensor) else sizes, dtype=np.int64)
    n = n[n > 0]
    if n.size == 0:
        raise ValueError("sizes has no non-empty concept")
    k_min = np.ceil(theta * n - _EPS)
    probs = sum(binom.sf(k_min - 1, n, float(p)) for p in class_shares if p > 0)
    return float(np.mean(np.minimum(probs, 1.0)))


def chance_match_share(
    ids_a: Tensor | Sequence[int], ids_b: Tensor | Sequence[int], theta: float = 0.9, n_permutations: int = 5,
    seed: int = 0,
) -> float:  # fmt: skip
    """Matched share expected by chance: B's concepts (same sizes) filled with randomly permuted tokens.

    The mean of :func:`match_concepts` ``(ids_a, ids_b[perm]).share`` over ``n_permutations``
    seeded permutations of the tokens. Singletons and very small concepts match by chance; read
    ``concepts/matched`` against this baseline (our addition).
    """
    b = torch.as_tensor(_as_ids(ids_b, "ids_b"))
    g = torch.Generator().manual_seed(seed)
    shares = [
        match_concepts(ids_a, b[torch.randperm(b.numel(), generator=g)], theta).share
        for _ in range(n_permutations)
    ]
    return float(np.mean(shares))


def describe_layer(
    concept_ids: Tensor,
    words: Sequence[str],
    token_classes: Tensor,
    num_classes: int,
    label_sets: dict[str, Sequence[Hashable | None]],
    reference_ids: Tensor | None = None,
    theta: float = 0.9,
    top_k: int = 10,
) -> dict:
    """Shares and a readable description of one layer's concepts (JSON-ready).

    Args:
        concept_ids: ``(n_tokens,)`` concept ids of the layer.
        words: ``n_tokens`` word forms. token_classes: ``(n_tokens,)`` output class of each token.
        num_classes: number of output classes.
        label_sets: ``{name: one label per token}`` (see :func:`align_concepts`).
        reference_ids: ``(n_tokens,)`` the reference model's concept ids on the same tokens
            (``None``: no matching).
        theta: alignment and matching threshold. top_k: words listed per concept.

    Returns:
        dict: ``{"matched": share | None, "matched_chance": its chance level | None, "polar": share
        aligned to one output class, "polar_chance": its chance level,
        "aligned": {name: share}, "concepts": [{"id", "size", "words": [[word, count]],
        "polar_class", "class_share", "aligned": {name: label}, "matched": ref id | None}]}``.
    """
    polar = align_concepts(concept_ids, token_classes.tolist(), theta)
    shares = torch.bincount(token_classes, minlength=num_classes).double() / token_classes.numel()
    aligned = {name: align_concepts(concept_ids, labels, theta) for name, labels in label_sets.items()}
    match = match_concepts(reference_ids, concept_ids, theta) if reference_ids is not None else None
    top = concept_top_words(concept_ids, words, top_k)
    concepts = []
    for cid, size in enumerate(polar.sizes.tolist()):
        if size == 0:
            continue
        concepts.append(
            {
                "id": cid,
                "size": size,
                "words": [[w, n] for w, n in top[cid]],
                "polar_class": polar.labels[cid],
                "class_share": round(float(polar.purity[cid]), 4),
                "aligned": {
                    n: _jsonable(a.labels[cid]) for n, a in aligned.items() if a.labels[cid] is not None
                },
                "matched": None if match is None or match.matches[cid] < 0 else int(match.matches[cid]),
            }
        )
    return {
        "matched": None if match is None else match.share,
        "matched_chance": None if match is None else chance_match_share(reference_ids, concept_ids, theta),
        "polar": polar.share,
        "polar_chance": chance_polar_share(polar.sizes, shares.tolist(), theta),
        "aligned": {name: a.share for name, a in aligned.items()},
        "concepts": concepts,
    }


def _jsonable(label: Hashable) -> Hashable:
    return label if isinstance(label, str | int | float | bool) else str(label)


#: Share families of :func:`concept_metrics`, each logged per layer as ``{family}/layer_{i}``.
FAMILIES: tuple[str, ...] = ("matched", "matched_chance", "polar", "polar_chance")


def concept_metric_names(layers: Sequence[int], label_sets: Sequence[str], matched: bool = True) -> list[str]:
    """The names :func:`concept_metrics` returns, without computing (no prefix).

    ``{family}/layer_{i}`` for the :data:`FAMILIES` (``matched*`` only when ``matched``, i.e.
    against a reference) and ``aligned/{label_set}/layer_{i}``, for every layer in ``layers``.
    """
    families = [f for f in FAMILIES if matched or not f.startswith("matched")]
    names = []
    for layer in layers:
        names += [f"{f}/layer_{layer}" for f in families]
        names += [f"aligned/{s}/layer_{layer}" for s in label_sets]
    return names


def concept_metrics(descriptions: Mapping[int, Mapping]) -> dict[str, float]:
    """Flat shares of :func:`describe_layer` outputs ``{layer: description}`` (names without prefix).

    Returns exactly :func:`concept_metric_names` ``(layers, label sets, matched=<a reference was given>)``.
    """
    out: dict[str, float] = {}
    for layer, d in descriptions.items():
        for family in FAMILIES:
            if d[family] is not None:
                out[f"{family}/layer_{layer}"] = float(d[family])
        out.update({f"aligned/{name}/layer_{layer}": float(v) for name, v in d["aligned"].items()})
    return out
