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
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line, no usage dump, no traceback
    assert "unknown subcommand 'frobnicate'; choose one of fit, validate, test, predict, prune" in err


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (
            ["--data.data_file", "{tmp}/nope.csv"],
            "FileNotFoundError: data_file '{tmp}/nope.csv' does not exist",
        ),
        (["--data.data_file", "{tmp}"], "IsADirectoryError: data_file '{tmp}' is a directory"),
        (
            ["--data.data_file", "{tmp}/latin.csv"],
            "ValueError: data_file '{tmp}/latin.csv' is not UTF-8 text",
        ),
        (["--torch_threads", "0"], "torch_threads must be >= 1"),
    ],
    ids=["missing", "directory", "not-utf8", "threads"],
)
def test_refused_values_are_one_line_with_status_2(tmp_path, capsys, monkeypatch, args, phrase):
    """Bad input found while the CLI builds model and data: one line on stderr, exit 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["lightning-topo"])
    (tmp_path / "latin.csv").write_bytes(b"text,label\ncaf\xe9,1\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    runs = tmp_path / "runs"
    code = main(["fit", *args, "--trainer.default_root_dir", str(runs), "--trainer.max_epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    # Lightning's own INFO lines (e.g. "Seed set to 42") may precede it when its log handler is
    # attached; the refusal itself is exactly one line and there is no traceback
    errors = [line for line in err if line.startswith("lightning-topo fit: error: ")]
    assert len(errors) == 1, err
    assert not any(line.startswith(("Traceback", "  File ")) for line in err), err
    assert phrase.replace("{tmp}", str(tmp_path)) in errors[0]
    assert not runs.exists() and not (tmp_path / "lightning_logs").exists()


def test_fit_help_lists_model_and_data_options(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lightning-topo"])
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--model.model_name_or_path",
        "--model.learning_rate",
        "--data.data_file",
        "--data.max_length",
        "--data.limit",
        "--trainer.max_epochs",
    ):
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
