"""scripts/make_rotten_tomatoes.py on a small fake vaderSentiment sdist (no download)."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_rotten_tomatoes.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("make_rotten_tomatoes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _fake_sdist(path: Path, lines: list[str]) -> Path:
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        _add(
            tar, "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt", "\r\n".join(lines).encode("latin-1")
        )
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz", inner.getvalue())
    return path


def test_build_is_deterministic_and_drops_zero_scores(tmp_path):
    lines = [f"{i}\t{(-1) ** i * (0.5 + i / 100):.3f}\tsentence {i} caf\xe9" for i in range(1, 101)]
    lines.append("101\t0\tneutral sentence")
    archive = _fake_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz", lines)
    script = _load_script()
    out1, out2 = tmp_path / "a.tsv.gz", tmp_path / "b.tsv.gz"
    assert script.main(["--archive", str(archive), "--output", str(out1)]) == 0
    assert script.main(["--archive", str(archive), "--output", str(out2)]) == 0
    assert out1.read_bytes() == out2.read_bytes()
    rows = list(
        csv.DictReader(io.StringIO(gzip.decompress(out1.read_bytes()).decode("utf-8")), delimiter="\t")
    )
    assert len(rows) == 100 and all(r["text"] != "neutral sentence" for r in rows)
    assert rows[0]["text"] == "sentence 1 caf\xe9"  # latin-1 fallback decoded
    assert {r["label"] for r in rows} == {"0", "1"}
    assert all((float(r["score"]) > 0) == (r["label"] == "1") for r in rows)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert counts == {"train": 80, "val": 10, "test": 10}


def test_shipped_file_matches_the_rule():
    from lightning_topo.data import rotten_tomatoes_path

    text = gzip.decompress(rotten_tomatoes_path().read_bytes()).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    assert len(rows) == 10568
    assert sum(r["label"] == "1" for r in rows) == 5242
    assert all((float(r["score"]) > 0) == (r["label"] == "1") for r in rows)
