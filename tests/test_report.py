"""``lightning-topo report``: the HTML page of a run folder, its refusals, and a real-browser check."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger

from lightning_topo.cli import main
from lightning_topo.plots import write_history_figures
from lightning_topo.report import SECTIONS, build_report, read_run, write_report

REPO = Path(__file__).resolve().parents[1]
DATA_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _write_synthetic_run(root: Path, pruned: bool = True) -> tuple[Path, dict]:
    """A CSVLogger run (3 epochs) with topo/, geometry/ and prune/ series, correlations, the PSF
    monitor's figures and a pruning history; returns the log folder and what was logged."""
    logger = CSVLogger(root, name="run", version=0)
    acc = [0.61, 0.74, 0.70]
    psf = [0.031, 0.027, 0.029]
    for epoch in range(3):
        step = 10 * (epoch + 1)
        logger.log_metrics({"train/loss_step": 0.7 - 0.1 * epoch, "epoch": epoch}, step=step - 5)
        metrics = {
            "val/acc": acc[epoch],
            "topo/psf": psf[epoch],
            "topo/psf/layer_1": psf[epoch] * 1.5,
            "topo/psf/layer_2": psf[epoch],
            "topo/h0/entropy": 4.0 + epoch,
            "geometry/cone": 0.2 + 0.01 * epoch,
            "epoch": epoch,
        }
        if epoch > 0:
            metrics["topo/psf/pearson_val_acc"] = -0.25 - 0.5 * epoch
            metrics["topo/psf/spearman_val_acc"] = -1.0
        logger.log_metrics(metrics, step=step)
    logger.log_metrics({"prune/params": 6000.0, "prune/ratio": 0.6, "epoch": 2}, step=30)
    logger.save()
    run = Path(logger.log_dir)
    history = [
        {"epoch": e, "step": 10 * (e + 1), "scores": {"topo/psf": psf[e]}, "monitor": acc[e]}
        for e in range(3)
    ]
    write_history_figures(history, run / "topo", score="topo/psf", monitor="val/acc")
    if pruned:
        (run / "pruned").mkdir()
        record = {"step": 1, "epoch": 2, "params": 6000, "ratio": 0.6, "total_params": 9000}
        record["widths"] = {"heads": [3, 2], "ffn": [40, 24]}
        (run / "pruned" / "pruning_history.json").write_text(
            json.dumps({"method": "topological", "original_params": 10000, "history": [record]})
        )
        (run / "pruned" / "model.safetensors").write_bytes(b"\0" * 2048)
    return run, {"acc": acc, "psf": psf}


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b64) for b64 in DATA_URI.findall(page)]


def test_report_has_every_section_and_embeds_every_figure(tmp_path):
    run, logged = _write_synthetic_run(tmp_path)
    page = write_report(run).read_text(encoding="utf-8")
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page
    images = _images(page)
    monitor_pngs = sorted((run / "topo").glob("*.png"))
    assert len(monitor_pngs) == 2
    # one figure per logged family (topo, geometry, prune) + the monitor's PNGs + kept units
    assert len(images) == 3 + len(monitor_pngs) + 1
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in images)
    for path in monitor_pngs:  # embedded byte for byte
        assert path.read_bytes() in images
        assert path.relative_to(run).as_posix() in page
    # self-contained: no script, no external resource
    assert "<script" not in page
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    # correlations: the last logged value of each, not an earlier one
    assert f"{-0.25 - 0.5 * 2:.4g}" in page and f"{-0.25 - 0.5 * 1:.4g}" not in page
    assert f"{max(logged['acc']):.4f}" in page and f"{logged['acc'][-1]:.4f}" in page
    # pruning table: per-layer widths and the compressed weights' size
    assert re.search(r"<td>1</td><td>3</td><td>40</td>", page)
    assert re.search(r"<td>2</td><td>2</td><td>24</td>", page)
    assert "10,000" in page and "6,000" in page


def test_read_run_keeps_epochs_steps_and_values(tmp_path):
    run, logged = _write_synthetic_run(tmp_path, pruned=False)
    log = read_run(run.parent.parent)  # the single metrics.csv below is found
    assert log.source == "CSVLogger"
    assert [(e, v) for e, _, v in log.series["val/acc"]] == list(enumerate(logged["acc"]))
    assert [s for _, s, _ in log.series["topo/psf"]] == [10, 20, 30]
    assert "topo/psf/pearson_val_acc" in log.series and "train/loss_step" in log.series


def test_report_without_pruning_or_figures_says_so(tmp_path):
    run, _ = _write_synthetic_run(tmp_path, pruned=False)
    shutil.rmtree(run / "topo")
    page = build_report(run)
    assert "this run was not pruned" in page
    assert "No PNG figure under the run folder" in page
    assert len(_images(page)) == 3  # topo, geometry, prune families


def test_cli_writes_default_output_and_never_overwrites(tmp_path, capsys):
    run, _ = _write_synthetic_run(tmp_path)
    assert main(["report", str(run)]) == 0
    out = run / "report.html"
    first = out.read_bytes()
    assert b'<section id="pruning">' in first
    out.write_text("keep me")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    assert out.read_text() == "keep me"
    assert main(["report", str(run), "--overwrite"]) == 0
    assert out.read_bytes().startswith(b"<!DOCTYPE html>")
    other = tmp_path / "elsewhere" / "page.html"
    assert main(["report", str(run), "--output", str(other)]) == 0 and other.is_file()


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    wandb = tmp_path / "wandb_only" / "offline-run-1"
    wandb.mkdir(parents=True)
    (wandb / "run-1.wandb").write_bytes(b"x")
    two = tmp_path / "two"
    for v in ("version_0", "version_1"):
        (two / v).mkdir(parents=True)
        (two / v / "metrics.csv").write_text("epoch,step,val/acc\n0,1,0.5\n")
    notcsv = tmp_path / "notcsv"
    notcsv.mkdir()
    (notcsv / "metrics.csv").write_text("a,b\n1,2\n")
    good, _ = _write_synthetic_run(tmp_path / "good", pruned=False)
    return {
        "missing": ([str(tmp_path / "nope")], "does not exist"),
        "file": ([str(notcsv / "metrics.csv")], "is a file"),
        "empty": ([str(empty)], "no metrics.csv"),
        "wandb": ([str(tmp_path / "wandb_only")], "not a W&B run file"),
        "two": ([str(two)], "holds the logs of 2 runs"),
        "notcsv": ([str(notcsv)], "not a CSVLogger metrics.csv"),
        "suffix": ([str(good), "--output", str(tmp_path / "page.txt")], "must end in .html"),
    }


@pytest.mark.parametrize("case", ["missing", "file", "empty", "wandb", "two", "notcsv", "suffix"])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    argv, phrase = _bad_inputs(tmp_path)[case]
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(["report", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lightning-topo report: error:")
    assert phrase in err
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_tensorboard_folder_needs_the_package_or_is_read(tmp_path, capsys):
    folder = tmp_path / "tb"
    folder.mkdir()
    (folder / "events.out.tfevents.1.host").write_bytes(b"")
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    installed = importlib.util.find_spec("tensorboard") is not None
    assert ("no logged scalars" if installed else "pip install tensorboard") in err
    assert not (folder / "report.html").exists()


def test_tensorboard_scalars_become_series_with_epochs(tmp_path, monkeypatch):
    """The TensorBoard reader maps each scalar to (epoch, step, value), the epoch read from
    Lightning's ``epoch`` scalar at the same step (EventAccumulator replaced by a stand-in)."""
    import sys
    import types
    from collections import namedtuple

    Event = namedtuple("Event", "wall_time step value")
    scalars = {
        "epoch": [Event(0, 10, 0.0), Event(0, 20, 1.0)],
        "val/acc": [Event(0, 10, 0.5), Event(0, 20, 0.75)],
        "topo/psf": [Event(0, 10, 0.03), Event(0, 20, 0.02)],
        "topo/psf/pearson_val_acc": [Event(0, 20, -1.0)],
        "train/loss_step": [Event(0, 15, 0.6)],
    }
    seen = {}

    class FakeAccumulator:
        def __init__(self, path, size_guidance=None):
            seen["path"] = path

        def Reload(self):  # noqa: N802 (TensorBoard's name)
            return self

        def Tags(self):  # noqa: N802
            return {"scalars": list(scalars)}

        def Scalars(self, tag):  # noqa: N802
            return scalars[tag]

    names = ["tensorboard", "tensorboard.backend", "tensorboard.backend.event_processing"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    leaf = types.ModuleType("tensorboard.backend.event_processing.event_accumulator")
    leaf.EventAccumulator = FakeAccumulator
    monkeypatch.setitem(sys.modules, leaf.__name__, leaf)
    folder = tmp_path / "tb" / "version_0"
    folder.mkdir(parents=True)
    (folder / "events.out.tfevents.1.host").write_bytes(b"")
    log = read_run(tmp_path / "tb")
    assert seen["path"] == str(folder) and log.source == "TensorBoard"
    assert log.series["val/acc"] == [(0, 10, 0.5), (1, 20, 0.75)]
    assert log.series["train/loss_step"] == [(None, 15, 0.6)]
    assert "epoch" not in log.series
    page = build_report(folder)
    assert len(_images(page)) == 1 and "TensorBoard" in page and "-1" in page


# --------------------------------------------------------------------------- real browser


def _browser_check():
    spec = importlib.util.spec_from_file_location(
        "check_report_in_browser", REPO / "scripts" / "check_report_in_browser.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _browser_or_skip(checker) -> str:
    browser = checker.find_browser()
    if browser is None:
        subprocess.run(["bash", str(REPO / "scripts" / "install_browser.sh")], check=False, timeout=900)
        browser = checker.find_browser()
    if browser is None:
        pytest.skip(
            "no Chromium and scripts/install_browser.sh could not install it (apt-get install chromium)"
        )
    return browser


def _tiny_fit_run(tmp_path: Path, tiny_config) -> Path:
    """A 2-epoch fit of a tiny random BERT with PersistenceScoreMonitor and CSVLogger."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader
    from transformers import BertForSequenceClassification

    from lightning_topo.callbacks import PersistenceScoreMonitor
    from lightning_topo.encoding import encode_batch

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = BertForSequenceClassification(tiny_config)

        def encode(self, batch):
            return encode_batch(self.model, batch)

        def training_step(self, batch, batch_idx):
            return self.model(**batch).loss

        def validation_step(self, batch, batch_idx):
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            self.log("val/acc", (logits.argmax(-1) == batch["labels"]).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (32, 8), generator=g)
    labels = torch.arange(32) % 2
    ids[:, 1] = labels + 1
    data = [
        {"input_ids": ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": labels[i]}
        for i in range(32)
    ]
    logger = CSVLogger(tmp_path, name="run", version=0)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=logger, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
        callbacks=[PersistenceScoreMonitor(max_points_per_class=16)], num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(Tiny(), DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    return Path(logger.log_dir)


@pytest.mark.slow
def test_report_of_a_tiny_fit_loads_in_headless_chromium(tmp_path, tiny_config):
    checker = _browser_check()
    browser = _browser_or_skip(checker)
    run = _tiny_fit_run(tmp_path, tiny_config)
    pngs = [p for p in run.rglob("*.png") if not p.name.startswith(".")]
    assert pngs, "the monitor wrote no figure"
    report = write_report(run)
    result = checker.check_report(report, tmp_path / "screenshot.png", browser)
    assert checker.problems(result) == []
    assert result["sections"] == list(SECTIONS)
    # one topo/ figure, the monitor's PNGs; every one decoded by the browser
    assert len(result["widths"]) == 1 + len(pngs)
    assert all(w > 0 for w in result["widths"])
    shot = (tmp_path / "screenshot.png").read_bytes()
    assert shot.startswith(b"\x89PNG") and len(shot) > 10_000


@pytest.mark.slow
def test_browser_check_fails_on_a_broken_image(tmp_path):
    checker = _browser_check()
    browser = _browser_or_skip(checker)
    run, _ = _write_synthetic_run(tmp_path)
    page = build_report(run).replace('src="data:image/png;base64,', 'src="data:image/png;base64,AAAA', 1)
    page = page.replace('<section id="correlations">', '<section id="other">', 1)
    broken = tmp_path / "broken.html"
    broken.write_text(page, encoding="utf-8")
    result = checker.check_report(broken, tmp_path / "shot.png", browser)
    found = checker.problems(result)
    assert "section 'correlations' is missing" in found
    assert any("did not load" in p for p in found)


def test_report_is_a_listed_subcommand(capsys):
    assert main(["--help"]) == 0
    assert "lightning-topo report runs/" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    assert exit_info.value.code == 0
    assert "--overwrite" in capsys.readouterr().out
