"""``lightning-topo analyze`` on tiny BERT folders (plain and compressed): the files and columns,
two models side by side, and every bad input refused with one line, exit 2 and nothing written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from lightning_topo.cli import main as topo_main


@pytest.fixture
def tiny_hf_folder(tmp_path):
    from conftest import save_tiny_hf_folder

    return save_tiny_hf_folder(tmp_path / "dense")


@pytest.fixture
def compressed_folder(tiny_hf_folder, tmp_path):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from lightning_topo.pruning import prune_model, save_compressed

    model = BertForSequenceClassification.from_pretrained(tiny_hf_folder)
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 2000, (8, 12), generator=g),
        "attention_mask": torch.ones(8, 12, dtype=torch.long),
        "labels": torch.arange(8) % 2,
    }
    prune_model(model, [batch], method="magnitude", ratio=0.6)
    out = tmp_path / "pruned"
    save_compressed(model.eval(), out, tokenizer=AutoTokenizer.from_pretrained(tiny_hf_folder))
    return out


@pytest.fixture
def data_file(tmp_path):
    from conftest import write_review_tsv

    return write_review_tsv(tmp_path / "data.tsv", 80)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


COMMON = ["--split", "val", "--max-points-per-class", "16", "--batch-size", "8", "--no-progress"]


def test_one_model_files_and_columns(tiny_hf_folder, data_file, tmp_path):
    out = tmp_path / "analysis"
    argv = ["analyze", "--model", str(tiny_hf_folder), "--data", str(data_file), "--scores", "psf,geometry"]
    assert topo_main([*argv, "--output", str(out), *COMMON]) == 0
    rows = _rows(out / "layers.csv")
    assert [r["layer"] for r in rows] == ["0", "1", "2"]
    header = list(rows[0])
    assert header[0] == "layer" and {
        "topo/psf",
        "topo/h1/entropy",
        "geometry/cone",
        "geometry/directionality",
    } <= set(header)
    assert rows[0]["geometry/cone"] == "" and float(rows[2]["geometry/cone"]) > 0
    summary = json.loads((out / "summary.json").read_text())
    (entry,) = summary["models"].values()
    assert entry["metrics"]["topo/psf"] == pytest.approx(float(rows[2]["topo/psf"]))
    assert entry["settings"]["max_points_per_class"] == 16
    assert {p.name for p in out.glob("*.png")} >= {"topo_psf_per_layer.png", "diagrams_layer_2.png"}
    # same command again: refused (nothing changed), then allowed with --overwrite
    before = (out / "layers.csv").read_bytes()
    assert topo_main([*argv, "--output", str(out), *COMMON]) == 2
    assert (out / "layers.csv").read_bytes() == before
    assert topo_main([*argv, "--output", str(out), *COMMON, "--overwrite"]) == 0


def test_two_models_side_by_side_with_a_compressed_checkpoint(
    tiny_hf_folder, compressed_folder, data_file, tmp_path
):
    out = tmp_path / "compare"
    argv = [
        "analyze",
        "--model",
        str(tiny_hf_folder),
        "--model",
        str(compressed_folder),
        "--data",
        str(data_file),
    ]
    assert topo_main([*argv, "--output", str(out), "--layers", "1,2", *COMMON]) == 0
    rows = _rows(out / "layers.csv")
    assert [r["layer"] for r in rows] == ["1", "2"]
    assert {"topo/psf@dense", "topo/psf@pruned", "topo/h0/total_persistence@pruned"} <= set(rows[0])
    assert not any(c == "topo/psf" for c in rows[0])
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["models"]) == ["dense", "pruned"]
    assert summary["models"]["pruned"]["metrics"]["topo/psf"] == pytest.approx(
        float(rows[1]["topo/psf@pruned"])
    )
    assert {"diagrams_dense_layer_2.png", "diagrams_pruned_layer_2.png"} <= {
        p.name for p in out.glob("*.png")
    }


def test_text_pair_column_scores_both_segments(tiny_hf_folder, tmp_path):
    """With ``--text-pair-column`` each row is tokenised as a pair: the [CLS] vectors (and so PSF)
    change; without it only the first column is read."""
    rows = ["text\tsecond\tlabel"] + [
        f"{['good', 'bad'][i % 2]} movie number {i}\t{['awful', 'great', 'dull'][i % 3]} plot twist {i}\t{i % 2}"
        for i in range(80)
    ]
    data = tmp_path / "pairs.tsv"
    data.write_text("\n".join(rows) + "\n")
    psf = {}
    for name, extra in (("single", []), ("pair", ["--text-pair-column", "second"])):
        out = tmp_path / name
        argv = ["analyze", "--model", str(tiny_hf_folder), "--data", str(data), "--scores", "psf"]
        assert topo_main([*argv, "--output", str(out), *COMMON, *extra]) == 0
        layers = _rows(out / "layers.csv")
        assert [r["layer"] for r in layers] == ["0", "1", "2"]
        # layer 0's [CLS] vectors are one point (same token, position and segment): no score
        assert layers[0]["topo/psf"] == ""
        psf[name] = [float(r["topo/psf"]) for r in layers[1:]]
    assert psf["pair"] != pytest.approx(psf["single"], rel=1e-6)  # the second segment is read


def _classifier_ckpt(path, base, *, prune=False, hparams=None):
    """A ``.ckpt`` as ``lightning-topo fit`` writes it: SequenceClassifier's hyper-parameters plus
    LightningCLI's ``_instantiator``, the state dict and ``on_save_checkpoint``'s HF config. With
    ``prune`` the encoder is pruned and swapped for its exportable model first, as
    ``TopologicalPruning`` does (other shapes than the base model's)."""
    from lightning_topo.models import SequenceClassifier
    from lightning_topo.pruning import prune_model
    from lightning_topo.pruning.export import to_exportable

    module = SequenceClassifier(model_name_or_path=str(base), num_labels=2)
    if prune:
        g = torch.Generator().manual_seed(0)
        batch = {
            "input_ids": torch.randint(1000, 2000, (8, 12), generator=g),
            "attention_mask": torch.ones(8, 12, dtype=torch.long),
            "labels": torch.arange(8) % 2,
        }
        prune_model(module.model, [batch], method="magnitude", ratio=0.6)
        module.model = to_exportable(module.model)  # as TopologicalPruning swaps it during fit
    ckpt = {
        "state_dict": module.state_dict(),
        "hyper_parameters": {
            **dict(module.hparams),
            "_instantiator": "lightning.pytorch.cli.instantiate_module",
            **(hparams or {}),
        },
    }
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return module


def test_lightning_ckpt_of_a_pruned_classifier_scores_its_own_weights(tiny_hf_folder, data_file, tmp_path):
    """A fit checkpoint taken after pruning (the quickstart's last epoch) is rebuilt with the
    pruned shapes and its own weights: every lens runs, and PSF equals that of the same weights
    saved as a compressed folder."""
    from transformers import AutoTokenizer

    from lightning_topo.pruning import save_compressed

    module = _classifier_ckpt(tmp_path / "pruned.ckpt", tiny_hf_folder, prune=True)
    folder = tmp_path / "pruned_folder"
    save_compressed(module.model.eval(), folder, tokenizer=AutoTokenizer.from_pretrained(tiny_hf_folder))
    psf = {}
    for model, out in ((tmp_path / "pruned.ckpt", tmp_path / "a"), (folder, tmp_path / "b")):
        scores = "psf,geometry,concepts,probe" if out.name == "a" else "psf"
        argv = ["analyze", "--model", str(model), "--data", str(data_file), "--scores", scores]
        assert topo_main([*argv, "--output", str(out), *COMMON]) == 0
        rows = _rows(out / "layers.csv")
        psf[out.name] = [float(r["topo/psf"]) for r in rows[1:]]
    assert {"geometry/cone", "concepts/polar", "probe/ssp"} <= set(_rows(tmp_path / "a" / "layers.csv")[0])
    assert psf["a"] == pytest.approx(psf["b"], rel=1e-5)
    # the base model's own weights give other scores (the checkpoint's weights were used)
    assert topo_main(["analyze", "--model", str(tiny_hf_folder), "--data", str(data_file), "--scores", "psf",
                      "--output", str(tmp_path / "c"), *COMMON]) == 0  # fmt: skip
    base = [float(r["topo/psf"]) for r in _rows(tmp_path / "c" / "layers.csv")[1:]]
    assert base != pytest.approx(psf["a"], rel=1e-5)


def test_lightning_ckpt_of_the_embedded_model_and_bad_ckpts(tiny_hf_folder, tmp_path, capsys):
    """``model_name_or_path: None`` (the quickstart's embedded MiniLM) names the embedded model's
    folder; a checkpoint without the hyper-parameters or with a missing base folder is one line."""
    from lightning_topo.cli.analyze import _check_model, _model_folder
    from lightning_topo.models.embedded import embedded_model_path

    embedded = tmp_path / "embedded.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model_name_or_path": None}}, embedded)
    assert _check_model(embedded) == embedded
    assert _model_folder(embedded) == Path(embedded_model_path())
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 0.1}}, foreign)
    gone = tmp_path / "gone.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model_name_or_path": str(tmp_path / "nope")}}, gone)
    for model, needle in ((foreign, "without lightning-topo SequenceClassifier hyper-parameters"),
                          (gone, "its base model")):  # fmt: skip
        assert topo_main(["analyze", "--model", str(model), "--output", str(tmp_path / "out")]) == 2
        assert needle in _error(capsys)
    assert not (tmp_path / "out").exists()


def _error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lightning-topo analyze: error: ")
    return err[0]


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--scores", "psf,bogus"], "accepted: psf, geometry"),
        (["--layers", "5"], "out of range"),
        (["--layers", "one"], "comma-separated integers"),
        (["--split", "dev"], "one of train, val, test"),
        (["--max-points-per-class", "1"], "--max-points-per-class must be >= 2"),
        (["--data", "missing.tsv"], "accepted: 'embedded' or a CSV/TSV/JSONL file"),
        (["--text-column", "sentence"], "no column 'sentence'"),
        (["--text-pair-column", "second"], "no column 'second'"),
        (["--diagram-layer", "7"], "--diagram-layer 7"),
        (["--max-length", "200"], "--max-length 200 is longer than"),  # the folder has 128 positions
    ],
)
def test_bad_options_refused_before_loading(
    tiny_hf_folder, data_file, tmp_path, capsys, monkeypatch, extra, needle
):
    import lightning_topo.pruning.export as export

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(export, "load_compressed", never)
    out = tmp_path / "out"
    argv = ["analyze", "--model", str(tiny_hf_folder), "--data", str(data_file), "--output", str(out), *extra]
    assert topo_main(argv) == 2
    assert needle in _error(capsys)
    assert not out.exists()


def test_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hi")
    (tmp_path / "file.bin").write_bytes(b"x")
    for model, needle in (
        (tmp_path / "notes", "is not a checkpoint (no config.json and no *.safetensors)"),
        (tmp_path / "file.bin", "is a file"),
        (tmp_path / "nowhere", "does not exist"),
    ):
        assert topo_main(["analyze", "--model", str(model), "--output", str(tmp_path / "out")]) == 2
        line = _error(capsys)
        assert needle in line and "accepted: a Hugging Face model folder" in line
    assert not (tmp_path / "out").exists()


def test_existing_output_refused(tiny_hf_folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert topo_main(["analyze", "--model", str(tiny_hf_folder), "--output", str(out)]) == 2
    assert "pass --overwrite" in _error(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_usage_lists_analyze(capsys):
    assert topo_main(["--help"]) == 0
    assert "analyze" in capsys.readouterr().out


def test_folder_without_tokenizer_and_too_many_models(tiny_hf_folder, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_hf_folder / name, bare / name)
    assert topo_main(["analyze", "--model", str(bare), "--output", str(tmp_path / "out")]) == 2
    assert "has no tokenizer files" in _error(capsys) and not (tmp_path / "out").exists()
    three = ["--model", str(tiny_hf_folder)] * 3
    assert topo_main(["analyze", *three, "--output", str(tmp_path / "out")]) == 2
    assert "once or twice" in _error(capsys)
