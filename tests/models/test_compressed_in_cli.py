"""A compressed checkpoint is a first-class model (issue 24.1, 24.4): ``lightning-topo test`` and a
further ``fit`` run on it through our own registered classes, after its ``SHA256SUMS`` check; a
saved head of another size is handled; a checkpoint of another architecture is refused."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_topo.cli import main
from lightning_topo.models import SequenceClassifier

from ._toy import save_tiny_model, toy_rows, write_csv


def _per_layer_pruned(src: Path, out: Path) -> Path:
    """``src`` with layer 0 at 40 of 64 FFN units and one head removed, saved by save_compressed."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lightning_topo.pruning import KeepMasks, apply_keep_masks, save_compressed

    model = AutoModelForSequenceClassification.from_pretrained(src, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
    config = model.config
    ffn, heads, layers = config.intermediate_size, config.num_attention_heads, config.num_hidden_layers
    masks = KeepMasks(
        ffn=[torch.arange(ffn) < (ffn * 5) // 8] + [torch.ones(ffn, dtype=torch.bool)] * (layers - 1),
        heads=[torch.arange(heads) != 1] + [torch.ones(heads, dtype=torch.bool)] * (layers - 1),
    )
    pruned = apply_keep_masks(copy.deepcopy(model), masks)
    return save_compressed(pruned, out, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compressed")
    return _per_layer_pruned(save_tiny_model(root / "src"), root / "pruned")


def _args(tmp_path: Path, model: Path, data: Path, *extra: str) -> list[str]:
    return [
        "--model.model_name_or_path",
        str(model),
        "--data.data_file",
        str(data),
        "--data.text_column",
        "sentence",
        "--data.label_column",
        "target",
        "--data.test_fraction",
        "0.2",
        "--data.max_length",
        "16",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        str(tmp_path / "runs"),
        "--torch_threads",
        "1",
        *extra,
    ]


def test_pruned_folder_has_our_model_type(pruned_dir):
    config = json.loads((pruned_dir / "config.json").read_text())
    assert config["model_type"] == "pruned_bert" and "auto_map" in config  # the case that used to prompt
    assert (pruned_dir / "SHA256SUMS").is_file()


@pytest.mark.slow
def test_cli_test_and_fit_run_on_a_compressed_folder(pruned_dir, tmp_path, capsys):
    data = write_csv(tmp_path / "toy.csv", toy_rows(120))
    assert main(["test", *_args(tmp_path, pruned_dir, data)]) == 0
    out = capsys.readouterr().out
    assert "test/acc" in out
    status = main(
        [
            "fit",
            *_args(tmp_path, pruned_dir, data),
            "--trainer.max_epochs",
            "1",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.default_root_dir",
            str(tmp_path / "ckpt"),
        ]
    )
    assert status == 0
    assert "fit done: val/acc=" in capsys.readouterr().out
    ckpts = sorted((tmp_path / "runs").rglob("*.ckpt"))
    assert ckpts, "fit wrote no checkpoint"
    # the further-trained model keeps the pruned shapes and reloads (rebuilt from its config)
    reloaded = SequenceClassifier.load_from_checkpoint(ckpts[-1])
    assert type(reloaded.model).__name__ == "PrunedBertForSequenceClassification"
    assert reloaded.model.bert.encoder.layer[0].intermediate.dense.out_features == 40


def test_compressed_folder_in_a_fresh_process_without_prompt(pruned_dir, tmp_path):
    """In a new process (nothing imported before) SequenceClassifier reads the folder through our
    registered classes; its pruned_bert.py is never imported (checked: a marker line added to the
    copy in a folder whose manifest was rewritten would fail the checksum, so check sys.modules)."""
    code = (
        "import sys\n"
        "from lightning_topo.models import SequenceClassifier\n"
        f"m = SequenceClassifier(model_name_or_path={str(pruned_dir)!r})\n"
        "print(type(m.model).__module__, [k for k in sys.modules if 'transformers_modules' in k])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] == "lightning_topo.pruning.remote_code.pruned_bert", proc.stdout
    assert proc.stdout.strip().endswith("[]"), proc.stdout  # no dynamic module from the folder


def test_corrupted_compressed_folder_is_refused(pruned_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(pruned_dir, bad)
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model.safetensors does not match its SHA-256"):
        SequenceClassifier(model_name_or_path=str(bad))


def test_tokenizer_of_a_compressed_folder_loads_in_plain_transformers(pruned_dir):
    """What the README says: the tokenizer of a compressed folder loads with
    trust_remote_code=False, the model with load_compressed (no prompt either way)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pruned_dir, trust_remote_code=False)
    assert tokenizer("good film")["input_ids"][0] == tokenizer.cls_token_id


# ----------------------------------------------------------------------------- head of another size


@pytest.fixture(scope="module")
def two_label_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("two_labels") / "m", num_labels=2)


def test_head_of_another_size_warns_and_reinitialises(two_label_dir):
    with pytest.warns(UserWarning, match="classification head of 2 classes but num_labels=3"):
        model = SequenceClassifier(model_name_or_path=str(two_label_dir), num_labels=3)
    assert model.model.classifier.out_features == 3


def test_head_of_another_size_is_refused_when_asked(two_label_dir):
    with pytest.raises(ValueError, match="head of 2 classes but num_labels=3.*ignore_mismatched_sizes"):
        SequenceClassifier(model_name_or_path=str(two_label_dir), num_labels=3, ignore_mismatched_sizes=False)


def test_head_of_the_same_size_is_kept(two_label_dir):
    from transformers import AutoModelForSequenceClassification

    saved = AutoModelForSequenceClassification.from_pretrained(two_label_dir, trust_remote_code=False)
    model = SequenceClassifier(model_name_or_path=str(two_label_dir), num_labels=2)
    assert torch.equal(model.model.classifier.weight, saved.classifier.weight)


def test_ignore_mismatched_sizes_must_be_a_bool(two_label_dir):
    with pytest.raises(TypeError, match="ignore_mismatched_sizes must be True, False or None"):
        SequenceClassifier(model_name_or_path=str(two_label_dir), ignore_mismatched_sizes="yes")


def test_cli_three_classes_on_a_two_class_head(two_label_dir, tmp_path, capsys):
    """The 22-frame traceback of issue 24.4: now a warning and a fresh head."""
    rows = toy_rows(90)
    for i, row in enumerate(rows):
        row["target"] = str(i % 3)
    data = write_csv(tmp_path / "three.csv", rows)
    status = main(["test", *_args(tmp_path, two_label_dir, data)])
    assert status == 0
    assert "Traceback" not in capsys.readouterr().err
