"""``lightning-topo prune --distill``: the recovery epochs run the distillation loss and the
settings are recorded in pruning_history.json; bad combinations are refused with one line and exit
status 2 before anything is loaded or written."""

from __future__ import annotations

import json

import pytest

from lightning_topo.cli import main as topo_main


@pytest.fixture
def data_file(tmp_path):
    from conftest import write_review_tsv

    return write_review_tsv(tmp_path / "data.tsv", 96)


def _argv(src, out, data_file, *extra):
    return [
        "prune", "--checkpoint", str(src), "--output", str(out), "--ratio", "0.6", "--method", "magnitude",
        "--data-file", str(data_file), "--max-length", "16", "--batch-size", "16", "--calibration-batches", "1",
        "--accelerator", "cpu", *extra,
    ]  # fmt: skip


def test_prune_distill_runs_the_distillation_loss(tiny_hf_folder, data_file, tmp_path, monkeypatch):
    from lightning_topo.callbacks.pruning import TopologicalPruning

    calls = []
    original = TopologicalPruning._distillation_loss

    def counting(self, logits, labels, batch):
        calls.append((self.temperature, self.alpha, self.teacher is not None))
        return original(self, logits, labels, batch)

    monkeypatch.setattr(TopologicalPruning, "_distillation_loss", counting)
    out = tmp_path / "pruned"
    argv = _argv(tiny_hf_folder, out, data_file, "--distill", "--temperature", "3", "--alpha", "0.25")
    assert topo_main([*argv, "--recover-epochs", "1"]) == 0
    assert calls and set(calls) == {(3.0, 0.25, True)}  # every recovery batch
    history = json.loads((out / "pruning_history.json").read_text())
    assert history["distill"] == {"temperature": 3.0, "alpha": 0.25}
    # without --distill: plain recovery, recorded as such
    calls.clear()
    plain = tmp_path / "plain"
    assert topo_main([*_argv(tiny_hf_folder, plain, data_file), "--recover-epochs", "1"]) == 0
    assert calls == []
    assert json.loads((plain / "pruning_history.json").read_text())["distill"] is None


def test_prune_distill_defaults(tiny_hf_folder, data_file, tmp_path):
    out = tmp_path / "pruned"
    assert topo_main([*_argv(tiny_hf_folder, out, data_file), "--distill", "--recover-epochs", "1"]) == 0
    assert json.loads((out / "pruning_history.json").read_text())["distill"] == {
        "temperature": 2.0,
        "alpha": 0.5,
    }


# The bad --distill/--temperature/--alpha options are cases of test_prune.py's
# test_bad_options_refused_before_loading (one line, exit 2, nothing loaded or written).
