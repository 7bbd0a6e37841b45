"""The documentation builds and its Python examples run.

Rules for code blocks in README.md and docs/*.md:

* Every fenced ```python block is executed, each in a fresh namespace, with the working directory
  a temporary folder. Other languages (```bash, ```yaml, ...) are not run.
* A block preceded (blank lines allowed) by ``<!-- skip-test: reason -->`` is skipped with that
  reason: use it only for blocks that need long training, a network, or are templates with
  ``...`` placeholders.
* Names a fragment uses without defining are given tiny substitutes (``_namespace``): a random
  6-layer BERT (hidden 32) as ``hf_model`` / ``model``, its tokenizer, a 24-sentence
  ``val_loader``, seeded ``points`` / ``labels``, ``Trainer`` (Lightning's). The folder holds the
  files the docs name: ``reviews.csv``, ``train.tsv``/``dev.tsv``/``test.tsv``, ``all.jsonl``,
  a local model folder ``models/my-bert`` (also ``path/or/hub-id``), a compressed checkpoint
  ``outputs/pruned`` and a small CSVLogger run ``runs/quickstart/version_0``.
* Blocks in files another owner is still editing that fail for a known reason are listed in
  ``KNOWN_BROKEN`` and run as strict xfail, so a fix shows up as an unexpected pass; ``SKIP`` does
  the same as a skip-test comment for files whose owner keeps such comments out.

The API reference (Sphinx, ``docs/api``) is built with ``-W`` (warnings are errors).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
_SKIP = re.compile(r"<!--\s*skip-test:\s*(.+?)\s*-->\s*$")

# (file, first line of the block) -> reason. For files whose owner keeps the skip-test comments
# out (README.md is the coordinator's): skipped blocks, and blocks that fail today (strict xfail).
SKIP: dict[tuple[str, str], str] = {}
KNOWN_BROKEN: dict[tuple[str, str], str] = {}


def _blocks() -> list:
    params = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip().splitlines()
            skip = _SKIP.search(before[-1]) if before else None
            name = f"{path.relative_to(ROOT)}:{line}"
            key = (str(path.relative_to(ROOT)), match.group(1).split("\n", 1)[0])
            marks = []
            if skip or key in SKIP:
                marks.append(pytest.mark.skip(reason=skip.group(1) if skip else SKIP[key]))
            elif key in KNOWN_BROKEN:
                marks.append(pytest.mark.xfail(reason=KNOWN_BROKEN[key], strict=True))
            params.append(pytest.param(match.group(1), id=name, marks=marks))
    return params


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    w for w in "good bad great awful film movie plot actor fine dull fun boring the a is was very not".split()
]
SENTENCES = [
    ("a very good film", 1),
    ("the plot was dull", 0),
    ("great fun", 1),
    ("a boring movie", 0),
    ("the actor is fine", 1),
    ("not good , very bad", 0),
]


def _tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})


def _hf_model(num_layers: int = 6):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval()


def _write_files(root: Path, model, tokenizer) -> None:
    rows = [(text, label) for text, label in SENTENCES * 5]
    with open(root / "reviews.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "stars"])
        writer.writerows(rows)
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        (root / name).write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    splits = ["train"] * 20 + ["val"] * 5 + ["test"] * 5
    (root / "all.jsonl").write_text(
        "".join(
            json.dumps({"text": t, "label": y, "split": s}) + "\n"
            for (t, y), s in zip(rows, splits, strict=True)
        )
    )
    for folder in ("models/my-bert", "path/or/hub-id"):  # an encoder without a head, as on the Hub
        model.bert.save_pretrained(root / folder)
        tokenizer.save_pretrained(root / folder)


def _write_run(root: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(root / "runs", name="quickstart", version=0)
    for epoch, (acc, psf) in enumerate([(0.6, 0.03), (0.7, 0.028), (0.72, 0.027)]):
        logger.log_metrics({"val/acc": acc, "topo/psf": psf, "epoch": epoch}, step=10 * (epoch + 1))
    logger.save()


def _loader(tokenizer, n: int = 24):
    texts = [t for t, _ in SENTENCES] * (n // len(SENTENCES))
    labels = torch.tensor([y for _, y in SENTENCES] * (n // len(SENTENCES)))
    enc = tokenizer(texts, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    batches = []
    for start in range(0, n, 8):
        sl = slice(start, start + 8)
        batches.append(
            {
                "input_ids": enc["input_ids"][sl],
                "attention_mask": enc["attention_mask"][sl],
                "labels": labels[sl],
            }
        )
    return batches


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with the files the docs name, and the substitutes for undefined names."""
    from lightning.pytorch import Trainer

    from lightning_topo.pruning import prune_model, save_compressed

    root = tmp_path_factory.mktemp("docs")
    tokenizer = _tokenizer()
    _write_files(root, _hf_model(), tokenizer)
    _write_run(root)
    loader = _loader(tokenizer)
    pruned = prune_model(_hf_model(), loader, method="magnitude", ratio=0.6)
    save_compressed(pruned, root / "outputs" / "pruned", tokenizer=tokenizer)
    g = torch.Generator().manual_seed(0)
    names = {
        "torch": torch,
        "Trainer": Trainer,
        "tokenizer": tokenizer,
        "val_loader": loader,
        "calibration_batches": loader,
        "batches": loader,
        "points": torch.randn(24, 8, generator=g, requires_grad=True),
        "labels": torch.tensor([y for _, y in SENTENCES] * 4),
        "texts": [t for t, _ in SENTENCES] * 4,
        # docs/geometry.md: hidden states, attention and projection weights of a 4-head, d=32 layer
        "x": torch.randn(2, 5, 32, generator=g),
        "context": torch.randn(2, 5, 32, generator=g),
        "mask": torch.ones(2, 5, dtype=torch.bool),
        "num_heads": 4,
        "attn": torch.softmax(torch.randn(2, 4, 5, 5, generator=g), dim=-1),
        "scores": torch.randn(2, 4, 5, 5, generator=g),
        "w_q": torch.randn(32, 32, generator=g),
        "w_k": torch.randn(32, 32, generator=g),
        "w": torch.randn(32, 32, generator=g),
    }
    return root, names


@pytest.mark.parametrize("code", _blocks())
def test_python_block_runs(code, workspace, monkeypatch, tmp_path):
    root, names = workspace
    for entry in root.iterdir():  # the shared inputs; what a block writes stays in its own folder
        if entry.name == "outputs" and "save_compressed(" in code:
            continue  # the block writes the compressed model it then loads
        if entry.name == "runs":  # examples write into a run folder (report.html): a copy of its own
            shutil.copytree(entry, tmp_path / entry.name)
        else:
            (tmp_path / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    monkeypatch.chdir(tmp_path)
    shared = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    namespace = dict(names, hf_model=_hf_model(), model=_hf_model(), __name__="__doc_example__")
    exec(compile(code + "\n__block_finished__ = True\n", "<doc block>", "exec"), namespace)
    assert namespace.get("__block_finished__") is True
    # an example writes only into its own folder, never into the inputs the other examples share
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == shared


def test_block_parser_finds_blocks_and_skip_markers():
    ids = [p.id for p in _blocks()]
    assert any(i.startswith("README.md:") for i in ids)
    assert any(i.startswith("docs/tutorial.md:") for i in ids)
    assert _SKIP.search("<!-- skip-test: trains for minutes -->").group(1) == "trains for minutes"
    assert _SKIP.search("<!-- a comment -->") is None


def test_api_reference_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs/api", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "scores.html").is_file()
    assert "persistence_summary" in (tmp_path / "scores.html").read_text(encoding="utf-8")
