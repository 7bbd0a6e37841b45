"""Compressed checkpoints: no import side effects, atomic replace, SHA-256 manifest, clear load errors."""

from __future__ import annotations

import copy
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

from lightning_topo.pruning import KeepMasks, apply_keep_masks, load_compressed, save_compressed
from lightning_topo.pruning import export as export_module
from lightning_topo.pruning.export import MANIFEST, check_output_path, verify_manifest


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _per_layer(model):
    masks = KeepMasks(
        ffn=[torch.arange(64) < 40, torch.arange(64) % 2 == 0],
        heads=[torch.tensor([True, False, True, True]), torch.tensor([True, True, True, True])],
    )
    return apply_keep_masks(copy.deepcopy(model), masks)


def _run(code: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


# ----------------------------------------------------------------------------- import side effects


def test_import_leaves_meta_path_and_transformers_alone():
    proc = _run(
        """
        import json, sys
        before = list(sys.meta_path)
        import lightning_topo, lightning_topo.pruning
        print(json.dumps({"same": list(sys.meta_path) == before,
                          "transformers": sorted(m for m in sys.modules if m.startswith("transformers"))}))
        """
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["same"], "import lightning_topo changed sys.meta_path"
    assert result["transformers"] == []


def test_load_compressed_in_a_fresh_process(tiny_classifier, tiny_batch, tmp_path):
    model = _per_layer(tiny_classifier)
    path = save_compressed(model, tmp_path / "ckpt")
    torch.save({k: tiny_batch[k] for k in ("input_ids", "attention_mask")}, tmp_path / "batch.pt")
    proc = _run(
        """
        import sys, torch
        from lightning_topo.pruning import load_compressed
        model = load_compressed(sys.argv[1]).eval()
        batch = torch.load(sys.argv[2], weights_only=True)
        with torch.no_grad():
            torch.save(model(**batch).logits, sys.argv[3])
        print(type(model).__name__)
        """,
        str(path),
        str(tmp_path / "batch.pt"),
        str(tmp_path / "logits.pt"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "PrunedBertForSequenceClassification"
    logits = torch.load(tmp_path / "logits.pt", weights_only=True)
    torch.testing.assert_close(logits, _logits(model, tiny_batch), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- RoBERTa and refusals


def _tiny_roberta():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=80,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return RobertaForSequenceClassification(config).eval()


def test_roberta_per_layer_and_uniform_round_trip(tiny_batch, tmp_path):
    roberta = _tiny_roberta()
    batch = dict(tiny_batch, input_ids=tiny_batch["input_ids"].clamp_min(3))
    pruned = _per_layer(roberta)
    path = save_compressed(pruned, tmp_path / "per_layer")
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "pruned_roberta" and config["intermediate_sizes"] == [40, 32]
    again = load_compressed(path).eval()
    assert type(again).__name__ == "PrunedRobertaForSequenceClassification"
    torch.testing.assert_close(_logits(again, batch), _logits(pruned, batch), atol=1e-5, rtol=0)
    uniform = apply_keep_masks(copy.deepcopy(roberta), KeepMasks(ffn=[torch.arange(64) < 24] * 2))
    path = save_compressed(uniform, tmp_path / "uniform")
    assert json.loads((path / "config.json").read_text())["model_type"] == "roberta"
    torch.testing.assert_close(
        _logits(load_compressed(path), batch), _logits(uniform, batch), atol=1e-5, rtol=0
    )


def test_check_supported_names_the_supported_classes(tiny_classifier):
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        ElectraConfig,
        ElectraForSequenceClassification,
        GPT2Config,
        GPT2ForSequenceClassification,
    )

    from lightning_topo.pruning.layout import check_supported

    assert check_supported(tiny_classifier) == "bert"
    assert check_supported(tiny_classifier.bert) == "bert"
    assert check_supported(_tiny_roberta()) == "roberta"
    small = dict(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    assert check_supported(ElectraForSequenceClassification(ElectraConfig(**small))) == "electra"
    gpt2 = GPT2ForSequenceClassification(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2))
    for model in (BertForMaskedLM(BertConfig(**small)), gpt2):
        with pytest.raises(
            TypeError, match=r"DistilBERT \(distilbert\).*DeBERTa-v2/v3 \(deberta-v2\)"
        ) as err:
            check_supported(model)
        assert type(model).__name__ in str(err.value)
        assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match="BERT-family"):
        check_supported(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------- atomic replace


def _folder_mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_overwrite_is_atomic_with_extra_files_and_normal_permissions(tiny_classifier, tiny_batch, tmp_path):
    path = save_compressed(tiny_classifier, tmp_path / "ckpt", extra_files={"notes.txt": "first"})
    umask = os.umask(0)
    os.umask(umask)
    assert _folder_mode(path) == 0o777 & ~umask
    pruned = _per_layer(tiny_classifier)
    history = {"steps": [{"ratio": 0.6}]}
    save_compressed(
        pruned, path, overwrite=True, extra_files={"pruning_history.json": history, "raw.bin": b"\0\1"}
    )
    assert json.loads((path / "pruning_history.json").read_text()) == history
    assert (path / "raw.bin").read_bytes() == b"\0\1" and not (path / "notes.txt").exists()
    listed = {line.split("  ", 1)[1] for line in (path / MANIFEST).read_text().splitlines()}
    assert {"config.json", "model.safetensors", "pruning_history.json", "raw.bin"} <= listed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    torch.testing.assert_close(
        _logits(load_compressed(path), tiny_batch), _logits(pruned, tiny_batch), atol=1e-5, rtol=0
    )


def test_failure_at_the_second_rename_keeps_the_old_checkpoint(
    tiny_classifier, tiny_batch, tmp_path, monkeypatch
):
    path = save_compressed(tiny_classifier, tmp_path / "ckpt")
    real_rename = os.rename
    calls = []

    def failing_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError("injected failure between the two renames")
        return real_rename(src, dst)

    monkeypatch.setattr(export_module, "_exchange", lambda a, b: False)
    monkeypatch.setattr(export_module.os, "rename", failing_rename)
    with pytest.raises(OSError, match="injected"):
        save_compressed(_per_layer(tiny_classifier), path, overwrite=True)
    monkeypatch.undo()
    assert len(calls) == 3  # path -> old, (failed) staged -> path, old -> path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    torch.testing.assert_close(
        _logits(load_compressed(path), tiny_batch), _logits(tiny_classifier, tiny_batch), atol=1e-5, rtol=0
    )


_KILLED_SAVE = """
import os, signal, sys
import torch
from transformers import BertConfig, BertForSequenceClassification
from lightning_topo.pruning import export

path, mode = sys.argv[1], sys.argv[2]
torch.manual_seed(1)
config = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=48, max_position_embeddings=64, num_labels=2)
model = BertForSequenceClassification(config).eval()
write_manifest = export._write_manifest

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def manifest_then_arm(folder):
    write_manifest(folder)
    if mode == "between-renames":  # the first rename (path -> old) happens, then the process dies
        export._exchange = lambda a, b: False
        real_rename = os.rename
        def rename_then_die(src, dst):
            real_rename(src, dst)
            die()
        export.os.rename = rename_then_die
    elif mode == "after-exchange":  # the exchange happens, the old folder is never deleted
        export.shutil.rmtree = die
    elif mode == "while-writing":
        die()

export._write_manifest = manifest_then_arm
export.save_compressed(model, path, overwrite=True)
"""


@pytest.mark.parametrize("mode", ["between-renames", "after-exchange", "while-writing"])
def test_a_killed_overwrite_leaves_a_loadable_checkpoint(mode, tiny_classifier, tiny_batch, tmp_path):
    path = save_compressed(tiny_classifier, tmp_path / "ckpt")
    proc = _run(_KILLED_SAVE, str(path), mode)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert len(list(tmp_path.iterdir())) >= 2  # leftovers of the killed run
    if mode == "between-renames":
        assert not path.exists()  # the one instant the two-rename fallback leaves open
    model = load_compressed(path).eval()  # repairs the path if needed
    width = model.bert.encoder.layer[0].intermediate.dense.out_features
    assert width == (64 if mode == "while-writing" else 48)  # old kept, or the complete new one
    verify_manifest(path)
    check_output_path(path, overwrite=True)  # the next call cleans up the killed run's leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_an_empty_folder_is_filled_without_overwrite(tiny_classifier, tmp_path):
    (tmp_path / "made_at_setup").mkdir()
    path = save_compressed(tiny_classifier, tmp_path / "made_at_setup")
    verify_manifest(path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        check_output_path(path)


def test_leftovers_of_live_writers_are_kept(tmp_path):
    busy = tmp_path / f".ckpt.tmp-{os.getppid()}-abcd1234"
    busy.mkdir()
    dead = tmp_path / ".ckpt.tmp-999999999-abcd1234"
    dead.mkdir()
    check_output_path(tmp_path / "ckpt")
    assert busy.exists() and not dead.exists()


def test_refusals_before_anything_is_written(tiny_classifier, tmp_path):
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a compressed checkpoint"):
        save_compressed(tiny_classifier, user_dir, overwrite=True)
    assert (user_dir / "thesis.tex").read_text() == "precious"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match="not a compressed checkpoint"):
        save_compressed(tiny_classifier, a_file, overwrite=True)
    with pytest.raises(NotADirectoryError, match="is a file"):
        save_compressed(tiny_classifier, a_file / "sub" / "ckpt")
    for bad in ({"../escape.txt": "x"}, {"/abs.txt": "x"}, {MANIFEST: "x"}, {"n.json": 3}):
        with pytest.raises(ValueError, match="extra_files"):
            save_compressed(tiny_classifier, tmp_path / "new", extra_files=bad)
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_parent_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="locked"):
            check_output_path(locked / "ckpt")
    finally:
        locked.chmod(0o700)


# ----------------------------------------------------------------------------- manifest and load errors


def test_flipped_byte_is_detected_and_named(tiny_classifier, tmp_path):
    path = save_compressed(tiny_classifier, tmp_path / "ckpt")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors.*SHA-256"):
        load_compressed(path)
    (path / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json"):
        load_compressed(path)


def test_missing_listed_file_is_named(tiny_classifier, tmp_path):
    path = save_compressed(tiny_classifier, tmp_path / "ckpt", extra_files={"a.txt": "a"})
    (path / "a.txt").unlink()
    with pytest.raises(FileNotFoundError, match="a.txt"):
        load_compressed(path)


@pytest.mark.parametrize("keep_bytes", [0, 5, 100, -10])
def test_truncated_weights_are_named(keep_bytes, tiny_classifier, tmp_path):
    path = save_compressed(tiny_classifier, tmp_path / "ckpt")
    (path / MANIFEST).unlink()
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:keep_bytes])
    with pytest.raises(ValueError, match="model.safetensors is empty or truncated"):
        load_compressed(path, verify=False)


def test_not_a_checkpoint_errors_name_the_path(tiny_classifier, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        load_compressed(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty.*no config.json"):
        load_compressed(empty)
    (tmp_path / "f.bin").write_bytes(b"1")
    with pytest.raises(NotADirectoryError, match="f.bin"):
        load_compressed(tmp_path / "f.bin")
    path = save_compressed(tiny_classifier, tmp_path / "ckpt")
    (path / MANIFEST).unlink()
    for verify in (None, True):  # a folder we wrote always has one: its absence is refused
        with pytest.raises(FileNotFoundError, match=f"has no {MANIFEST}.*verify=False"):
            load_compressed(path, verify=verify)
    load_compressed(path, verify=False)  # the explicit opt-out for a folder one trusts


# ----------------------------------------------------------------------------- verify_compressed: every reader's check


def _rewrite_manifest(path, drop=()):
    """SHA256SUMS of the folder as it is now, leaving out the names in ``drop``."""
    export_module._write_manifest(path)
    lines = [
        line
        for line in (path / MANIFEST).read_text().splitlines(keepends=True)
        if line.split("  ", 1)[1].strip() not in drop
    ]
    (path / MANIFEST).write_text("".join(lines))


def test_manifest_must_cover_every_weight_config_and_code_file(tiny_classifier, tmp_path):
    from lightning_topo.pruning import verify_compressed

    path = save_compressed(_per_layer(tiny_classifier), tmp_path / "ckpt")
    assert verify_compressed(path)["model_type"] == "pruned_bert"
    # a weight changed by 1.19e3 and a manifest re-written without model.safetensors
    from safetensors.torch import load_file, save_file

    state = load_file(path / "model.safetensors")
    key = next(k for k in state if k.endswith("classifier.weight"))
    state[key][0, 0] += 1.19e3
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    for dropped in ("model.safetensors", "config.json", "pruned_bert.py"):
        _rewrite_manifest(path, drop=(dropped,))
        with pytest.raises(ValueError, match=f"does not list {dropped}"):
            load_compressed(path)
    (path / MANIFEST).write_text("")
    with pytest.raises(ValueError, match="SHA256SUMS is empty"):
        load_compressed(path)
    (path / MANIFEST).write_text(f"{'0' * 64}  config.json\n{'0' * 64}  config.json\n")
    with pytest.raises(ValueError, match="a second time"):
        load_compressed(path)


def test_unlisted_tokenizer_file_is_refused_but_a_later_report_is_not(tiny_classifier, tmp_path):
    from lightning_topo.pruning import verify_compressed

    path = save_compressed(tiny_classifier, tmp_path / "ckpt")
    (path / "int8_report.json").write_text("{}")  # written after the checkpoint by prune --int8-report
    verify_compressed(path)
    (path / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(ValueError, match="does not list vocab.txt"):
        verify_compressed(path)


def test_corrupt_weights_with_a_matching_manifest_get_one_line(tiny_classifier, tmp_path):
    """A manifest re-hashed over broken weights passes the checksums; the structural check names the file."""
    path = save_compressed(tiny_classifier, tmp_path / "ckpt")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:12] = b"\xff\xfe{["  # header JSON no longer parses
    weights.write_bytes(bytes(data))
    _rewrite_manifest(path)
    with pytest.raises(ValueError, match=r"model.safetensors is empty or truncated") as err:
        load_compressed(path)
    assert "\n" not in str(err.value) and "SafetensorError" not in str(err.value)


@pytest.mark.parametrize(
    "change, phrase",
    [
        (lambda c: c.update(model_type="evil_model"), "model_type 'evil_model'"),
        (lambda c: c.update(auto_map={"AutoConfig": "evil.EvilConfig"}), "auto_map entry 'evil.EvilConfig'"),
        (lambda c: c["pruned_layout"].update(head_count=["attention.self.dropout.p"]), "pruned_layout"),
    ],
)
def test_config_that_is_not_ours_is_refused(change, phrase, tiny_classifier, tmp_path):
    from lightning_topo.pruning import verify_compressed

    path = save_compressed(_per_layer(tiny_classifier), tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    change(config)
    (path / "config.json").write_text(json.dumps(config))
    _rewrite_manifest(path)
    with pytest.raises(ValueError, match=phrase):
        verify_compressed(path)


def test_folder_code_never_runs_even_with_a_valid_manifest(tiny_classifier, tiny_batch, tmp_path):
    model = _per_layer(tiny_classifier)
    path = save_compressed(model, tmp_path / "ckpt")
    marker = tmp_path / "marker"
    code = (path / "pruned_bert.py").read_text()
    (path / "pruned_bert.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n" + code)
    _rewrite_manifest(path)
    loaded = load_compressed(path).eval()
    assert not marker.exists()
    assert type(loaded).__module__ == "lightning_topo.pruning.remote_code.pruned_bert"
    torch.testing.assert_close(_logits(loaded, tiny_batch), _logits(model, tiny_batch), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="trust_remote_code must be False"):
        load_compressed(path, trust_remote_code=True)
    assert not marker.exists()
