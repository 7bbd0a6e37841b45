"""Per-class sampling of labelled point clouds (a leaf module: imports only torch and numpy).

Both :mod:`lightning_topo.scores.psf` (sampling inside a score) and
:mod:`lightning_topo.representations` (one subsample shared by every collected layer) use these
functions, so the rule is written once.

Order independence (**choice**): before sampling, the points are put in a canonical order
(lexicographic in their coordinates), so a sample depends only on the *set* of points and the
seed, not on the dataloader order or on how DDP ranks split the data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lightning_topo.scores.checks import check_choice, check_int, check_labels, check_real, check_seed

__all__ = [
    "SAMPLING_METHODS",
    "MIN_SPLIT_CLASS",
    "canonical_order",
    "check_max_points_per_class",
    "check_resamples",
    "check_std_splits",
    "draw_seeds",
    "draws_differ",
    "half_sample_pairs",
    "sample_per_class",
    "subsample_indices",
]

#: A class is split into two disjoint halves only when it has at least this many points (each
#: half then has >= 2, so it still has a persistence diagram); smaller classes are used whole.
MIN_SPLIT_CLASS = 4

#: Per-class sampling rules: ``"random"`` (subsample without replacement), ``"kde"``
#: (Gaussian KDE resample: random points plus ``N(0, bandwidth^2)`` noise, as
#: ``sklearn.neighbors.KernelDensity(bandwidth).sample``), ``"none"`` (keep every point).
SAMPLING_METHODS: tuple[str, ...] = ("random", "kde", "none")


def check_max_points_per_class(value: object, name: str = "max_points_per_class") -> int | None:
    """A per-class cap: an int ``>= 2`` (a persistence diagram needs 2 points) or ``None`` (no cap)."""
    return check_int(value, name, minimum=2, allow_none=True)


def check_resamples(value: object, name: str = "resamples") -> int:
    """Number of seeded re-draws of the per-class sample: an int ``>= 1``."""
    return check_int(value, name, minimum=1)  # type: ignore[return-value]


def check_std_splits(value: object, name: str = "std_splits") -> int:
    """Number of random splits into halves behind a standard error over examples: an int ``>= 0``
    (``0``: no such standard error)."""
    return check_int(value, name, minimum=0)  # type: ignore[return-value]


def draw_seeds(seed: int, resamples: int) -> list[int]:
    """Seeds of ``resamples`` re-draws: draw 0 uses ``seed`` itself, draw ``r > 0`` a seed derived
    from ``(seed, r)`` with :class:`numpy.random.SeedSequence` (so ``resamples=1`` is today's
    single draw, and the draws of seed 0 and seed 1 do not overlap)."""
    seed = check_seed(seed)
    extra = [int(np.random.SeedSequence([seed, r]).generate_state(1)[0]) for r in range(1, resamples)]
    return [seed, *extra]


def draws_differ(labels: Tensor, max_points_per_class: int | None, method: str) -> bool:
    """Whether re-drawing the per-class sample can change anything: some class exceeds the cap
    (classes at or below it are always used whole) and ``method`` is not ``"none"``."""
    if method == "none" or max_points_per_class is None or labels.numel() == 0:
        return False
    return int(torch.unique(labels, return_counts=True)[1].max()) > max_points_per_class


def canonical_order(points: Tensor) -> Tensor:
    """Row permutation ``(n,)`` sorting ``points`` ``(n, d)`` lexicographically (column 0 first).

    Used so that sampling does not depend on the order the points arrived in. NaN rows sort
    last (numpy's rule); the result is on ``points.device``.
    """
    x = points.detach().to("cpu", torch.float64).numpy()
    if x.shape[0] <= 1:
        return torch.arange(x.shape[0], device=points.device)
    order = np.lexsort(x.T[::-1])
    return torch.from_numpy(order.astype(np.int64)).to(points.device)


def subsample_indices(labels: Tensor, key: Tensor, max_points_per_class: int, seed: int) -> Tensor:
    """Row indices of a seeded per-class random subsample, into the original row order.

    Args:
        labels: ``(n,)`` integer labels.
        key: ``(n, d)`` points that define the canonical order (e.g. the deepest collected
            layer), so every layer sampled with these indices keeps the same examples.
        max_points_per_class: keep at most this many rows of each class.
        seed: seed of the sampling generator.

    Returns:
        ``(m,)`` int64 indices on the CPU, grouped by class in ascending label order.
    """
    cap = check_max_points_per_class(max_points_per_class)
    labels = check_labels(labels, key.shape[0])
    order = canonical_order(key).cpu()
    labels_sorted = labels[order.to(labels.device)].cpu()
    gen = torch.Generator(device="cpu").manual_seed(check_seed(seed))
    keep: list[Tensor] = []
    for c in torch.unique(labels_sorted).tolist():
        idx = torch.nonzero(labels_sorted == c, as_tuple=False).flatten()
        if cap is not None and idx.numel() > cap:
            pick = torch.sort(torch.randperm(idx.numel(), generator=gen)[:cap]).values
            idx = idx[pick]
        keep.append(idx)
    return order[torch.cat(keep)]


def _draw(points: Tensor, idx: Tensor, k: int, method: str, bandwidth: float, gen: torch.Generator) -> Tensor:
    """``k`` rows of class ``idx``: a subsample (``"random"``) or a Gaussian KDE resample (``"kde"``)."""
    if method == "random":
        pick = torch.sort(torch.randperm(idx.numel(), generator=gen)[:k]).values
        return points[idx[pick].to(points.device)]
    pick = torch.randint(0, idx.numel(), (k,), generator=gen)
    noise = torch.randn(k, points.shape[1], generator=gen, dtype=torch.float64)
    return points[idx[pick].to(points.device)] + (bandwidth * noise).to(points.device, points.dtype)


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
    replacement plus ``N(0, bandwidth^2 I)`` noise, what
    ``sklearn.neighbors.KernelDensity(kernel="gaussian", bandwidth=bandwidth).sample`` does;
    BERTops' rule). ``method="none"`` keeps every point. Points are put in
    :func:`canonical_order` first, so the result depends on the point set and ``seed`` only.

    Args:
        points: ``(n, d)`` float tensor.
        labels: ``(n,)`` integer labels.
        max_points_per_class: cap per class, an int >= 2 (``None``: no cap).
        method: ``"random"``, ``"kde"`` or ``"none"``.
        bandwidth: KDE noise standard deviation (finite, > 0; used by ``method="kde"``).
        seed: seed of the sampling generator (int >= 0).

    Returns:
        ``(points, labels)``: the inputs unchanged when no class exceeds the cap, else the
        sampled points grouped by class in ascending label order.

    Raises:
        TypeError / ValueError: a bad argument (the message names it).
    """
    check_choice(method, "sampling", SAMPLING_METHODS)
    cap = check_max_points_per_class(max_points_per_class)
    bandwidth = check_real(bandwidth, "bandwidth", minimum=0.0, strict=True)  # type: ignore[assignment]
    seed = check_seed(seed)
    labels = check_labels(labels, points.shape[0])
    if method == "none" or cap is None or int(torch.unique(labels, return_counts=True)[1].max()) <= cap:
        return points, labels
    order = canonical_order(points)
    points, labels = points[order], labels[order]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out_points: list[Tensor] = []
    out_labels: list[Tensor] = []
    labels_cpu = labels.cpu()
    for c in torch.unique(labels_cpu).tolist():
        idx = torch.nonzero(labels_cpu == c, as_tuple=False).flatten()
        if idx.numel() > cap:
            sel = _draw(points, idx, cap, method, bandwidth, gen)
        else:
            sel = points[idx.to(points.device)]
        out_points.append(sel)
        out_labels.append(torch.full((sel.shape[0],), int(c), dtype=torch.long, device=labels.device))
    return torch.cat(out_points), torch.cat(out_labels)


def half_sample_pairs(
    labels: Tensor, key: Tensor, max_size: int | None, seed: int, splits: int
) -> tuple[list[tuple[Tensor, Tensor]], dict[int, tuple[int, int]]]:
    """Seeded random pairs of disjoint per-class subsets of equal size (half-sampling).

    For every class ``c`` with ``n_c >= MIN_SPLIT_CLASS`` points, each of the ``splits`` pairs
    holds two disjoint random subsets ``A_c``, ``B_c`` of ``m_c = min(n_c // 2, max_size)``
    points (``max_size=None``: ``n_c // 2``, complementary halves up to one point); a smaller
    class appears whole in both subsets of every pair. The rows are put in
    :func:`canonical_order` of ``key`` first, so the pairs depend only on the point set and
    ``seed``, not on the row order (the same rule as :func:`subsample_indices`).

    Args:
        labels: ``(n,)`` integer labels.
        key: ``(n, d)`` points defining the canonical order.
        max_size: largest subset size per class (e.g. the preset's cap) or ``None``.
        seed: int >= 0, seeds the draw (a stream separate from the re-draws' seeds).
        splits: number of pairs, an int >= 1.

    Returns:
        ``(pairs, sizes)``: ``pairs`` is a list of ``(rows_A, rows_B)`` int64 CPU tensors of
        row indices into the original order, grouped by class in ascending label order;
        ``sizes[c] = (m_c, n_c)`` (``m_c = n_c`` for a class used whole).
    """
    labels = check_labels(labels, key.shape[0])
    seed, splits = check_seed(seed), check_int(splits, "splits", minimum=1)
    order = canonical_order(key).cpu()
    labels_sorted = labels[order.to(labels.device)].cpu()
    # a stream of its own: SeedSequence([seed, 2]) never equals a re-draw seed of draw_seeds
    gen = torch.Generator(device="cpu").manual_seed(
        int(np.random.SeedSequence([seed, 2, 1]).generate_state(1)[0])
    )
    classes = torch.unique(labels_sorted).tolist()
    members = {c: torch.nonzero(labels_sorted == c, as_tuple=False).flatten() for c in classes}
    sizes: dict[int, tuple[int, int]] = {}
    for c, idx in members.items():
        n_c = idx.numel()
        m_c = n_c if n_c < MIN_SPLIT_CLASS else (n_c // 2 if max_size is None else min(n_c // 2, max_size))
        sizes[int(c)] = (m_c, n_c)
    pairs: list[tuple[Tensor, Tensor]] = []
    for _ in range(splits):  # type: ignore[arg-type]
        a: list[Tensor] = []
        b: list[Tensor] = []
        for c, idx in members.items():
            m_c, n_c = sizes[int(c)]
            if m_c == n_c:
                a.append(idx)
                b.append(idx)
                continue
            perm = torch.randperm(n_c, generator=gen)
            a.append(idx[torch.sort(perm[:m_c]).values])
            b.append(idx[torch.sort(perm[m_c : 2 * m_c]).values])
        pairs.append((order[torch.cat(a)], order[torch.cat(b)]))
    return pairs, sizes
