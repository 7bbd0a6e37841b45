"""Cost of PersistenceScoreMonitor: share of the quickstart fit, and PSF time per epoch.

1. The quickstart fine-tune (configs/quickstart.yaml: MiniLM-L6, 3,000 training sentences,
   2 epochs, full validation split) twice with the same seed: without the monitor and with
   ``PersistenceScoreMonitor()`` (defaults: last layer, [CLS], <= 512 points per class). The
   overhead is reported two ways: the difference of the two fit wall times, and the monitor's
   own measured time (collecting hidden states + PSF) as a share of the monitored fit.
2. The per-epoch score computation alone (:func:`lightning_topo.scores.persistence_summary`,
   i.e. H0 + H1 diagrams, PSF, total persistence and entropy) for 2 classes x
   {512, 1024, 2048} points at hidden sizes 384 and 768 (Gaussian clouds, a worst case for H1).

Usage::

    .venv/bin/python benchmarks/monitor_overhead.py            # both parts
    .venv/bin/python benchmarks/monitor_overhead.py --skip-fit # part 2 only

Writes ``benchmarks/results/monitor.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "monitor.json"


def time_scores(hidden_sizes=(384, 768), sizes=(512, 1024, 2048), repeats: int = 1) -> list[dict]:
    from lightning_topo.scores import persistence_summary

    rows = []
    warm = torch.randn(64, 8)
    persistence_summary(warm, torch.arange(64) % 2, sampling="none")  # import / thread-pool warm-up
    for d in hidden_sizes:
        for n in sizes:
            g = torch.Generator().manual_seed(0)
            labels = torch.arange(2 * n) % 2
            points = torch.randn(2 * n, d, generator=g) + labels[:, None].float() * 0.5
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                summary = persistence_summary(points, labels, sampling="none")
                times.append(time.perf_counter() - start)
            h1 = sum(len(dg[1]) for dg in summary.diagrams.values())
            rows.append(
                {"hidden": d, "points_per_class": n, "classes": 2, "seconds": min(times), "h1_pairs": h1}
            )
            print(f"  scores d={d:4d} n={n:5d}/class: {min(times):7.2f} s  (H1 pairs {h1})", flush=True)
    return rows


def _validation_step_not_sharing(self, batch, batch_idx):
    """SequenceClassifier's validation step, but returning nothing: the monitor must re-read the data."""
    self._eval_step(batch, "val", self.val_metrics)


def run_fit(variant: str, workdir: Path, max_epochs: int | None) -> dict:
    """``variant``: ``"baseline"``, ``"monitor"`` (re-reads the validation set) or ``"monitor_reuse"``
    (as shipped: ``SequenceClassifier.validation_step`` returns its ``EncodedBatch``)."""
    from lightning_topo.callbacks import PersistenceScoreMonitor
    from lightning_topo.models.cli import run_lightning_cli

    args = [
        "--config",
        str(ROOT / "configs" / "quickstart.yaml"),
        "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={workdir}",
    ]
    if max_epochs is not None:
        args.append(f"--trainer.max_epochs={max_epochs}")
    old = os.getcwd()
    os.chdir(workdir)  # the config's CSV logger writes to ./runs
    try:
        cli = run_lightning_cli(args, run=False)
        monitor = None
        if variant != "baseline":
            monitor = PersistenceScoreMonitor(plots=True)
            cli.trainer.callbacks.insert(0, monitor)
        if variant == "monitor":
            cli.model.validation_step = types.MethodType(_validation_step_not_sharing, cli.model)
        torch.manual_seed(42)
        start = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        fit_s = time.perf_counter() - start
    finally:
        os.chdir(old)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k in ("val/acc", "val/loss")}
    out = {"variant": variant, "fit_s": fit_s, "epochs": cli.trainer.current_epoch, **metrics}
    if monitor is not None:
        out["monitor_s"] = sum(t["collect_s"] + t["compute_s"] for t in monitor.timings)
        out["monitor_collect_s"] = sum(t["collect_s"] for t in monitor.timings)
        out["monitor_compute_s"] = sum(t["compute_s"] for t in monitor.timings)
        out["history"] = monitor.history
    print(f"  fit {variant}: {fit_s:.1f} s  {metrics}", flush=True)
    return out


def _write(result: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    os.replace(tmp, RESULTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-fit", action="store_true", help="only time the score computation")
    parser.add_argument("--skip-scores", action="store_true", help="only time the quickstart fit")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the quickstart's 2 epochs")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)

    result: dict = {
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "note": "shared machine, other jobs running: timings are noisy",
        },
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if RESULTS.exists():  # keep the part not rerun
        previous = json.loads(RESULTS.read_text())
        result.update({k: v for k, v in previous.items() if k in ("fit", "scores")})
    if not args.skip_fit:
        print("quickstart fit, without and with the monitor (same seed):", flush=True)
        fits = result["fit"] = {}
        for variant in ("baseline", "monitor", "monitor_reuse"):
            with tempfile.TemporaryDirectory() as tmp:
                fits[variant] = run_fit(variant, Path(tmp), args.max_epochs)
            base = fits["baseline"]["fit_s"]
            for name, run in fits.items():
                if name != "baseline":
                    run["overhead_wall_share"] = (run["fit_s"] - base) / base
                    run["overhead_measured_share"] = run["monitor_s"] / run["fit_s"]
            _write(result)  # keep partial results if a later fit is interrupted
    if not args.skip_scores:
        print("per-epoch score computation (2 classes):", flush=True)
        result["scores"] = time_scores(repeats=args.repeats)

    _write(result)

    print("\n| part | setting | seconds | share |")
    print("|---|---|---|---|")
    if "fit" in result:
        fits = result["fit"]
        if "baseline" in fits:
            print(f"| fit | quickstart, no monitor | {fits['baseline']['fit_s']:.1f} | |")
        for name in ("monitor", "monitor_reuse"):
            if name not in fits:
                continue
            run = fits[name]
            label = "re-reads val set" if name == "monitor" else "reuses validation forward"
            print(
                f"| fit | with monitor ({label}) | {run['fit_s']:.1f} | "
                f"{100 * run['overhead_wall_share']:+.1f}% (wall difference) |"
            )
            print(
                f"| fit | monitor's own time, {label} (collect {run['monitor_collect_s']:.1f} s + "
                f"scores {run['monitor_compute_s']:.1f} s) | {run['monitor_s']:.1f} | "
                f"{100 * run['overhead_measured_share']:.1f}% of that fit |"
            )
    for row in result.get("scores", []):
        print(
            f"| scores | d={row['hidden']}, 2 x {row['points_per_class']} points | {row['seconds']:.2f} | |"
        )
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
