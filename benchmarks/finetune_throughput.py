#!/usr/bin/env python
"""Fine-tuning throughput of the embedded all-MiniLM-L6-v2 on CPU.

Measures samples/s of
  * ``train``: forward + backward + AdamW step of :class:`SequenceClassifier` (train mode),
  * ``eval``: forward under ``torch.inference_mode`` (eval mode),
at batch 32 and a fixed length of 64 tokens (real embedded sentences padded/truncated to 64),
plus the same two with the DataModule's dynamic padding and length grouping (``max_length=64``),
which is what ``lightning-topo fit`` actually runs.

Results go to ``benchmarks/results/finetune.json`` and are printed as a table. The load average
before and after is recorded: on a shared machine, other processes make the numbers noisy.

    .venv/bin/python benchmarks/finetune_throughput.py [--threads 1 2] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from lightning_topo.models import SequenceClassifier, TextClassificationDataModule

OUT = Path(__file__).resolve().parent / "results" / "finetune.json"


def _time_steps(fn, batches, warmup: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (process) seconds of each timed batch."""
    for b in batches[:warmup]:
        fn(b)
    wall, cpu = [], []
    for b in batches[warmup:]:
        t, c = time.perf_counter(), time.process_time()
        fn(b)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[2],
        help="torch thread counts to measure, e.g. --threads 1 2",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    load_before = os.getloadavg()

    model = SequenceClassifier(num_labels=2)
    n_batches = args.warmup + args.steps
    dm = TextClassificationDataModule(
        max_length=args.length,
        batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        limit={"train": args.batch_size * n_batches},
    )
    dm.setup("fit")
    texts = dm.split_texts("train")
    labels = torch.tensor(dm.split_labels("train"))
    tok = dm.tokenizer
    fixed = []
    for i in range(n_batches):
        sl = slice(i * args.batch_size, (i + 1) * args.batch_size)
        enc = tok(
            texts[sl], padding="max_length", truncation=True, max_length=args.length, return_tensors="pt"
        )
        fixed.append({**enc, "labels": labels[sl]})
    dynamic = list(dm.train_dataloader())[:n_batches]

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def train_step(batch):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(batch), batch["labels"])
        loss.backward()
        optimizer.step()

    def eval_step(batch):
        model.eval()
        with torch.inference_mode():
            model(batch)

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, batches in (("fixed length", fixed), ("dynamic + grouped", dynamic)):
            tokens = statistics.mean(b["input_ids"].shape[1] for b in batches[args.warmup :])
            for mode, fn in (("train", train_step), ("eval", eval_step)):
                times, cpu = _time_steps(fn, batches, args.warmup)
                med = statistics.median(times)
                rows.append(
                    {
                        "threads": threads,
                        "padding": name,
                        "mode": mode,
                        "batch_size": args.batch_size,
                        "mean_seq_len": round(tokens, 1),
                        "median_step_s": round(med, 4),
                        "samples_per_s": round(args.batch_size / med, 1),
                        "best_samples_per_s": round(args.batch_size / min(times), 1),
                        "median_cpu_s": round(statistics.median(cpu), 4),
                        "steps": len(times),
                    }
                )
    result = {
        "benchmark": "finetune_throughput",
        "model": "embedded all-MiniLM-L6-v2 (BertForSequenceClassification, 22.7M params)",
        "threads": args.threads,
        "length": args.length,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "note": (
            "shared machine: other jobs were running; a load average above the thread count makes the "
            "wall-clock numbers pessimistic. median_cpu_s is the process CPU time per batch (all threads); "
            "with 1 thread it is the least load-sensitive measure of the work per batch."
        ),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)

    print(
        f"\nembedded MiniLM, batch {args.batch_size}, threads {args.threads}, load avg "
        f"{result['loadavg_before'][0]} -> {result['loadavg_after'][0]}"
    )
    print(
        f"{'thr':<4}{'padding':<20}{'mode':<7}{'seq':>6}{'step s':>9}{'cpu s':>8}{'samples/s':>11}{'best':>8}"
    )
    for r in rows:
        print(
            f"{r['threads']:<4}{r['padding']:<20}{r['mode']:<7}{r['mean_seq_len']:>6}{r['median_step_s']:>9.3f}"
            f"{r['median_cpu_s']:>8.3f}{r['samples_per_s']:>11.1f}{r['best_samples_per_s']:>8.1f}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
