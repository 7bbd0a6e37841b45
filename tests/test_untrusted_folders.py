"""No code from a handed-over folder ever runs (issue 25.1), also on a terminal that answers ``y``.

The crafted folder is a tiny BERT whose ``config.json`` has an unknown ``model_type`` and an
``auto_map`` pointing at ``evil.py`` in the folder; importing ``evil.py`` writes a marker file.
transformers asks "Do you wish to run the custom code? [y/N]" on a terminal when
``trust_remote_code`` is left unset, so every entry point runs here under a pseudo-terminal that
answers ``y`` to every such prompt. Each must refuse with one line and leave no marker.

Two controls prove the test can fail: the same folder creates the marker with
``trust_remote_code=True``, and under the same pseudo-terminal with ``trust_remote_code`` unset
(the prompt is answered ``y``).
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import save_tiny_hf_folder

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("lightning-topo"))
PROMPT = b"[y/N]"

EVIL_PY = """
import os, pathlib
pathlib.Path(os.environ["LT_MARKER"]).write_text("the folder's code ran")
from transformers import BertConfig, BertForSequenceClassification, BertModel
class EvilConfig(BertConfig):
    model_type = "evilbert"
class EvilModel(BertModel):
    config_class = EvilConfig
class EvilForSequenceClassification(BertForSequenceClassification):
    config_class = EvilConfig
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return save_tiny_hf_folder(tmp_path_factory.mktemp("untrusted") / "src")


def craft(folder: Path, source: Path, *, model_type: str = "evilbert", tokenizer_map: bool = False) -> Path:
    """A copy of ``source`` whose config names ``evil.py`` in an ``auto_map``."""
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["architectures"] = ["EvilForSequenceClassification"]
    config["auto_map"] = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModel": "evil.EvilModel",
        "AutoModelForSequenceClassification": "evil.EvilForSequenceClassification",
    }
    (folder / "config.json").write_text(json.dumps(config))
    if tokenizer_map:
        tok = json.loads((folder / "tokenizer_config.json").read_text())
        tok["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
        (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    (folder / "evil.py").write_text(EVIL_PY)
    return folder


def _env(marker: Path) -> dict[str, str]:
    return dict(
        os.environ,
        LT_MARKER=str(marker),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="offline",
        PYTHONPATH=str(ROOT),
    )


def run_in_pty(argv: list[str], marker: Path, cwd: Path, timeout: float = 240.0) -> tuple[int, str, int]:
    """Run ``argv`` with stdin/stdout/stderr on a pseudo-terminal that types ``y`` + Enter after
    every ``[y/N]`` prompt; returns (exit status, output, number of prompts answered)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=_env(marker), close_fds=True
    )
    os.close(slave)
    out = bytearray()
    answered = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                while out.count(PROMPT) > answered:
                    os.write(master, b"y\n")
                    answered += 1
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise AssertionError(
                f"{argv} did not finish in {timeout} s:\n{out.decode(errors='replace')[-3000:]}"
            )
        status = proc.wait(timeout=30)
    finally:
        os.close(master)
    return status, out.decode(errors="replace").replace("\r\n", "\n"), answered


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _review_tsv(path: Path) -> Path:
    rows = ["text\tlabel"] + [f"{'good fine' if i % 2 else 'bad awful'} film {i}\t{i % 2}" for i in range(40)]
    path.write_text("\n".join(rows) + "\n")
    return path


# ----------------------------------------------------------------------------- controls


def test_control_trust_remote_code_true_runs_the_folder_code(source, tmp_path):
    """The crafted folder is live: plain transformers with trust_remote_code=True imports evil.py."""
    evil = craft(tmp_path / "evil", source)
    marker = tmp_path / "MARKER"
    code = f"""
        from transformers import AutoModelForSequenceClassification
        AutoModelForSequenceClassification.from_pretrained({str(evil)!r}, trust_remote_code=True)
    """
    proc = subprocess.run(_python(code), env=_env(marker), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.read_text() == "the folder's code ran"


def test_control_the_terminal_answers_yes(source, tmp_path):
    """The pseudo-terminal harness does answer the prompt: with trust_remote_code unset, plain
    transformers asks, gets ``y`` and runs evil.py."""
    evil = craft(tmp_path / "evil", source)
    marker = tmp_path / "MARKER"
    code = f"""
        from transformers import AutoModelForSequenceClassification
        AutoModelForSequenceClassification.from_pretrained({str(evil)!r})
    """
    status, out, answered = run_in_pty(_python(code), marker, tmp_path)
    assert answered >= 1, out[-3000:]
    assert marker.exists(), out[-3000:]
    assert status == 0, out[-3000:]


# ----------------------------------------------------------------------------- entry points

REFUSAL = "lightning-topo never runs code from a model folder"


def _one_error_line(out: str, prefix: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    return lines[0]


#: Every command line, with the folder it is handed: (name, argv after ``lightning-topo``, folder kind).
def _cli_cases(evil: Path, foreign: Path, data: Path, out: Path) -> dict[str, list[str]]:
    fit_args = ["--data.data_file", str(data), "--data.test_fraction", "0.2", "--trainer.max_epochs", "1",
                "--trainer.accelerator", "cpu", "--trainer.logger", "false"]  # fmt: skip
    return {
        "fit": ["fit", "--model.model_name_or_path", str(evil), *fit_args],
        "test": ["test", "--model.model_name_or_path", str(evil), *fit_args],
        "fit-foreign-auto-map": ["fit", "--model.model_name_or_path", str(foreign), *fit_args],
        "prune": ["prune", "--checkpoint", str(evil), "--output", str(out), "--data-file", str(data)],
        "analyze": ["analyze", "--model", str(evil), "--data", str(data), "--output", str(out)],
    }


#: Runs each command line of argv[1] (JSON) through ``lightning_topo.cli.main`` in this one process
#: (one interpreter start for all of them), printing ``CASE <name> STATUS <n>`` after each.
_CLI_DRIVER = """
import json, sys
from lightning_topo.cli import main
for name, args in json.loads(sys.argv[1]).items():
    print(f"CASE {name} START", flush=True)
    try:
        status = main(args)
    except SystemExit as exc:
        status = exc.code
    print(f"CASE {name} STATUS {status}", flush=True)
"""


def _case_output(out: str, name: str) -> tuple[str, int]:
    """The output between ``CASE name START`` and its status line, and that status."""
    start = out.index(f"CASE {name} START\n") + len(f"CASE {name} START\n")
    end = out.index(f"CASE {name} STATUS ", start)
    status = int(out[end:].split("\n", 1)[0].rsplit(" ", 1)[1])
    return out[start:end], status


def test_every_command_line_refuses_the_folder_on_a_terminal(source, tmp_path):
    """fit, test, prune and analyze on the crafted folder (and fit on a stock ``model_type`` with a
    foreign ``auto_map``), on a terminal that answers ``y``: each refuses with one line and exit
    status 2, no prompt, no marker, nothing written."""
    evil = craft(tmp_path / "evil", source)
    foreign = craft(tmp_path / "foreign", source, model_type="bert")
    marker = tmp_path / "MARKER"
    data = _review_tsv(tmp_path / "data.tsv")
    cases = _cli_cases(evil, foreign, data, tmp_path / "out")
    status, out, answered = run_in_pty(_python(_CLI_DRIVER) + [json.dumps(cases)], marker, tmp_path)
    assert status == 0, out[-3000:]
    assert not marker.exists() and answered == 0, out[-3000:]
    assert not (tmp_path / "out").exists()
    for name, args in cases.items():
        text, code = _case_output(out, name)
        assert code == 2, f"{name}: {text[-3000:]}"
        line = _one_error_line(text, f"lightning-topo {args[0]}: error:")
        if name == "fit-foreign-auto-map":
            assert "auto_map naming code in the folder ('evil.EvilConfig')" in line, line
        elif name in ("fit", "test"):
            assert "model_type 'evilbert'" in line and REFUSAL in line, line


PYTHON_ENTRIES = {
    "SequenceClassifier": "from lightning_topo.models import SequenceClassifier\nSequenceClassifier(model_name_or_path=PATH)",
    "datamodule-tokenizer": "from lightning_topo.models import TextClassificationDataModule\n"
    "TextClassificationDataModule(tokenizer_name_or_path=PATH).tokenizer",
    "load_model": "from transformers import AutoModel\nfrom lightning_topo.loading import load_model\nload_model(AutoModel, PATH)",
    "load_config": "from lightning_topo.loading import load_config\nload_config(PATH)",
    "load_tokenizer": "from lightning_topo.loading import load_tokenizer\nload_tokenizer(PATH)",
    "load_compressed": "from lightning_topo.pruning import load_compressed\nload_compressed(PATH, verify=False)",
}


#: Every entry with a config auto_map; the tokenizer loaders also with a tokenizer auto_map added.
ENTRY_CASES = [(e, False) for e in sorted(PYTHON_ENTRIES)] + [
    ("datamodule-tokenizer", True),
    ("load_tokenizer", True),
]


def test_python_entry_points_refuse_the_folder_on_a_terminal(source, tmp_path):
    """Each Python entry point, on its own crafted folder, in one process on a terminal that answers
    ``y``: every one refuses (ValueError, one line), no prompt, no marker."""
    marker = tmp_path / "MARKER"
    lines = ["import sys"]
    for k, (entry, tokenizer_map) in enumerate(ENTRY_CASES):
        evil = craft(tmp_path / f"evil{k}", source, tokenizer_map=tokenizer_map)
        name = f"{entry}{'-tokenizer-map' if tokenizer_map else ''}"
        lines += [
            f"print('CASE {name} START', flush=True)",
            f"PATH = {str(evil)!r}",
            "try:",
            textwrap.indent(PYTHON_ENTRIES[entry], "    "),
            "    status = 0",
            "except ValueError as err:",
            "    print('REFUSED:', ' '.join(str(err).split()))",
            "    status = 2",
            f"print('CASE {name} STATUS', status, flush=True)",
        ]
    status, out, answered = run_in_pty([sys.executable, "-c", "\n".join(lines)], marker, tmp_path)
    assert status == 0, out[-3000:]
    assert not marker.exists() and answered == 0, out[-3000:]
    for entry, tokenizer_map in ENTRY_CASES:
        name = f"{entry}{'-tokenizer-map' if tokenizer_map else ''}"
        text, code = _case_output(out, name)
        assert code == 2, f"{name}: {text[-3000:]}"
        line = _one_error_line(text, "REFUSED:")
        assert "never run" in line and "evil" in line, f"{name}: {line}"  # load_compressed words it its own way


def test_tokenizer_auto_map_alone_is_refused(source, tmp_path):
    """A stock config with a tokenizer ``auto_map`` is refused by the tokenizer loader."""
    folder = tmp_path / "tok"
    shutil.copytree(source, folder)
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    from lightning_topo.loading import check_model_folder

    with pytest.raises(ValueError, match=r"tokenizer_config.json' has an auto_map .*'evil.EvilTokenizer'"):
        check_model_folder(folder)


def test_trust_remote_code_cannot_be_passed(source):
    from transformers import AutoModel

    from lightning_topo.loading import load_model

    with pytest.raises(TypeError, match="trust_remote_code cannot be passed"):
        load_model(AutoModel, source, trust_remote_code=True)


def test_source_has_no_from_pretrained_without_trust_remote_code_false():
    """Every ``from_pretrained(`` call in the package passes ``trust_remote_code=False`` literally
    (checked on the syntax tree; docstrings and messages do not count)."""
    import ast

    offenders = []
    for path in sorted((ROOT / "lightning_topo").rglob("*.py")):
        if "remote_code" in path.parts:  # the file copied into checkpoints, for other processes
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "from_pretrained":
                ok = any(
                    kw.arg == "trust_remote_code"
                    and isinstance(kw.value, ast.Constant)
                    and kw.value.value is False
                    for kw in node.keywords
                )
                if not ok:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"from_pretrained without trust_remote_code=False: {offenders}"
