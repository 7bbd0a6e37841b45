"""Latent-concept lens: the monitor's cost on the quickstart fit, and clustering time vs token count.

(``benchmarks/lenses.py`` did not exist when this was written; this is its ``concepts`` section
as a script of its own. ``concepts_section(args)`` can be called from there.)

Stages:

* ``clustering``: word-token vectors of the pre-trained embedded MiniLM (top layer, d=384) on
  the embedded validation split; :func:`~lightning_topo.scores.concepts.discover_concepts`
  (scikit-learn Ward, K = min(600, n/20)) timed for n in ``--sizes``, against SciPy's Ward
  linkage cut to K clusters (same partition, checked) -- the engine choice of docs/concepts.md.
* ``overhead``: the quickstart fit (configs/concepts.yaml: MiniLM-L6, 2,500 training sentences,
  the full validation split, 3 epochs) with and without :class:`ConceptAlignmentMonitor` at
  default settings, ``--repeats`` alternating rounds. Each fit is split into phases (training
  batches, validation loops, fit end); the monitor's own time is ``monitor.timings``
  (reference forward, per-epoch clustering and description, triggers) plus its figures.
  Reported: median fit times, the wall-time gap, and the monitor's own time / fit time
  (target: at most 5%).

Usage (quiet machine)::

    .venv/bin/python benchmarks/lenses_concepts.py             # both stages, full size
    .venv/bin/python benchmarks/lenses_concepts.py --quick     # a smoke run (about a minute)

Writes ``benchmarks/results/lenses_concepts.json`` (``--out`` to change).
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
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def time_clustering(sizes: list[int], repeats: int, limit_val: int | None) -> list[dict[str, Any]]:
    """Ward clustering time of real token vectors for each token count in ``sizes``."""
    from scipy.cluster.hierarchy import fcluster, linkage

    from lightning_topo.models import SequenceClassifier, TextClassificationDataModule
    from lightning_topo.scores.concepts import default_n_concepts, discover_concepts
    from lightning_topo.tokens import build_token_set, token_activations

    dm = TextClassificationDataModule(max_length=64, limit={"val": limit_val} if limit_val else None)
    model = SequenceClassifier(num_labels=dm.num_classes)
    texts, labels = dm.split_texts("val"), dm.split_labels("val")
    ts = build_token_set(texts, labels, dm.tokenizer, max_tokens=max(sizes), max_length=64)
    acts = token_activations(model, ts, layers=[-1])[-1].double().numpy()
    rows = []
    for n in sizes:
        x, k = acts[:n], default_n_concepts(min(n, len(acts)))
        ours, ref = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            ids = discover_concepts(x, k)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            cut = fcluster(linkage(x, method="ward"), k, criterion="maxclust")
            ref.append(time.perf_counter() - t)
        same = len(set(zip(ids.tolist(), cut.tolist(), strict=True))) == k
        rows.append(
            {
                "tokens": len(x),
                "n_concepts": k,
                "sklearn_s": min(ours),
                "scipy_s": min(ref),
                "same_partition": same,
            }
        )
        print(
            f"  n={len(x):5d} K={k:3d}: sklearn {min(ours):.3f} s, scipy {min(ref):.3f} s, same partition {same}",
            flush=True,
        )
    return rows


def _phase_timer():
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
            if "train" in self._t:
                self.phases["train_s"] += now - self._t.pop("train")
            self._t["val"] = now

        def on_validation_end(self, trainer, pl_module):
            self.phases["val_s"] += time.perf_counter() - self._t.pop("val")

        def on_train_epoch_end(self, trainer, pl_module):
            if "train" in self._t:
                self.phases["train_s"] += time.perf_counter() - self._t.pop("train")

        def on_fit_end(self, trainer, pl_module):  # first in the list: before the monitor's fit end
            self.fit_end_at = time.perf_counter()

    return PhaseTimer()


def run_fit(with_monitor: bool, workdir: Path, cli_args: list[str]) -> dict[str, Any]:
    """One quickstart fit (configs/concepts.yaml without its callbacks), optionally with the monitor."""
    from lightning_topo.callbacks.concept_monitor import ConceptAlignmentMonitor
    from lightning_topo.cli.fit import run_lightning_cli

    args = [
        "--config", str(ROOT / "configs" / "concepts.yaml"), "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={workdir}", *cli_args,
    ]  # fmt: skip
    old = os.getcwd()
    os.chdir(workdir)  # the config's CSV logger writes to ./runs
    try:
        cli = run_lightning_cli(args, run=False)
        timer, monitor = _phase_timer(), None
        if with_monitor:
            monitor = ConceptAlignmentMonitor()
            cli.trainer.callbacks.insert(0, monitor)
        cli.trainer.callbacks.insert(0, timer)
        torch.manual_seed(42)
        start = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        end = time.perf_counter()
    finally:
        os.chdir(old)
    out: dict[str, Any] = {
        "monitor": with_monitor, "fit_s": end - start, "threads": torch.get_num_threads(), **timer.phases,
        "fit_end_s": end - timer.fit_end_at if timer.fit_end_at is not None else None,
        **{k: float(v) for k, v in cli.trainer.callback_metrics.items() if k in ("val/acc", "val/loss")},
    }  # fmt: skip
    if monitor is not None:
        out["timings"] = monitor.timings
        out["monitor_measure_s"] = sum(t["forward_s"] + t["cluster_s"] for t in monitor.timings)
        # fit end = triggers (already in timings) + figures: count the fit-end phase once
        trig = sum(t["forward_s"] for t in monitor.timings if t["what"] == "triggers")
        out["monitor_s"] = out["monitor_measure_s"] - trig + (out["fit_end_s"] or 0.0)
        out["history"] = monitor.history
        out["triggers"] = monitor.trigger_result
    print(
        f"  fit monitor={with_monitor}: {out['fit_s']:.1f} s, own {out.get('monitor_s', 0):.1f} s", flush=True
    )
    return out


def summarise(runs: dict[str, list[dict]]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for name, rs in runs.items():
        s[name] = {"runs": len(rs), "median_fit_s": statistics.median(r["fit_s"] for r in rs)}
        if name == "monitor":
            s[name]["median_monitor_s"] = statistics.median(r["monitor_s"] for r in rs)
            s[name]["own_share"] = s[name]["median_monitor_s"] / s[name]["median_fit_s"]
    if runs.get("baseline") and runs.get("monitor"):
        base = s["baseline"]["median_fit_s"]
        s["monitor"]["wall_share"] = (s["monitor"]["median_fit_s"] - base) / base
    return s


def concepts_section(args: argparse.Namespace) -> dict[str, Any]:
    """The ``concepts`` section of ``benchmarks/lenses.py``."""
    result: dict[str, Any] = {}
    if "clustering" in args.stages:
        print("clustering time vs token count (MiniLM top layer, d=384):", flush=True)
        result["clustering"] = time_clustering(args.sizes, args.cluster_repeats, args.limit_val)
    if "overhead" in args.stages:
        print("quickstart fit with and without ConceptAlignmentMonitor:", flush=True)
        runs: dict[str, list[dict]] = {"baseline": [], "monitor": []}
        for r in range(args.repeats):
            for with_monitor in (r % 2 == 0, r % 2 == 1):
                with tempfile.TemporaryDirectory() as tmp:
                    runs["monitor" if with_monitor else "baseline"].append(
                        run_fit(with_monitor, Path(tmp), args.cli_args)
                    )
        result["overhead"] = {"runs": runs, "summary": summarise(runs)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stages", nargs="+", default=["clustering", "overhead"], choices=["clustering", "overhead"]
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[500, 1000, 2000, 3000, 5000])
    parser.add_argument("--cluster-repeats", type=int, default=3)
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternating rounds of baseline + monitored fits"
    )
    parser.add_argument("--limit-val", type=int, default=None)
    parser.add_argument("--cli-args", nargs="*", default=[], help="extra LightningCLI arguments")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, 1 tiny fit each")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lenses_concepts.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.cluster_repeats, args.repeats, args.limit_val = [200, 400], 1, 1, 200
        args.cli_args = [*args.cli_args, "--trainer.max_epochs=1", "--data.limit={train: 64, val: 200}"]
    result = {
        "machine": {
            "platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(),
            "numpy": np.__version__,
        },
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "concepts": concepts_section(args),
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    os.replace(tmp, out)
    summary = result["concepts"].get("overhead", {}).get("summary", {})
    if "monitor" in summary:
        m = summary["monitor"]
        print(
            f"monitor's own time {m['median_monitor_s']:.1f} s = {100 * m['own_share']:.1f}% of the fit (target <= 5%)"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
