"""Tree probe lens: the monitor's cost on the quickstart fit, and the metric's seed stability.

(``benchmarks/lenses.py`` did not exist when this was written; this is its ``tree_probe``
section as a script of its own. ``tree_probe_section(args)`` can be called from there.)

Stages:

* ``stability``: the embedded MiniLM (pre-trained, no fine-tuning) encodes the validation split
  of the embedded data once; the monitor's default sample (``max_sentences`` sentences, seed
  0) is drawn; for every layer and rule (ssp, essp) the probe is fitted with the monitor's
  default budget for ``--seeds`` probe seeds (and sample seeds), timing each fit. Reported: mean
  and standard deviation over seeds per layer, and the spread between layers for comparison.
* ``overhead``: the quickstart fit (configs/quickstart.yaml's data and model settings, no
  pruning) with and without :class:`TreeProbeMonitor` at default settings; reports the
  monitor's own time (its hooks, timed from outside: collection + probe fits) as a share of the fit.

Usage (quiet machine)::

    .venv/bin/python benchmarks/lenses_tree_probe.py            # both stages, full size
    .venv/bin/python benchmarks/lenses_tree_probe.py --quick    # a smoke run (seconds to a minute)

Writes ``benchmarks/results/lenses_tree_probe.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _val_sample(max_sentences: int, seed: int, limit_val: int | None) -> tuple[dict[int, Any], float]:
    """The monitor's sentence sample of the embedded validation split through the pre-trained MiniLM."""
    from lightning_topo.metrics import TreeProbeScore
    from lightning_topo.models import SequenceClassifier, TextClassificationDataModule

    dm = TextClassificationDataModule(
        max_length=64, eval_batch_size=128, limit={"val": limit_val} if limit_val else None
    )
    dm.setup("fit")
    model = SequenceClassifier(num_labels=dm.num_classes).eval()
    lens = TreeProbeScore(layers="all", max_samples=max_sentences, seed=seed, tokenizer=dm.tokenizer)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in dm.val_dataloader():
            enc = model.encode(batch)
            lens.update(enc.hidden_states, enc.attention_mask, None, batch["input_ids"], batch.get("token_type_ids"))
    return lens.word_sample(), time.perf_counter() - start


def stability(args: argparse.Namespace) -> dict[str, Any]:
    from lightning_topo.scores.tree_probe import MONITOR_BUDGET, fit_probe

    words, encode_s = _val_sample(args.max_sentences, 0, args.limit_val)
    rows: dict[str, Any] = {}
    fit_times, fit_cpu = [], []
    for kind in ("ssp", "essp"):
        for layer, (hidden, mask) in words.items():
            values = []
            for seed in range(args.seeds):
                start, cpu = time.perf_counter(), time.process_time()
                values.append(fit_probe(hidden, mask, kind, budget=MONITOR_BUDGET, seed=seed).val_loss)
                fit_times.append(time.perf_counter() - start)
                fit_cpu.append(time.process_time() - cpu)
            rows[f"{kind}/layer_{layer}"] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values,
            }
            print(
                f"{kind} layer {layer}: {statistics.fmean(values):.4f} +- {rows[f'{kind}/layer_{layer}']['std']:.4f}"
            )
    for kind in ("ssp", "essp"):
        means = [v["mean"] for k, v in rows.items() if k.startswith(kind)]
        rows[f"{kind}/between_layer_std"] = statistics.stdev(means)
    return {
        "budget": dataclasses.asdict(MONITOR_BUDGET),
        "max_sentences": args.max_sentences,
        "sentences": int(next(iter(words.values()))[0].shape[0]),
        "seeds": args.seeds,
        "encode_s": encode_s,
        "fit_s_mean": statistics.fmean(fit_times),
        "fit_cpu_s_mean": statistics.fmean(fit_cpu),  # process CPU time: less sensitive to a busy machine
        "fits_per_measurement": 2 * len(words),
        "per_measurement_fit_s": statistics.fmean(fit_times) * 2 * len(words),
        "metric": rows,
    }


HOOKS = ("on_validation_epoch_start", "on_validation_batch_end", "on_validation_epoch_end", "on_validation_end",
         "on_train_epoch_end", "on_fit_end", "setup")  # fmt: skip


def _time_hooks(callback: object) -> dict[str, float]:
    """Wrap the monitor's hooks with wall-clock timers (nothing in the class is changed)."""
    totals = dict.fromkeys(HOOKS, 0.0)
    for name in HOOKS:
        original = getattr(callback, name)

        def timed(*a, _original=original, _name=name, **kw):
            start = time.perf_counter()
            try:
                return _original(*a, **kw)
            finally:
                totals[_name] += time.perf_counter() - start

        setattr(callback, name, timed)
    return totals


def _fit_once(with_monitor: bool, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    import lightning.pytorch as pl

    from lightning_topo.callbacks.tree_probe_monitor import TreeProbeMonitor
    from lightning_topo.models import SequenceClassifier, TextClassificationDataModule

    torch.set_num_threads(args.threads)
    pl.seed_everything(seed)
    dm = TextClassificationDataModule(
        max_length=64,
        batch_size=32,
        eval_batch_size=128,
        limit={"train": args.limit_train, **({"val": args.limit_val} if args.limit_val else {})},
        seed=42,
    )
    model = SequenceClassifier(learning_rate=1e-4, weight_decay=0.01, warmup_ratio=0.1)
    monitor = TreeProbeMonitor(plots=False) if with_monitor else None
    totals = _time_hooks(monitor) if monitor else {}
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[monitor] if monitor else [],
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    wall = time.perf_counter() - start
    own = sum(totals.values())
    return {
        "with_monitor": with_monitor,
        "wall_s": wall,
        "monitor_own_s": own,
        "val_acc": float(trainer.callback_metrics["val/acc"]),
    }


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for rep in range(args.reps):
        for with_monitor in (False, True):  # interleaved
            runs.append(_fit_once(with_monitor, args, seed=42) | {"rep": rep})
            print(runs[-1])
    plain = [r["wall_s"] for r in runs if not r["with_monitor"]]
    own = [r["monitor_own_s"] for r in runs if r["with_monitor"]]
    share = statistics.fmean(own) / statistics.fmean(plain)
    print(f"monitor's own time: {statistics.fmean(own):.1f} s = {100 * share:.1f}% of the fit (target <= 5%)")
    return {"runs": runs, "monitor_own_share": share, "target_share": 0.05, "meets_target": share <= 0.05}


def tree_probe_section(args: argparse.Namespace) -> dict[str, Any]:
    """The ``tree_probe`` section of benchmarks/lenses.py."""
    out: dict[str, Any] = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "quick": args.quick,
    }
    if args.stage in ("all", "stability"):
        out["stability"] = stability(args)
    if args.stage in ("all", "overhead"):
        out["overhead"] = overhead(args)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--stage", choices=("all", "stability", "overhead"), default="all")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--max-sentences", type=int, default=256)
    p.add_argument("--limit-val", type=int, default=None)
    p.add_argument("--limit-train", type=int, default=2500)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lenses_tree_probe.json")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.limit_val, args.max_sentences = 2, 200, 64
        args.limit_train, args.epochs, args.reps = 200, 1, 1
    return args


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"tree_probe": tree_probe_section(args)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
