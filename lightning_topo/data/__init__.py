"""Data: the embedded dataset, the deterministic split rule, reading files, sampling batches.

- :func:`read_table` and the label helpers (:mod:`lightning_topo.data.files`) read UTF-8
  CSV/TSV/JSONL files and turn their labels into class ids, with errors naming file and row.
- :class:`LengthGroupedSampler` (:mod:`lightning_topo.data.sampling`) batches examples of similar
  length, sharded over DDP ranks.
- :func:`stratified_split` / :func:`stratified_subset` are the seeded split rules.

The embedded dataset ``rotten_tomatoes.tsv.gz`` holds 10,568 Rotten Tomatoes review sentences
(5,242 positive / 5,326 negative) with a fixed, seeded, stratified 80/10/10 ``split`` column. It
is built by ``scripts/make_rotten_tomatoes.py`` from the VADER resources (MIT licence; see
``README.md`` in this folder for attribution).

This module and :mod:`~lightning_topo.data.files` only use the standard library; the sampler
uses torch. A library layer: nothing here imports ``models``, ``callbacks`` or the CLI.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from importlib import resources
from pathlib import Path

from lightning_topo.data.files import normalise_labels, read_table
from lightning_topo.data.sampling import LengthGroupedSampler

__all__ = [
    "ROTTEN_TOMATOES_FILE",
    "ROTTEN_TOMATOES_LABEL_NAMES",
    "SPLIT_NAMES",
    "LengthGroupedSampler",
    "normalise_labels",
    "read_table",
    "rotten_tomatoes_path",
    "stratified_split",
    "stratified_subset",
]

#: File name of the embedded dataset inside this package.
ROTTEN_TOMATOES_FILE = "rotten_tomatoes.tsv.gz"
#: Names of the embedded dataset's integer labels 0 and 1.
ROTTEN_TOMATOES_LABEL_NAMES: tuple[str, str] = ("negative", "positive")
#: The three split names, in order.
SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")


def rotten_tomatoes_path() -> Path:
    """Path of the embedded ``rotten_tomatoes.tsv.gz``.

    Columns (tab-separated, with a header): ``id`` (the source's sentence id), ``score`` (mean
    human rating in [-4, 4]), ``label`` (1 if score > 0 else 0; zeros were dropped), ``split``
    (``train``/``val``/``test``), ``text``.

    Raises:
        FileNotFoundError: if the package was installed without its data files.
    """
    path = Path(str(resources.files("lightning_topo.data").joinpath(ROTTEN_TOMATOES_FILE)))
    if not path.is_file():
        raise FileNotFoundError(
            f"embedded dataset {path} is missing; reinstall lightning-topo (package-data data/*.gz) "
            "or rebuild it with scripts/make_rotten_tomatoes.py"
        )
    return path


def _class_indices(labels: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    by_class: dict[Hashable, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    # Sorted by the string form so that the order does not depend on first appearance.
    return {y: by_class[y] for y in sorted(by_class, key=lambda v: (str(type(v)), str(v)))}


def stratified_split(
    labels: Sequence[Hashable],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> list[list[int]]:
    """Split row indices into parts with the same class proportions, deterministically.

    For every class (in sorted order), its row indices are shuffled with ``random.Random(seed)``
    and cut into consecutive parts of ``round(fraction * n_class)`` rows (the last part takes the
    rest). Each returned part is shuffled once more with the same generator, so a part is not
    grouped by class.

    Args:
        labels: ``(n,)`` class of each row (any hashable values).
        fractions: share of each part; must be non-negative and sum to 1.
        seed: seed of the shuffles; the same ``labels`` and ``seed`` give the same parts.

    Returns:
        One list of row indices per fraction; together they cover ``range(n)`` exactly once.

    Raises:
        ValueError: if ``fractions`` is empty, negative or does not sum to 1.
    """
    fractions = [float(f) for f in fractions]
    if not fractions or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1; got {fractions}")
    rng = random.Random(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for idx in _class_indices(labels).values():
        idx = list(idx)
        rng.shuffle(idx)
        start = 0
        for k, f in enumerate(fractions):
            stop = len(idx) if k == len(fractions) - 1 else min(len(idx), start + round(f * len(idx)))
            parts[k].extend(idx[start:stop])
            start = stop
    for part in parts:
        rng.shuffle(part)
    return parts


def stratified_subset(labels: Sequence[Hashable], n: int, seed: int = 0) -> list[int]:
    """Choose ``n`` row indices with (close to) the class proportions of ``labels``.

    Each class gets ``floor(n * share)`` rows, and the rows left over go to the classes with the
    largest remainders (ties by class order). Rows are taken from a ``random.Random(seed)``
    shuffle of each class, and the result is shuffled. ``n >= len(labels)`` returns all rows
    in their original order.

    Args:
        labels: ``(m,)`` class of each row.
        n: number of rows to keep (``>= 0``).
        seed: seed of the shuffles.

    Returns:
        ``min(n, m)`` distinct row indices.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    m = len(labels)
    if n >= m:
        return list(range(m))
    rng = random.Random(seed)
    by_class = _class_indices(labels)
    exact = {y: n * len(idx) / m for y, idx in by_class.items()}
    counts = {y: int(e) for y, e in exact.items()}
    leftover = n - sum(counts.values())
    for y in sorted(by_class, key=lambda c: counts[c] - exact[c])[:leftover]:
        counts[y] += 1
    chosen: list[int] = []
    for y, idx in by_class.items():
        idx = list(idx)
        rng.shuffle(idx)
        chosen.extend(idx[: counts[y]])
    rng.shuffle(chosen)
    return chosen
