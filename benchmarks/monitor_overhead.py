"""Cost of PersistenceScoreMonitor: share of the quickstart fit, and PSF time per epoch.

1. The quickstart fine-tune (configs/quickstart.yaml: MiniLM-L6, 2,500 training sentences, the
   full validation split, 1 thread; its callbacks removed, ``--max-epochs`` 2 by default) with the
   same seed, in three variants: ``baseline`` (no callback), ``monitor_reuse`` (``
   PersistenceScoreMonitor()``, defaults: last layer, [CLS], <= 512 points per class, plots at fit
   end; it reuses ``SequenceClassifier``'s validation forward, as shipped) and ``monitor`` (the same
   callback, but ``validation_step`` returns nothing so it must re-read the validation set).
   ``--repeats`` rounds run baseline and monitor_reuse alternately (the re-read variant once), so
   drifts of a shared machine hit both; medians are reported. Each fit is split into phases
   measured by a callback: training batches, validation loop, fit end (plots). The monitor's
   own time is measured from outside the class by timing its hooks (:func:`time_hooks`):
   pooling reused batches (``on_validation_batch_end``), collecting + scores
   (``on_validation_epoch_end``) and plots (``on_fit_end``). The overhead is reported as the difference of
   median fit wall times and as the monitor's own measured time (incl. plots) / fit time.
2. The per-epoch score computation alone (:func:`lightning_topo.scores.persistence_summary`,
   i.e. H0 + H1 diagrams, PSF, total persistence and entropy) for 2 classes x
   {512, 1024, 2048} points at hidden sizes 384 and 768 (Gaussian clouds, a worst case for H1).

Usage::

    .venv/bin/python benchmarks/monitor_overhead.py --repeats 3  # both parts
    .venv/bin/python benchmarks/monitor_overhead.py --skip-fit   # part 2 only
    # a smoke run (about a minute; results to a scratch file):
    .venv/bin/python benchmarks/monitor_overhead.py --max-epochs 1 --skip-reread \
        --cli-arg=--trainer.limit_train_batches=2 --cli-arg=--trainer.limit_val_batches=2 \
        --score-sizes 32 --score-hidden 16 --results /tmp/monitor_smoke.json

Writes ``benchmarks/results/monitor.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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


def time_hooks(callback: object, hooks: tuple[str, ...]) -> dict[str, float]:
    """Wrap ``hooks`` of one callback instance with wall-clock timers; returns the running totals.

    Works for any callback (nothing in the class is changed or read): each call's time is added
    to ``totals[hook]``.
    """
    totals = dict.fromkeys(hooks, 0.0)
    for name in hooks:
        original = getattr(callback, name)

        def timed(*args, _original=original, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_name] += time.perf_counter() - start

        setattr(callback, name, timed)
    return totals


def _validation_step_not_sharing(self, batch, batch_idx):
    """SequenceClassifier's validation step, but returning nothing: the monitor must re-read the data."""
    self._eval_step(batch, "val", self.val_metrics)


def _phase_timer():
    """A callback that splits a fit into training batches, validation loops and the fit end."""
    import lightning.pytorch as pl

    class PhaseTimer(pl.Callback):
        def __init__(self) -> None:
            self.phases = {"train_s": 0.0, "val_s": 0.0}
            self._t: dict[str, float] = {}
            self.fit_end_at: float | None = None

        def on_train_epoch_start(self, trainer, pl_module):
            self._t["train"] = time.perf_counter()

        def on_validation_start(self, trainer, pl_module):
            now = time.perf_counter()
            if "train" in self._t:  # validation runs inside the training epoch: stop its clock
                self.phases["train_s"] += now - self._t.pop("train")
            self._t["val"] = now

        def on_validation_end(self, trainer, pl_module):
            self.phases["val_s"] += time.perf_counter() - self._t.pop("val")

        def on_train_epoch_end(self, trainer, pl_module):
            if "train" in self._t:
                self.phases["train_s"] += time.perf_counter() - self._t.pop("train")

        def on_fit_end(self, trainer, pl_module):  # first in the callback list: before the plots
            self.fit_end_at = time.perf_counter()

    return PhaseTimer()


def run_fit(variant: str, workdir: Path, max_epochs: int, extra_args: list[str] | None = None) -> dict:
    """``variant``: ``"baseline"``, ``"monitor"`` (re-reads the validation set) or ``"monitor_reuse"``
    (as shipped: ``SequenceClassifier.validation_step`` returns its ``EncodedBatch``)."""
    from lightning_topo.callbacks import PersistenceScoreMonitor
    from lightning_topo.cli.fit import run_lightning_cli

    args = [
        "--config",
        str(ROOT / "configs" / "quickstart.yaml"),
        "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={workdir}",
        f"--trainer.max_epochs={max_epochs}",
        *(extra_args or []),
    ]
    old = os.getcwd()
    os.chdir(workdir)  # the config's CSV logger writes to ./runs
    try:
        cli = run_lightning_cli(args, run=False)
        timer = _phase_timer()
        monitor = None
        hook_s: dict[str, float] = {}
        if variant != "baseline":
            monitor = PersistenceScoreMonitor(plots=True)
            hook_s = time_hooks(monitor, ("on_validation_batch_end", "on_validation_epoch_end", "on_fit_end"))
            cli.trainer.callbacks.insert(0, monitor)
        cli.trainer.callbacks.insert(0, timer)
        if variant == "monitor":
            cli.model.validation_step = types.MethodType(_validation_step_not_sharing, cli.model)
        torch.manual_seed(42)
        start = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        end = time.perf_counter()
    finally:
        os.chdir(old)
    fit_s = end - start
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k in ("val/acc", "val/loss")}
    out = {
        "variant": variant,
        "fit_s": fit_s,
        "epochs": cli.trainer.current_epoch,
        "threads": torch.get_num_threads(),
        **timer.phases,
        "fit_end_s": end - timer.fit_end_at if timer.fit_end_at is not None else None,
        **metrics,
    }
    if monitor is not None:
        out["monitor_pool_s"] = hook_s["on_validation_batch_end"]
        out["monitor_measure_s"] = hook_s["on_validation_epoch_end"]
        out["monitor_plot_s"] = hook_s["on_fit_end"]
        out["monitor_s"] = sum(hook_s.values())
        out["history"] = monitor.history
    phases = ", ".join(f"{k} {out[k]:.1f}" for k in ("train_s", "val_s", "fit_end_s") if out[k] is not None)
    extra = (
        f", monitor {out['monitor_s']:.2f} s (plots {out['monitor_plot_s']:.2f})"
        if monitor is not None
        else ""
    )
    print(f"  fit {variant}: {fit_s:.1f} s ({phases}{extra})  {metrics}", flush=True)
    return out


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Medians per variant and the overhead of each monitored variant against the baseline."""
    summary: dict = {}
    keys = ("fit_s", "train_s", "val_s", "fit_end_s", "monitor_s", "monitor_plot_s")
    for variant, rs in runs.items():
        summary[variant] = {
            "runs": len(rs),
            **{
                f"median_{k}": statistics.median(r[k] for r in rs)
                for k in keys
                if all(r.get(k) is not None for r in rs)
            },
        }
    base = summary.get("baseline", {}).get("median_fit_s")
    for variant, s in summary.items():
        if variant == "baseline" or base is None:
            continue
        s["overhead_wall_share"] = (s["median_fit_s"] - base) / base
        s["overhead_measured_share"] = s["median_monitor_s"] / s["median_fit_s"]
        if variant == "monitor_reuse":  # paired rounds: baseline and reuse ran back to back
            diffs = [
                (m["fit_s"] - b["fit_s"]) / b["fit_s"]
                for b, m in zip(runs["baseline"], runs["monitor_reuse"], strict=False)
            ]
            s["paired_overhead_shares"] = diffs
            s["median_paired_overhead_share"] = statistics.median(diffs)
    return summary


def _write(result: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    os.replace(tmp, RESULTS)


def print_table(result: dict) -> None:
    """The results as a Markdown table (fit medians, overheads, score timings)."""
    print("\n| part | setting | seconds | share |")
    print("|---|---|---|---|")
    summary = result.get("fit", {}).get("summary", {})
    if "baseline" in summary:
        b = summary["baseline"]
        print(
            f"| fit | quickstart, no monitor (median of {b['runs']}; train {b['median_train_s']:.1f} s, "
            f"val {b['median_val_s']:.1f} s) | {b['median_fit_s']:.1f} | |"
        )
    for name in ("monitor_reuse", "monitor"):
        if name not in summary:
            continue
        m = summary[name]
        label = "re-reads val set" if name == "monitor" else "reuses validation forward"
        paired = m.get("median_paired_overhead_share")
        paired_txt = f"; paired median {100 * paired:+.1f}%" if paired is not None else ""
        print(
            f"| fit | with monitor, {label} (median of {m['runs']}; train {m['median_train_s']:.1f} s, "
            f"val {m['median_val_s']:.1f} s) | {m['median_fit_s']:.1f} | "
            f"{100 * m['overhead_wall_share']:+.1f}% wall{paired_txt} |"
        )
        print(
            f"| fit | monitor's own time, {label} (incl. plots {m['median_monitor_plot_s']:.1f} s) | "
            f"{m['median_monitor_s']:.1f} | {100 * m['overhead_measured_share']:.1f}% of that fit |"
        )
    for row in result.get("scores", []):
        print(
            f"| scores | d={row['hidden']}, 2 x {row['points_per_class']} points | {row['seconds']:.2f} | |"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-fit", action="store_true", help="only time the score computation")
    parser.add_argument("--skip-scores", action="store_true", help="only time the quickstart fit")
    parser.add_argument("--max-epochs", type=int, default=2, help="epochs per fit (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of baseline + monitor_reuse fits")
    parser.add_argument("--skip-reread", action="store_true", help="do not run the re-reading variant")
    parser.add_argument(
        "--cli-arg",
        action="append",
        default=[],
        help="one extra LightningCLI argument (repeatable), e.g. --cli-arg=--trainer.limit_train_batches=2",
    )
    parser.add_argument("--score-repeats", type=int, default=1, help="timings per score setting (min)")
    parser.add_argument(
        "--score-sizes", type=int, nargs="+", default=[512, 1024, 2048], help="points per class to time"
    )
    parser.add_argument(
        "--score-hidden", type=int, nargs="+", default=[384, 768], help="hidden sizes to time"
    )
    parser.add_argument(
        "--results", default=None, help="results JSON (default benchmarks/results/monitor.json)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global RESULTS
    if args.results:
        RESULTS = Path(args.results).resolve()

    result: dict = {
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
        },
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if RESULTS.exists():  # keep the part not rerun
        previous = json.loads(RESULTS.read_text())
        result.update({k: v for k, v in previous.items() if k in ("fit", "scores")})
    if not args.skip_fit:
        print("quickstart fit, without and with the monitor (same seed):", flush=True)
        runs: dict[str, list[dict]] = {"baseline": [], "monitor_reuse": [], "monitor": []}
        order = []
        for r in range(args.repeats):
            order += ["baseline", "monitor_reuse"] if r % 2 == 0 else ["monitor_reuse", "baseline"]
            if r == 0 and not args.skip_reread:
                order.append("monitor")
        for variant in order:
            with tempfile.TemporaryDirectory() as tmp:
                runs[variant].append(run_fit(variant, Path(tmp), args.max_epochs, args.cli_arg))
            runs_done = {k: v for k, v in runs.items() if v}
            result["fit"] = {"runs": runs_done, "summary": summarise(runs_done), "order": order}
            _write(result)  # keep partial results if a later fit is interrupted
    if not args.skip_scores:
        print("per-epoch score computation (2 classes):", flush=True)
        result["scores"] = time_scores(
            hidden_sizes=tuple(args.score_hidden), sizes=tuple(args.score_sizes), repeats=args.score_repeats
        )

    _write(result)

    print_table(result)
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
