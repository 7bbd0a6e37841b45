"""The acceptability proxy: deterministic, balanced, length-matched, local corruptions only."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest

from lightning_topo.data import read_table
from lightning_topo.data.acceptability import (
    ACCEPTABILITY_LABEL_NAMES,
    corrupt_sentence,
    embedded_acceptability_rows,
    movable_positions,
    write_acceptability_file,
)
from lightning_topo.data.acceptability import acceptability_split as split_rows


@pytest.fixture(scope="module")
def embedded():
    return embedded_acceptability_rows(seed=0)


def _cores(text):
    return sorted(text.lower().split())


def test_same_seed_same_rows_other_seed_other_rows(embedded):
    assert embedded_acceptability_rows(seed=0) == embedded
    other = embedded_acceptability_rows(seed=1)
    assert other != embedded
    assert len(other) == len(embedded)  # the same sentences qualify, only the choices change


def test_rows_do_not_depend_on_the_process_hash_seed():
    code = (
        "from lightning_topo.data.acceptability import embedded_acceptability_rows as r;"
        "import hashlib,json;print(hashlib.sha256(json.dumps(r(seed=3)[:500]).encode()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        ).stdout  # fmt: skip
        for seed in ("1", "2")
    }
    assert len(digests) == 1


def test_balanced_in_every_split(embedded):
    counts = Counter((r["split"], r["label"]) for r in embedded)
    for split in ("train", "val", "test"):
        assert counts[(split, 0)] == counts[(split, 1)] > 400
    assert len(embedded) > 0.95 * 10568  # few sentences are dropped (fewer than 3 movable words)


def test_classes_have_the_same_length_distribution(embedded):
    for split in ("train", "val", "test"):
        by_label = {
            y: sorted(len(r["text"].split()) for r in embedded if r["split"] == split and r["label"] == y)
            for y in (0, 1)
        }
        # paired by length: the k-th shortest of each class have the same length but where one length
        # group ends (a gap of 1) and in the long tail
        gaps = [abs(a - b) for a, b in zip(by_label[0], by_label[1], strict=True)]
        n = len(gaps)
        assert sum(g > 0 for g in gaps) / n < 0.06 and sum(gaps) / n < 0.1
        deciles = [(by_label[0][n * q // 10], by_label[1][n * q // 10]) for q in range(10)]
        assert all(abs(a - b) <= 1 for a, b in deciles)
        assert abs(sum(by_label[0]) - sum(by_label[1])) / n < 0.05  # mean lengths within 0.05 words


def test_a_corruption_is_a_local_permutation_of_the_same_words():
    rng = random.Random(0)
    text = "If you sometimes like to go to the movies to have fun, Wasabi is a good place to start."
    for corruption, strength in (("swap", 1), ("swap", 2), ("shuffle", 3)):
        for _ in range(50):
            bad = corrupt_sentence(text, rng, corruption, strength)
            assert bad is not None and bad.lower().split() != text.lower().split()
            before, after = text.split(), bad.split()
            assert len(after) == len(before)
            # punctuation stays at its position; only word cores move
            assert after[-1].endswith(".") and "," in after[11]
            assert sorted(t.strip(",.") for t in after) == sorted(t.strip(",.") for t in before)
            changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
            if corruption == "swap":
                assert len(changed) <= 2 * strength
            else:
                assert len(changed) <= strength and max(changed) - min(changed) < strength


def test_proxy_rows_pair_an_original_with_a_corrupted_sentence():
    texts = [
        "the film is good",
        "a very very long movie",
        "it was a bad idea",
        "one two three four five",
        "short",
        "x y",
        "so so so",
    ]
    rows = split_rows(texts, seed=0, corruption="swap", strength=1, min_words=3)
    sources = Counter(r["source"] for r in rows)
    assert all(v == 1 for v in sources.values())  # each sentence is used once, as original or corrupted
    assert 4 not in sources and 5 not in sources  # fewer than 3 movable words
    for r in rows:
        original = " ".join(texts[r["source"]].split())
        if r["label"] == 1:
            assert r["text"] == original
        else:
            assert r["text"] != original and _cores(r["text"]) == _cores(original)
    assert corrupt_sentence("so so so", random.Random(0), "swap", 1) is None  # nothing to change


def test_movable_positions_skip_tokens_without_letters():
    assert movable_positions(["The", "--", "2002", "film", "'s", ","]) == [0, 3, 4]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"corruption": "drop"}, ValueError, "corruption must be one of"),
        ({"corruption": 1}, TypeError, "corruption must be a string"),
        ({"corruption": "shuffle", "strength": 1}, ValueError, "strength must be >= 2"),
        ({"corruption": "swap", "strength": 0}, ValueError, "strength must be >= 1"),
        ({"strength": 2.0}, TypeError, "strength must be an int"),
        ({"min_words": 1}, ValueError, "min_words must be >= 2"),
        ({"seed": None}, TypeError, "seed must be an int"),
    ],
)
def test_bad_settings_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        split_rows(["a b c d"], **kwargs)


def test_write_is_atomic_refuses_to_overwrite_and_round_trips(tmp_path, embedded):
    rows = [r for r in embedded if r["split"] == "val"][:50]
    path = write_acceptability_file(tmp_path / "acc.tsv", rows)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_acceptability_file(path, rows)
    write_acceptability_file(path, rows[:10], overwrite=True)
    back, columns = read_table(path)
    assert columns == ["text", "label", "split", "source"]
    assert [(r["text"], int(r["label"])) for r in back] == [(r["text"], r["label"]) for r in rows[:10]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.tsv"]  # no temporary left behind
    with pytest.raises(ValueError, match="must end in .tsv"):
        write_acceptability_file(tmp_path / "acc.csv", rows)


def test_the_datamodule_reads_the_proxy(tmp_path, embedded):
    from lightning_topo.models import TextClassificationDataModule

    path = write_acceptability_file(tmp_path / "acc.tsv", embedded)
    dm = TextClassificationDataModule(
        data_file=str(path), split_column="split", label_names=list(ACCEPTABILITY_LABEL_NAMES),
        limit={"train": 200}, max_length=32,
    )  # fmt: skip
    assert dm.id2label == {0: "unacceptable", 1: "acceptable"}
    assert Counter(dm.split_labels("train")) == {0: 100, 1: 100}
