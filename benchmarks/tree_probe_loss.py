"""Does the tree-probe auxiliary loss change fine-tuning accuracy? (Li, Yin, Lin 2023, lambda = 10)

The quickstart setting (embedded all-MiniLM-L6-v2, 2,500 embedded Rotten Tomatoes training
sentences, full validation split of 1,057, max_length 64, 3 epochs, lr 1e-4, no pruning, no
monitor) is fine-tuned with and without :class:`TreeProbeRegularization` (ssp probe at
``--layer``, weight ``--weight``) for each seed; both arms of a seed share the seed, so the data
order and the head's initialisation are the same. Reported per arm: the final and the best
``val/acc`` per seed, their mean and standard deviation, and the paired differences.

Usage (quiet machine; about 6 fits of the quickstart's length)::

    .venv/bin/python benchmarks/tree_probe_loss.py                 # 3 seeds x 2 arms
    .venv/bin/python benchmarks/tree_probe_loss.py --quick         # smoke run: 200 sentences, 1 epoch, 1 seed

Writes ``benchmarks/results/tree_probe_loss.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class AccHistory(Callback):
    """Records ``val/acc`` after every validation of the fit."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking and "val/acc" in trainer.callback_metrics:
            self.values.append(float(trainer.callback_metrics["val/acc"]))


def run_arm(seed: int, regularised: bool, args: argparse.Namespace) -> dict[str, Any]:
    import lightning.pytorch as pl

    from lightning_topo.callbacks.tree_probe_loss import TreeProbeRegularization
    from lightning_topo.models import SequenceClassifier, TextClassificationDataModule

    pl.seed_everything(seed)
    dm = TextClassificationDataModule(
        max_length=64, batch_size=32, eval_batch_size=128, limit={"train": args.limit_train}, seed=42
    )
    model = SequenceClassifier(learning_rate=1e-4, weight_decay=0.01, warmup_ratio=0.1)
    history = AccHistory()
    callbacks = [history]
    if regularised:
        callbacks.append(TreeProbeRegularization(layer=args.layer, weight=args.weight, targets=args.targets))
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    aux = trainer.callback_metrics.get("train/aux/tree_probe_epoch")
    return {
        "seed": seed,
        "regularised": regularised,
        "val_acc_per_epoch": history.values,
        "final_val_acc": history.values[-1],
        "best_val_acc": max(history.values),
        "last_probe_loss": None if aux is None else float(aux),
        "wall_s": time.perf_counter() - start,
    }


def _summary(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm, flag in (("plain", False), ("tree_probe", True)):
        values = [r[key] for r in runs if r["regularised"] is flag]
        out[arm] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values,
        }
    by_seed = {}
    for r in runs:
        by_seed.setdefault(r["seed"], {})[r["regularised"]] = r[key]
    diffs = [v[True] - v[False] for v in by_seed.values() if len(v) == 2]
    out["paired_diff"] = {
        "mean": statistics.fmean(diffs) if diffs else None,
        "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
        "values": diffs,
    }
    return out


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 200 sentences, 1 epoch, 1 seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--layer", type=int, default=3)
    p.add_argument("--weight", type=float, default=10.0)
    p.add_argument("--targets", choices=("ssp", "essp"), default="ssp")
    p.add_argument("--limit-train", type=int, default=2500)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tree_probe_loss.json")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.limit_train, args.epochs = [0], 200, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = []
    for seed in args.seeds:
        for regularised in (False, True):
            runs.append(run_arm(seed, regularised, args))
            print({k: v for k, v in runs[-1].items() if k != "val_acc_per_epoch"}, flush=True)
    result = {
        "setting": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "runs": runs,
        "final_val_acc": _summary(runs, "final_val_acc"),
        "best_val_acc": _summary(runs, "best_val_acc"),
    }
    for key in ("final_val_acc", "best_val_acc"):
        s = result[key]
        print(
            f"{key}: plain {s['plain']['mean']:.4f} +- {s['plain']['std']:.4f} | tree probe "
            f"{s['tree_probe']['mean']:.4f} +- {s['tree_probe']['std']:.4f} | paired diff {s['paired_diff']['mean']:+.4f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
