"""The ``lightning-topo`` dispatcher: usage, Lightning subcommands, ``prune`` dispatch."""

from __future__ import annotations

import sys
import types

import pytest

from lightning_topo.cli import main


def test_help_and_unknown_command(capsys):
    assert main([]) == 0
    assert "fit|validate|test|predict" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert main(["frobnicate"]) == 2
    assert "unknown subcommand 'frobnicate'" in capsys.readouterr().err


def test_fit_help_lists_model_and_data_options(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lightning-topo"])
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model.model_name_or_path", "--model.learning_rate", "--data.data_file",
                   "--data.max_length", "--data.limit", "--trainer.max_epochs"):
        assert option in out
    # linked options are not settable
    assert "--model.num_labels" not in out and "--data.tokenizer_name_or_path" not in out


def test_prune_dispatches_to_pruning_cli(monkeypatch):
    seen = {}
    fake = types.ModuleType("lightning_topo.cli.prune")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "lightning_topo.cli.prune", fake)
    assert main(["prune", "--ratio", "0.5"]) == 0
    assert seen["argv"] == ["--ratio", "0.5"]
