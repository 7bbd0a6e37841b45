"""A deterministic grammatical-acceptability proxy built from the embedded sentences.

There is no CoLA offline. Li, Yin and Lin (2023) test their tree-probe fine-tuning term on
grammatical acceptability, a task about sentence structure; this module builds a stand-in from
any list of sentences (by default the embedded Rotten Tomatoes ones) by a fixed rule:

- **label 1** ("acceptable"): the sentence as it is;
- **label 0** ("unacceptable"): another sentence of (nearly) the same length with a seeded
  *local* corruption of its word order -- ``"swap"``: ``strength`` non-overlapping swaps of two
  neighbouring words; ``"shuffle"``: one span of ``strength`` neighbouring words put in a new
  order.

The rule, for each split separately:

1. Words are the whitespace tokens. Only a token's *core* (from its first to its last letter or
   digit) moves; punctuation stays where it was (``"fun, Wasabi"`` -> ``"Wasabi, fun"``), so a
   comma or a sentence-final period is never a cue. Tokens without a letter (``"--"``, ``"2"``)
   never move. Letter case is left as it is (the embedded MiniLM is uncased, so case carries no
   cue for it). A swap or span whose words are equal when lower-cased is never chosen, so every
   corrupted sentence differs from its original.
2. Sentences with fewer than ``min_words`` movable words are dropped (they cannot be corrupted
   in a useful way).
3. The remaining sentences are sorted by their number of whitespace tokens (ties broken by a
   seeded key) and taken in consecutive pairs; in each pair a seeded coin chooses the one that
   is corrupted (an odd last sentence is dropped). The two classes therefore hold exactly the
   same number of sentences, and their length distributions match pair by pair (the two
   sentences of a pair differ in length by at most the gap between neighbours in the sorted
   order, almost always 0). A corruption only permutes words, so a corrupted sentence has the
   same tokens (and the same word pieces) as its original.
4. The split is shuffled (seeded).

Every random choice comes from ``random.Random`` seeded with a string built from ``seed`` and
the split name (Python hashes string seeds with SHA-512, so the result does not depend on
``PYTHONHASHSEED``, the platform or the process): the same sentences, seed and settings always give
the same rows. Standard library only, like the rest of :mod:`lightning_topo.data`.

Use it with the DataModule through a file (rows ``text``, ``label``, ``split``, ``source``)::

    from lightning_topo.data.acceptability import embedded_acceptability_rows, write_acceptability_file
    path = write_acceptability_file("acceptability.tsv", embedded_acceptability_rows(seed=0))
    dm = TextClassificationDataModule(data_file=str(path), split_column="split",
                                      label_names=list(ACCEPTABILITY_LABEL_NAMES))
"""

from __future__ import annotations

import csv
import os
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_topo.data import SPLIT_NAMES, rotten_tomatoes_path
from lightning_topo.data.files import read_table, write_text_atomic

__all__ = [
    "ACCEPTABILITY_LABEL_NAMES",
    "CORRUPTIONS",
    "DEFAULT_CORRUPTION",
    "DEFAULT_STRENGTH",
    "acceptability_rows",
    "acceptability_split",
    "corrupt_sentence",
    "embedded_acceptability_rows",
    "movable_positions",
    "write_acceptability_file",
]

#: The corruption rules: neighbouring-word swaps, or one shuffled span.
CORRUPTIONS: tuple[str, ...] = ("swap", "shuffle")
#: Names of labels 0 and 1.
ACCEPTABILITY_LABEL_NAMES: tuple[str, str] = ("unacceptable", "acceptable")
#: The rule of the round-2 experiment (``benchmarks/tree_probe_loss.py``): one span of 3 words
#: shuffled. A subtle, local change: with 1,000 training sentences and 2 epochs the plain
#: fine-tuned MiniLM stays at chance on it (docs/tree_probe.md gives the measured accuracies; a
#: larger ``strength`` or budget is needed for a task plain fine-tuning learns).
DEFAULT_CORRUPTION = "shuffle"
DEFAULT_STRENGTH = 3

_CORE = re.compile(r"[^\W_](?:.*[^\W_])?", re.DOTALL)  # first to last letter/digit


def _check_settings(corruption: Any, strength: Any, min_words: Any) -> None:
    if not isinstance(corruption, str):
        raise TypeError(f"corruption must be a string, one of {CORRUPTIONS}; got {type(corruption).__name__}")
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {CORRUPTIONS}; got {corruption!r}")
    for name, value, low in (
        ("strength", strength, 1 if corruption == "swap" else 2),
        ("min_words", min_words, 2),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
        if value < low:
            what = "swaps" if corruption == "swap" else "words in the shuffled span"
            raise ValueError(
                f"{name} must be >= {low}" + (f" ({what})" if name == "strength" else "") + f"; got {value}"
            )


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int; got {type(seed).__name__} {seed!r}")
    return seed


def movable_positions(tokens: Sequence[str]) -> list[int]:
    """Indices of the whitespace tokens whose core has a letter (the words a corruption may move)."""
    out = []
    for i, token in enumerate(tokens):
        core = _CORE.search(token)
        if core is not None and any(ch.isalpha() for ch in core.group()):
            out.append(i)
    return out


def _split_core(token: str) -> tuple[str, str, str]:
    core = _CORE.search(token)
    assert core is not None
    return token[: core.start()], core.group(), token[core.end() :]


def corrupt_sentence(
    text: str,
    rng: random.Random,
    corruption: str = DEFAULT_CORRUPTION,
    strength: int = DEFAULT_STRENGTH,
) -> str | None:
    """A locally corrupted copy of ``text``, or ``None`` when it cannot be corrupted.

    Args:
        text: the sentence (words separated by whitespace; the result is joined by single spaces).
        rng: the source of every random choice.
        corruption: ``"swap"`` (``strength`` non-overlapping swaps of neighbouring movable words)
            or ``"shuffle"`` (one span of ``strength`` neighbouring movable words in a new order;
            a sentence with fewer movable words has all of them shuffled).
        strength: see ``corruption``. Default 3 (with ``"shuffle"``).

    Returns:
        The corrupted sentence (it always differs from ``" ".join(text.split())`` in the order of
        its lower-cased words), or ``None`` if no change is possible (fewer than 2 movable words,
        or all of them equal).
    """
    _check_settings(corruption, strength, 2)
    tokens = text.split()
    movable = movable_positions(tokens)
    if len(movable) < 2:
        return None
    parts = [_split_core(tokens[i]) for i in movable]
    cores = [core for _, core, _ in parts]
    low = [c.lower() for c in cores]
    if corruption == "swap":
        new = _swaps(cores, low, rng, strength)
    else:
        new = _shuffle_span(cores, low, rng, strength)
    if new is None:
        return None
    out = list(tokens)
    for (prefix, _, suffix), pos, core in zip(parts, movable, new, strict=True):
        out[pos] = prefix + core + suffix
    return " ".join(out)


def _swaps(cores: list[str], low: list[str], rng: random.Random, k: int) -> list[str] | None:
    candidates = [j for j in range(len(cores) - 1) if low[j] != low[j + 1]]
    if not candidates:
        return None
    rng.shuffle(candidates)
    chosen: list[int] = []
    for j in candidates:  # non-overlapping pairs (j, j + 1), first come first served
        if all(abs(j - c) > 1 for c in chosen):
            chosen.append(j)
            if len(chosen) == k:
                break
    new = list(cores)
    for j in chosen:
        new[j], new[j + 1] = new[j + 1], new[j]
    return new


def _shuffle_span(cores: list[str], low: list[str], rng: random.Random, span: int) -> list[str] | None:
    span = min(span, len(cores))
    starts = [s for s in range(len(cores) - span + 1) if len(set(low[s : s + span])) > 1]
    if not starts:
        return None
    start = rng.choice(starts)
    window = list(range(start, start + span))
    while True:  # a permutation that changes the (lower-cased) order; exists since 2+ distinct words
        order = list(window)
        rng.shuffle(order)
        if [low[i] for i in order] != [low[i] for i in window]:
            break
    new = list(cores)
    for dst, src in zip(window, order, strict=True):
        new[dst] = cores[src]
    return new


def acceptability_split(
    texts: Sequence[str],
    seed: int = 0,
    corruption: str = DEFAULT_CORRUPTION,
    strength: int = DEFAULT_STRENGTH,
    min_words: int = 3,
    name: str = "train",
) -> list[dict[str, Any]]:
    """Rows of one split of the proxy (the module docstring gives the rule).

    Args:
        texts: the split's sentences.
        seed: int seed; with ``name`` it seeds every choice (default 0).
        corruption, strength: see :func:`corrupt_sentence`.
        min_words: sentences with fewer movable words are dropped. Default 3.
        name: the split's name (part of the seed, and the rows' ``split`` value).

    Returns:
        Rows ``{"text", "label", "split", "source"}`` (``source`` = index into ``texts``),
        shuffled; exactly as many with label 0 as with label 1.

    Raises:
        TypeError / ValueError: a bad ``seed``, ``corruption``, ``strength`` or ``min_words``, or
            a text that is not a string (naming its index).
    """
    _check_settings(corruption, strength, min_words)
    seed = _check_seed(seed)
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a sequence of strings; got {type(texts).__name__}")
    rng = random.Random(f"lightning-topo acceptability|{seed}|{name}|{corruption}|{strength}")
    eligible = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a string; got {type(text).__name__} {text!r}")
        if len(movable_positions(text.split())) >= min_words:
            eligible.append(i)
    keys = {i: rng.random() for i in eligible}
    ordered = sorted(eligible, key=lambda i: (len(texts[i].split()), keys[i]))
    rows: list[dict[str, Any]] = []
    for a, b in zip(ordered[0::2], ordered[1::2], strict=False):
        first, second = (a, b) if rng.random() < 0.5 else (b, a)  # `first` is corrupted
        bad = corrupt_sentence(texts[first], rng, corruption, strength)
        if bad is None:  # all its movable words equal: try the other one
            first, second = second, first
            bad = corrupt_sentence(texts[first], rng, corruption, strength)
        if bad is None:  # neither can be corrupted: the pair is dropped (lengths stay matched)
            continue
        rows.append({"text": bad, "label": 0, "split": name, "source": first})
        rows.append({"text": " ".join(texts[second].split()), "label": 1, "split": name, "source": second})
    rng.shuffle(rows)
    return rows


def acceptability_rows(
    texts_by_split: Mapping[str, Sequence[str]],
    seed: int = 0,
    corruption: str = DEFAULT_CORRUPTION,
    strength: int = DEFAULT_STRENGTH,
    min_words: int = 3,
) -> list[dict[str, Any]]:
    """:func:`acceptability_split` for every split of ``texts_by_split`` (e.g. train/val/test), in order."""
    if not isinstance(texts_by_split, Mapping) or not texts_by_split:
        raise TypeError("texts_by_split must be a non-empty mapping split name -> list of sentences")
    rows: list[dict[str, Any]] = []
    for name, texts in texts_by_split.items():
        rows += acceptability_split(texts, seed, corruption, strength, min_words, name=str(name))
    return rows


def embedded_acceptability_rows(
    seed: int = 0,
    corruption: str = DEFAULT_CORRUPTION,
    strength: int = DEFAULT_STRENGTH,
    min_words: int = 3,
) -> list[dict[str, Any]]:
    """The proxy built from the embedded Rotten Tomatoes sentences, keeping their train/val/test split.

    The sentiment labels are not used. ``source`` indexes the sentences of each split in file order.
    """
    rows, _ = read_table(rotten_tomatoes_path(), "embedded dataset")
    by_split: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for row in rows:
        by_split[row["split"]].append(row["text"])
    return acceptability_rows(by_split, seed, corruption, strength, min_words)


def write_acceptability_file(
    path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], overwrite: bool = False
) -> Path:
    """Write ``rows`` as a TSV (``text``, ``label``, ``split``, ``source``) for the DataModule.

    Written atomically (a temporary sibling, then a rename).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is not ``True``.
        ValueError: a path that does not end in ``.tsv``, or no rows.
    """
    path = Path(path)
    if path.suffix != ".tsv":
        raise ValueError(f"path must end in .tsv; got {str(path)!r}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be a bool; got {type(overwrite).__name__}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not rows:
        raise ValueError("rows is empty; nothing to write")
    columns = ["text", "label", "split", "source"]

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, delimiter="\t", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    write_text_atomic(path, write, overwrite=True)
    return path
