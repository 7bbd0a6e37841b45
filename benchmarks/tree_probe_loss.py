"""Does the tree-probe fine-tuning term help? A faithful test of Li, Yin & Lin (2023).

The seed's claim: "a strategy for enhancing fine-tuning performance by leveraging the topological
probe to improve specific submodules" (loss = cross-entropy + lambda * ssp probe loss at one
layer; the authors: lambda = 10, probe pre-trained on that layer, CoLA sentences of label 1 only).

Grid (every cell is one fine-tuning of the embedded all-MiniLM-L6-v2):

- task: ``sentiment`` (the embedded Rotten Tomatoes labels) or ``acceptability`` (the proxy of
  :mod:`lightning_topo.data.acceptability`: original vs locally word-order-corrupted sentences;
  the authors' label filter ``contributing_labels=[1]``, "acceptable", is used there; on
  sentiment every sentence contributes);
- arm: ``off`` (no term), ``random`` (probe at a random init, the old behaviour) or
  ``pretrained`` (probe fitted on the chosen layer of the starting model first, the authors');
- lambda in ``--lams`` and layer in ``--layers`` (an int, or ``auto``: the least tree-like
  encoder layer of the starting model by the probe metric) for the two arms with the term;
- seed in ``--seeds``: the same seed gives every arm of a task the same data order, head
  initialisation and dropout masks (the probe's preparation draws no random numbers).

Each cell records the final and best ``val/acc``, the layer used, the probe metric (held-out ssp
probe loss, lower = more tree-like) of every layer after the fit on a fixed sample of validation
sentences, and the wall-clock time. ``before`` cells hold the same metric for the starting model
(one per task). Cells are written one file each to ``benchmarks/results/tree_probe_loss/`` when
they finish, so the grid resumes where it stopped; ``--summarize`` (also run at the end) reads
every cell of the given setting and writes ``benchmarks/results/tree_probe_loss.json``: per
configuration the mean and sd over seeds, the paired differences against ``off`` (same task and
seed) with a bootstrap 95% CI over seeds, the metric of the used layer before and after, and the
wall-clock time relative to the ``off`` fit of the same task and seed.

Usage (``nice -n 10`` on a shared machine)::

    .venv/bin/python benchmarks/tree_probe_loss.py --seeds 0                     # first pass, full grid
    .venv/bin/python benchmarks/tree_probe_loss.py --seeds 1 2 --lams 1 10 --layers 3   # trimmed, more seeds
    .venv/bin/python benchmarks/tree_probe_loss.py --summarize                   # JSON from the cells
    .venv/bin/python benchmarks/tree_probe_loss.py --quick                       # smoke run (tiny, own folder)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
CELLS = RESULTS / "tree_probe_loss"
TASKS = ("sentiment", "acceptability")
ARMS = ("off", "random", "pretrained")
CONTRIBUTING = {"sentiment": None, "acceptability": [1]}
METRIC_SENTENCES = 256  # validation sentences of the after-fit probe metric
METRIC_LAYERS = (3, 6)  # after a fit the metric is measured here and at the layer used (before: all)


class AccHistory(Callback):
    """Records ``val/acc`` after every validation of the fit."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking and "val/acc" in trainer.callback_metrics:
            self.values.append(float(trainer.callback_metrics["val/acc"]))


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def setting_key(args: argparse.Namespace, task: str) -> str:
    """The part of a cell's name fixed by the data and training settings (the proxy's rule only
    for the acceptability task: sentiment cells do not depend on it)."""
    key = f"n{args.limit_train}-e{args.epochs}-v{args.limit_val}"
    if task == "acceptability" and (args.corruption, args.strength) != ("shuffle", 3):
        key += f"-c{args.corruption}{args.strength}"  # the proxy's default rule has no suffix
    return key


def cell_name(task: str, arm: str, lam: float | None, layer: str | None, seed: int, args) -> str:
    if arm == "off":
        return f"{setting_key(args, task)}_{task}_off_s{seed}"
    return f"{setting_key(args, task)}_{task}_{arm}_lam{lam:g}_L{layer}_s{seed}"


def datamodule(task: str, args: argparse.Namespace, data_dir: Path):
    from lightning_topo.data.acceptability import (
        ACCEPTABILITY_LABEL_NAMES,
        embedded_acceptability_rows,
        write_acceptability_file,
    )
    from lightning_topo.models import TextClassificationDataModule

    kwargs = dict(max_length=64, batch_size=32, eval_batch_size=128, seed=42,
                  limit={"train": args.limit_train, "val": args.limit_val})  # fmt: skip
    if task == "sentiment":
        return TextClassificationDataModule(**kwargs)
    path = data_dir / f"acceptability_s{args.data_seed}_{args.corruption}{args.strength}.tsv"
    if not path.exists():
        rows = embedded_acceptability_rows(
            seed=args.data_seed, corruption=args.corruption, strength=args.strength
        )
        write_acceptability_file(path, rows)
    return TextClassificationDataModule(
        data_file=str(path), split_column="split", label_names=list(ACCEPTABILITY_LABEL_NAMES), **kwargs
    )


def probe_metrics(model, dm, contributing, layers, seed: int = 0) -> dict[int, float]:
    """Held-out ssp probe loss per layer on the first METRIC_SENTENCES validation sentences."""
    from lightning_topo.callbacks.tree_probe_loss import collect_word_vectors, layer_probe_metrics
    from lightning_topo.scores.tree_probe import ProbeBudget, vocab_tables

    model.eval()
    continuation, special = vocab_tables(dm.tokenizer)
    vectors, _ = collect_word_vectors(
        model.encode, dm.val_dataloader(), layers, METRIC_SENTENCES, continuation, special, contributing
    )
    budget = ProbeBudget(epochs=10, lr=1e-2, batch_size=32, val_fraction=0.2)
    with torch.random.fork_rng(devices=[]):
        results = layer_probe_metrics(vectors, "ssp", budget, seed=seed)
    return {int(k): float(r.val_loss) for k, r in results.items()}


def run_before(task: str, args: argparse.Namespace, data_dir: Path) -> None:
    from lightning_topo.models import SequenceClassifier

    path = CELLS / f"{setting_key(args, task)}_{task}_before.json"
    if path.exists():
        return
    dm = datamodule(task, args, data_dir)
    dm.setup("fit")
    model = SequenceClassifier(learning_rate=1e-4)
    start = time.perf_counter()
    metrics = probe_metrics(model, dm, CONTRIBUTING[task], list(range(1, 7)))
    _write_json(path, {"task": task, "kind": "before", "probe_metric": metrics,
                       "wall_s": time.perf_counter() - start})  # fmt: skip
    print(f"before {task}: " + " ".join(f"L{k} {v:.3f}" for k, v in metrics.items()), flush=True)


def run_cell(task: str, arm: str, lam, layer, seed: int, args, data_dir: Path) -> None:
    import lightning.pytorch as pl

    from lightning_topo.callbacks.tree_probe_loss import TreeProbeRegularization
    from lightning_topo.models import SequenceClassifier

    name = cell_name(task, arm, lam, layer, seed, args)
    path = CELLS / f"{name}.json"
    if path.exists() and not args.overwrite:
        return
    pl.seed_everything(seed, verbose=False)
    dm = datamodule(task, args, data_dir)
    model = SequenceClassifier(learning_rate=1e-4, weight_decay=0.01, warmup_ratio=0.1)
    history = AccHistory()
    callbacks: list[Any] = [history]
    reg = None
    if arm != "off":
        reg = TreeProbeRegularization(
            layer="auto" if layer == "auto" else int(layer), weight=float(lam), targets="ssp", init=arm,
            contributing_labels=CONTRIBUTING[task], seed=seed, progress_bar=False,
        )  # fmt: skip
        callbacks.append(reg)
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
    )  # fmt: skip
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=dm)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    used = None
    if reg is not None:
        used = int(model.auxiliary_modules["tree_probe"].layer)
    aux = trainer.callback_metrics.get("train/aux/tree_probe_epoch")
    metric_start = time.perf_counter()
    after = probe_metrics(model, dm, CONTRIBUTING[task], sorted({*METRIC_LAYERS, *([used] if used else [])}))
    cell = {
        "task": task, "arm": arm, "lam": lam, "layer": layer, "seed": seed, "layer_used": used,
        "setting": setting_key(args, task), "val_acc_per_epoch": history.values,
        "final_val_acc": history.values[-1], "best_val_acc": max(history.values),
        "last_epoch_probe_loss": None if aux is None else float(aux),
        "preparation": None if reg is None or reg.preparation is None
        else {k: v for k, v in reg.preparation.items()},
        "probe_metric_after": after, "cpu_s": cpu, "wall_s": wall, "metric_s": time.perf_counter() - metric_start,
        "threads": torch.get_num_threads(), "load_avg_1min_at_end": os.getloadavg()[0],
    }  # fmt: skip
    _write_json(path, cell)
    print(
        f"{name:55s} final {cell['final_val_acc']:.4f} best {cell['best_val_acc']:.4f} layer {used} "
        f"wall {wall:.0f}s load {cell['load_avg_1min_at_end']:.1f}",
        flush=True,
    )


# ----------------------------------------------------------------------------- summary
def bootstrap_ci(values: list[float], n_resamples: int = 10000, seed: int = 0) -> list[float] | None:
    """95% percentile bootstrap CI of the mean (resampling seeds); ``None`` for fewer than 2 values."""
    if len(values) < 2:
        return None
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(n_resamples))
    return [means[int(0.025 * n_resamples)], means[int(0.975 * n_resamples) - 1]]


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "mean": statistics.fmean(values) if values else None,
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "values": values,
    }


def summarize(args: argparse.Namespace) -> dict[str, Any]:
    cells = [
        json.loads(p.read_text())
        for task in TASKS
        for p in sorted(CELLS.glob(f"{setting_key(args, task)}_{task}_*.json"))
    ]
    before = {c["task"]: c["probe_metric"] for c in cells if c.get("kind") == "before"}
    runs = [c for c in cells if c.get("kind") != "before"]
    off = {(c["task"], c["seed"]): c for c in runs if c["arm"] == "off"}
    configs: dict[tuple, list[dict[str, Any]]] = {}
    for c in runs:
        configs.setdefault((c["task"], c["arm"], c["lam"], c["layer"]), []).append(c)
    table = []
    for (task, arm, lam, layer), group in sorted(
        configs.items(), key=lambda kv: tuple(str(x) for x in kv[0])
    ):
        group = sorted(group, key=lambda c: c["seed"])
        row: dict[str, Any] = {"task": task, "arm": arm, "lam": lam, "layer": layer,
                               "seeds": [c["seed"] for c in group]}  # fmt: skip
        for acc in ("final_val_acc", "best_val_acc"):
            row[acc] = _stats([c[acc] for c in group])
            if arm != "off":
                diffs = [c[acc] - off[(task, c["seed"])][acc] for c in group if (task, c["seed"]) in off]
                row[f"{acc}_diff_vs_off"] = {**_stats(diffs), "ci95_bootstrap": bootstrap_ci(diffs)}
        if arm != "off":
            used = [c["layer_used"] for c in group]
            row["layers_used"] = used
            layer_key = str(used[0]) if len(set(used)) == 1 else None
            if layer_key is not None:
                row["probe_metric_before"] = before.get(task, {}).get(layer_key)
                row["probe_metric_after"] = _stats([c["probe_metric_after"][layer_key] for c in group])
                offs = [
                    off[(task, c["seed"])]["probe_metric_after"][layer_key]
                    for c in group
                    if (task, c["seed"]) in off
                ]
                row["probe_metric_after_off"] = _stats(offs)
            ratios = [
                c["wall_s"] / off[(task, c["seed"])]["wall_s"] for c in group if (task, c["seed"]) in off
            ]
            row["wall_ratio_vs_off"] = _stats(ratios)
            cpu = [c["cpu_s"] / off[(task, c["seed"])]["cpu_s"] for c in group
                   if "cpu_s" in c and "cpu_s" in off.get((task, c["seed"]), {})]  # fmt: skip
            row["cpu_ratio_vs_off"] = _stats(cpu) if cpu else None
            preps = [c["preparation"]["seconds"] for c in group if c.get("preparation")]
            row["preparation_s"] = _stats(preps) if preps else None
        else:
            row["probe_metric_after"] = {
                layer: _stats([c["probe_metric_after"][layer] for c in group])
                for layer in group[0]["probe_metric_after"]
            }
        row["wall_s"] = _stats([c["wall_s"] for c in group])
        table.append(row)
    base = setting_key(args, "sentiment")  # without the proxy's rule
    tuning = [
        json.loads(p.read_text())
        for p in sorted([*CELLS.glob(f"{base}_acceptability_off_*.json"), *CELLS.glob(f"{base}-c*_acceptability_off_*.json")])
    ]  # the plain fine-tuned accuracy under every proxy rule tried
    return {
        "benchmark": "tree_probe_loss",
        "proxy_tuning": [
            {
                k: c[k]
                for k in ("setting", "seed", "final_val_acc", "best_val_acc", "val_acc_per_epoch", "wall_s")
            }
            for c in tuning
        ],
        "setting": {
            "limit_train": args.limit_train,
            "epochs": args.epochs,
            "limit_val": args.limit_val,
            "model": "embedded all-MiniLM-L6-v2",
            "lr": 1e-4,
            "batch_size": 32,
            "max_length": 64,
            "acceptability_rule": f"lightning_topo.data.acceptability, corruption {args.corruption!r}, "
            f"strength {args.strength}, data seed {args.data_seed}",
            "contributing_labels": CONTRIBUTING,
            "probe_metric": f"held-out ssp probe loss on the first {METRIC_SENTENCES} validation sentences "
            "(acceptability: label 1 only), 10 epochs lr 1e-2, 20% held out",
        },  # fmt: skip
        "machine": f"{platform.platform()}, {os.cpu_count()} CPU cores; each cell records its threads and the "
        "1-min load average at its end (load_avg_1min_at_end): ~2 = the machine to itself at 2 threads",
        "probe_metric_before": before,
        "configs": table,
        "cells": runs,
    }


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.2f}"


def print_table(result: dict[str, Any]) -> None:
    """One line per configuration; differences and CIs in accuracy points."""
    head = ("task", "arm", "lam", "layer", "n", "final", "diff", "ci95", "best", "bdiff", "used", "ratio")
    print(
        "{:13s} {:10s} {:>4s} {:>5s} {:>2s} {:>7s} {:>7s} {:>17s} {:>7s} {:>7s} {:>6s} {:>5s}".format(*head)
    )
    for row in result["configs"]:
        final, best = row["final_val_acc"], row["best_val_acc"]
        diff = row.get("final_val_acc_diff_vs_off") or {}
        bdiff = row.get("best_val_acc_diff_vs_off") or {}
        ci = diff.get("ci95_bootstrap")
        ratio = (row.get("wall_ratio_vs_off") or {}).get("mean")
        cells = (
            row["task"], row["arm"], "" if row["lam"] is None else f"{row['lam']:g}", str(row["layer"] or ""),
            str(final["n"]), f"{final['mean']:.4f}", _pct(diff.get("mean")),
            "" if not ci else f"[{_pct(ci[0])},{_pct(ci[1])}]", f"{best['mean']:.4f}", _pct(bdiff.get("mean")),
            ",".join(str(x) for x in sorted(set(row.get("layers_used") or []))), "" if ratio is None else f"{ratio:.2f}",
        )  # fmt: skip
        print(
            "{:13s} {:10s} {:>4s} {:>5s} {:>2s} {:>7s} {:>7s} {:>17s} {:>7s} {:>7s} {:>6s} {:>5s}".format(
                *cells
            )
        )


def main(argv: list[str] | None = None) -> None:
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--lams", type=float, nargs="+", default=[0.1, 1.0, 10.0])
    p.add_argument("--layers", nargs="+", default=["3", "auto"], help="ints or 'auto'")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--limit-train", type=int, default=1000)
    p.add_argument("--limit-val", type=int, default=500)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--data-seed", type=int, default=0, help="seed of the acceptability proxy")
    p.add_argument("--corruption", choices=("shuffle", "swap"), default="shuffle", help="proxy rule")
    p.add_argument(
        "--strength", type=int, default=3, help="proxy rule: span length (shuffle) or swaps (swap)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--overwrite", action="store_true", help="recompute cells that exist")
    p.add_argument("--summarize", action="store_true", help="only write the JSON from the cells")
    p.add_argument(
        "--skip-before", action="store_true", help="with --cells: leave the 'before' cells to another run"
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 96 sentences, 1 epoch, 1 seed, tmp folder"
    )
    p.add_argument("--out", type=Path, default=RESULTS / "tree_probe_loss.json")
    p.add_argument(
        "--cells", nargs="+", default=None, metavar="TASK:ARM:LAM:LAYER:SEED",
        help="run exactly these cells, in this order (e.g. acceptability:off:-:-:0 sentiment:pretrained:10:3:1)",
    )  # fmt: skip
    args = p.parse_args(argv)
    global CELLS
    if args.quick:
        args.seeds, args.limit_train, args.limit_val, args.epochs = [0], 96, 64, 1
        args.lams, args.layers = [1.0], ["auto"]
        CELLS = Path(tempfile.mkdtemp(prefix="tree_probe_quick_"))
        args.out = CELLS / "summary.json"
    for layer in args.layers:
        if layer != "auto" and not layer.lstrip("-").isdigit():
            p.error(f"--layers takes ints or 'auto'; got {layer!r}")
    torch.set_num_threads(args.threads)
    if not args.summarize:
        with tempfile.TemporaryDirectory(prefix="tree_probe_data_") as data_dir:
            if args.cells:
                for spec in args.cells:
                    task, arm, lam, layer, seed = spec.split(":")
                    if not args.skip_before:
                        run_before(task, args, Path(data_dir))
                    if arm == "off":
                        run_cell(task, arm, None, None, int(seed), args, Path(data_dir))
                    else:
                        run_cell(task, arm, float(lam), layer, int(seed), args, Path(data_dir))
                args.seeds = []
            else:
                for task in args.tasks:
                    run_before(task, args, Path(data_dir))
            for seed in args.seeds:
                for task in args.tasks:
                    for arm in args.arms:
                        if arm == "off":
                            run_cell(task, arm, None, None, seed, args, Path(data_dir))
                            continue
                        for lam in args.lams:
                            for layer in args.layers:
                                run_cell(task, arm, lam, layer, seed, args, Path(data_dir))
    result = summarize(args)
    print_table(result)
    _write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
