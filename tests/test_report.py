"""``lightning-topo report``: the HTML page of a run folder, its refusals, and a real-browser check."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger

from lightning_topo.cli import main
from lightning_topo.plots import write_history_figures
from lightning_topo.report import (
    RUN_SETTINGS,
    SECTIONS,
    _line,
    build_report,
    correlation,
    lens_panels,
    read_run,
    run_lenses,
    write_report,
)
from lightning_topo.scores.names import target_suffix

REPO = Path(__file__).resolve().parents[1]
DATA_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


ACC = [0.61, 0.74, 0.70, 0.78, 0.69, 0.80]
PSF = [0.031, 0.027, 0.029, 0.024, 0.033, 0.022]
PRUNE_EPOCH = 4


def _write_synthetic_run(root: Path, pruned: bool = True, prefix: str = "topo", monitor: str = "val/acc",
                         settings: bool = False) -> tuple[Path, dict]:  # fmt: skip
    """A CSVLogger run (6 epochs) with a lens (``prefix``: headline, 2 layers, ``/std``, a class,
    correlations), geometry/ (headline and per-layer details), training curves, the PSF monitor's
    figures and, when ``pruned``, a pruning at epoch 4 with its summary; returns the log folder and
    what was logged."""
    logger = CSVLogger(root, name="run", version=0)
    tag = target_suffix(monitor)
    for epoch in range(6):
        step = 10 * (epoch + 1)
        logger.log_metrics({"train/loss_step": 0.7 - 0.1 * epoch, "epoch": epoch}, step=step - 5)
        metrics = {
            monitor: ACC[epoch],
            f"{prefix}/psf": PSF[epoch],
            f"{prefix}/psf/std": 0.002,
            f"{prefix}/psf/layer_1": PSF[epoch] * 1.5,
            f"{prefix}/psf/layer_2": PSF[epoch],
            f"{prefix}/psf/class_0": PSF[epoch] * 0.9,
            f"{prefix}/h0/entropy": 4.0 + epoch,
            "geometry/cone": 0.2 + 0.01 * epoch,
            "geometry/cone/layer_1/heads": 0.1 + 0.01 * epoch,
            "geometry/cone/layer_2/heads": 0.3 - 0.01 * epoch,
            "epoch": epoch,
        }
        if epoch > 0:
            metrics[f"{prefix}/psf/pearson_{tag}"] = -0.25 - 0.05 * epoch
            metrics[f"{prefix}/psf/spearman_{tag}"] = -1.0
        logger.log_metrics(metrics, step=step)
    if pruned:
        logger.log_metrics({"prune/params": 6000.0, "prune/ratio": 0.6, "epoch": PRUNE_EPOCH}, step=45)
    logger.save()
    run = Path(logger.log_dir)
    history = [
        {"epoch": e, "step": 10 * (e + 1), "scores": {f"{prefix}/psf": PSF[e]}, "monitor": ACC[e]}
        for e in range(6)
    ]
    write_history_figures(history, run / prefix, score=f"{prefix}/psf", monitor=monitor, key_prefix=prefix)
    if settings:
        (run / RUN_SETTINGS).write_text(json.dumps({
            f"PersistenceScoreMonitor/{prefix}": {"log_prefix": prefix, "monitor_against": monitor,
                                                  "headline": f"{prefix}/psf"}}))  # fmt: skip
    if pruned:
        (run / "pruned").mkdir()
        record = {"step": 1, "epoch": PRUNE_EPOCH, "params": 6000, "ratio": 0.6, "total_params": 9000,
                  "val_acc_before": 0.78, "val_acc_after": 0.55}  # fmt: skip
        record["widths"] = {"heads": [3, 2], "ffn": [40, 24]}
        summary = {
            "method": "topological",
            "dense": {"params": 13000, "encoder_params": 10000, "weight_bytes": 3 * 2**20},
            "compressed": {"params": 9000, "encoder_params": 6000, "weight_bytes": 2 * 2**20},
            "val_acc": {"before_pruning": 0.78, "after_pruning": 0.55, "after_recovery": 0.80},
            "cpu_speedup": 1.37,
        }
        (run / "pruned" / "pruning_history.json").write_text(
            json.dumps(
                {"method": "topological", "original_params": 10000, "history": [record], "summary": summary}
            )
        )
        (run / "pruned" / "model.safetensors").write_bytes(b"\0" * 2048)
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "epoch=5.ckpt").write_bytes(b"\0" * (7 * 2**20 + 12345))  # weights + AdamW
    return run, {"acc": ACC, "psf": PSF}


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
    # headlines; per lens one figure (its panels and its scatter; topo, geometry); training
    # curves; the monitor's PNGs; kept units
    assert len(images) == 1 + 2 + 1 + len(monitor_pngs) + 1
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in images)
    for path in monitor_pngs:  # embedded byte for byte
        assert path.read_bytes() in images
        assert path.relative_to(run).as_posix() in page
    # self-contained: no script, no external resource
    assert "<script" not in page
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    # logged correlations: the last value of each, not an earlier one, with its n
    assert f"{-0.25 - 0.05 * 5:.4g}" in page and f"{-0.25 - 0.05 * 4:.4g}" not in page
    assert f"{max(logged['acc']):.4f}" in page and f"{logged['acc'][-1]:.4f}" in page
    # pruning table: per-layer widths by hidden-state index (encoder layer 1 writes hidden state 1)
    assert re.search(r"<td>1</td><td>3</td><td>40</td>", page)
    assert re.search(r"<td>2</td><td>2</td><td>24</td>", page)
    assert "layer (hidden-state index)" in page


def test_first_screen_summary_correlation_with_n_and_ci_pruning_epoch_left_out(tmp_path):
    run, _ = _write_synthetic_run(tmp_path)
    page = build_report(run)
    epochs = [e for e in range(6) if e != PRUNE_EPOCH]
    x, y = np.array([PSF[e] for e in epochs]), np.array([ACC[e] for e in epochs])
    pearson = float(np.corrcoef(x, y)[0, 1])
    row = correlation(read_run(run), "topo/psf", "val/acc", [PRUNE_EPOCH])
    assert row["n"] == 5 and row["epochs"] == epochs
    assert row["pearson"] == pytest.approx(pearson)
    low, high = row["pearson_ci"]
    assert -1 <= low <= pearson <= high <= 1
    assert f"{pearson:+.2f} [{low:+.2f}, {high:+.2f}]" in page
    assert "pruning epoch 4 left out" in page
    # fewer points than MIN_POINTS: said, not computed
    short = correlation(read_run(run), "topo/psf", "val/acc", [0, 1, 4])
    assert "pearson" not in short and "too few points (n=3" in short["note"]
    # honest sizes: dense vs compressed weights, never the .ckpt with optimizer state
    assert "3.00 MiB → 2.00 MiB (0.67×)" in page
    assert "7.01 MiB" not in page and ".ckpt" not in page
    for value in ("0.7800", "0.5500", "0.8000", "1.37×", "13,000 → 9,000"):
        assert value in page
    # the first screen comes before the details
    assert page.index('id="pruning"') < page.index('id="series"') < page.index('id="figures"')


def test_lens_details_one_panel_per_score_std_as_error_bars(tmp_path):
    run, _ = _write_synthetic_run(tmp_path)
    log = read_run(run)
    panels = lens_panels(log, "topo")
    assert panels["topo/psf"] == {None: "topo/psf", 1: "topo/psf/layer_1", 2: "topo/psf/layer_2"}
    assert panels["topo/psf/class_*"] == {"class 0": "topo/psf/class_0"}
    assert not any("std" in title or "pearson" in title for title in panels)
    geometry = lens_panels(log, "geometry")
    assert geometry["geometry/cone/heads"] == {
        1: "geometry/cone/layer_1/heads",
        2: "geometry/cone/layer_2/heads",
    }
    assert _line(log, "topo/psf", True)[0] == (0.0, PSF[0], 0.002)  # the /std is the error bar
    assert [lens.headline for lens in run_lenses(log, run)] == ["topo/psf", "geometry/cone"]


def test_prefixes_and_monitor_are_read_from_the_run(tmp_path):
    run, _ = _write_synthetic_run(tmp_path, pruned=False, prefix="mytopo", monitor="val/f1", settings=True)
    lenses = run_lenses(read_run(run), run)
    assert [(lens.prefix, lens.headline, lens.monitor, lens.source) for lens in lenses][0] == (
        "mytopo", "mytopo/psf", "val/f1", "settings")  # fmt: skip
    page = build_report(run)
    assert "Headline score per lens and val/f1" in page and "<td class=name>mytopo/psf</td>" in page
    # without the settings file the names tell the same
    (run / RUN_SETTINGS).unlink()
    (lens,) = [lens for lens in run_lenses(read_run(run), run) if lens.prefix == "mytopo"]
    assert (lens.prefix, lens.headline, lens.monitor, lens.source) == (
        "mytopo",
        "mytopo/psf",
        "val/f1",
        "names",
    )


def test_read_run_keeps_epochs_steps_and_values(tmp_path):
    run, logged = _write_synthetic_run(tmp_path, pruned=False)
    log = read_run(run.parent.parent)  # the single metrics.csv below is found
    assert log.source == "CSVLogger"
    assert [(e, v) for e, _, v in log.series["val/acc"]] == list(enumerate(logged["acc"]))
    assert [s for _, s, _ in log.series["topo/psf"]] == [10, 20, 30, 40, 50, 60]
    assert "topo/psf/pearson_val_acc" in log.series and "train/loss_step" in log.series


def test_report_without_pruning_or_figures_says_so(tmp_path):
    run, _ = _write_synthetic_run(tmp_path, pruned=False)
    shutil.rmtree(run / "topo")
    page = build_report(run)
    assert "this run was not pruned" in page
    assert "No PNG figure under the run folder" in page
    assert len(_images(page)) == 1 + 2 + 1  # headlines, 2 lenses, training curves


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


def test_tensorboard_scalars_become_series_with_epochs(tmp_path):
    """A real TensorBoardLogger's events, read with TensorBoard's EventAccumulator: each scalar
    becomes (epoch, step, value), the epoch read from Lightning's ``epoch`` scalar at that step."""
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    logger.log_metrics({"train/loss_step": 0.6}, step=5)
    for epoch, (acc, psf) in enumerate([(0.5, 0.03), (0.75, 0.02)]):
        logger.log_metrics({"val/acc": acc, "topo/psf": psf, "epoch": epoch}, step=10 * (epoch + 1))
    logger.log_metrics({"topo/psf/pearson_val_acc": -1.0, "epoch": 1}, step=20)
    logger.finalize("success")
    log = read_run(tmp_path / "tb")
    assert log.source == "TensorBoard" and log.path == Path(logger.log_dir)
    assert [(e, s, pytest.approx(v)) for e, s, v in log.series["val/acc"]] == [(0, 10, 0.5), (1, 20, 0.75)]
    assert log.series["train/loss_step"] == [(None, 5, pytest.approx(0.6))]
    assert "epoch" not in log.series
    page = build_report(logger.log_dir)
    assert "TensorBoard" in page and "topo/psf" in page and "too few points (n=2" in page


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
    assert set(SECTIONS) <= set(result["sections"])
    # every image of the page (the monitor's PNGs among them) decoded by the browser
    page = report.read_text(encoding="utf-8")
    assert len(result["widths"]) == len(_images(page)) >= 1 + len(pngs)
    assert all(w > 0 for w in result["widths"])
    shot = (tmp_path / "screenshot.png").read_bytes()
    assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
    # the first screen at 1400x900, and the page's height at 1400 px wide: at most 6 screens
    first = tmp_path / "first_screen.png"
    checker._run(browser, [f"--screenshot={first}", "--window-size=1400,900", report.resolve().as_uri()], 120)
    assert first.read_bytes().startswith(b"\x89PNG")
    assert _page_height(checker, browser, report) <= 6 * 900


def _page_height(checker, browser: str, report: Path) -> int:
    """``document.body.scrollHeight`` of ``report`` at 1400 px wide (a temporary probe copy)."""
    probe = report.with_name(".height-probe.html")
    script = (
        "<script>window.addEventListener('load',function(){var o=document.createElement('pre');"
        "o.id='height';o.textContent=document.body.scrollHeight;document.body.appendChild(o);});</script>"
    )
    probe.write_text(
        report.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8"
    )
    try:
        dom = checker._run(browser, ["--dump-dom", "--window-size=1400,900", "--virtual-time-budget=5000",
                                     probe.resolve().as_uri()], 120)  # fmt: skip
    finally:
        probe.unlink()
    return int(re.search(r'<pre id="height">(\d+)</pre>', dom).group(1))


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


@pytest.mark.parametrize("width", [3.4, 13.6])
def test_figure_legend_wraps_to_the_figure_width(width):
    """A one-panel headline figure once cut its legend off at both sides: the legend must fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lightning_topo.plots.report import _figure_legend

    fig = plt.figure(figsize=(width, 2.65))
    handles = [("tab:blue", "o", "-", "headline score (bars: ± standard error)"), ("grey", "s", "--", "val/acc (right axis)")]
    added = _figure_legend(fig, handles, pruning=True)
    fig.canvas.draw()
    box = fig.legends[0].get_window_extent()
    fig_box = fig.bbox
    assert box.x0 >= fig_box.x0 and box.x1 <= fig_box.x1  # nothing cut off left or right
    assert box.y1 <= fig_box.y1
    if width < 5:
        assert added > 0 and fig.get_size_inches()[1] == pytest.approx(2.65 + added)  # grew for the extra rows
    else:
        assert added == 0.0 and fig.get_size_inches()[1] == pytest.approx(2.65)  # one row fits
    plt.close(fig)
