"""Benchmark: dynamic int8 on top of structured pruning (issue 17, item 4).

Protocol (CPU, ``torch.set_num_threads(--threads)``, default 2):

* Models: the dense fine-tuned model (``--dense``, a Hugging Face folder) and one or more compressed
  checkpoints pruned from it (``--pruned``, folders written by ``save_compressed``, e.g. one per
  seed), each in fp32 and with :func:`lightning_topo.pruning.quantize_int8` (PyTorch dynamic int8
  quantisation of every ``nn.Linear``; the folders on disk stay float).
* Accuracy on the validation split of the embedded data (the ``split == "val"`` rows of the
  embedded rotten-tomatoes file, 1,057 sentences, as ``benchmarks/pruning.py``'s ``load_split``),
  tokenised with the dense folder's tokenizer, max length 64, batches of 64; ``--val-limit N``
  keeps a seeded class-stratified subset of N sentences (for smoke runs only).
* Speed with :func:`lightning_topo.pruning.report.measure`: every model timed in one loop, the
  models alternated call by call (robust to load from other processes); throughput at batch 32 x
  length 64 (median of ``--reps`` calls, sequences/s) and latency at batch 1 x length 64 (median
  of ``--latency-reps`` calls, ms); random token ids, full attention mask.
* Summary: over the pruned folders, mean +- sd (sample standard deviation) of accuracy, its change
  against dense fp32 (points), and speed-ups against dense fp32.

Writes ``benchmarks/results/int8.json`` (atomically; ``--overwrite`` to replace) and prints a table.
Run it on a quiet machine:

    python benchmarks/int8.py --dense outputs/pruning_bench/base \\
        --pruned outputs/pruning_bench/pruned/topological_0.6_s0 ... --threads 2
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "int8.json"
MAX_LEN = 64


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dense", required=True, type=Path, help="Hugging Face folder of the dense model")
    p.add_argument("--pruned", required=True, nargs="+", type=Path, help="compressed checkpoint folder(s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--reps", type=int, default=30, help="timed calls per model at batch 32 (median)")
    p.add_argument("--latency-reps", type=int, default=100, help="timed calls per model at batch 1 (median)")
    p.add_argument(
        "--val-limit", type=int, default=None, help="N validation sentences, stratified (smoke runs)"
    )
    p.add_argument("--output", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad input before any model is loaded (SystemExit with one line naming the option)."""
    for opt, value, low in (("--threads", args.threads, 1), ("--reps", args.reps, 1)):
        if value < low:
            raise SystemExit(f"int8.py: error: {opt} must be >= {low}; got {value}")
    if args.latency_reps < 1 or (args.val_limit is not None and args.val_limit < 1):
        raise SystemExit("int8.py: error: --latency-reps and --val-limit must be >= 1")
    for opt, folder in [("--dense", args.dense), *(("--pruned", f) for f in args.pruned)]:
        if not (folder / "config.json").is_file():
            raise SystemExit(f"int8.py: error: {opt} {folder} is not a model folder (no config.json)")
    if len(set(map(Path.resolve, args.pruned))) != len(args.pruned):
        raise SystemExit("int8.py: error: --pruned lists the same folder twice")
    if args.output.exists() and not args.overwrite:
        raise SystemExit(f"int8.py: error: {args.output} exists; pass --overwrite to replace it")
    if not args.output.parent.is_dir():
        raise SystemExit(f"int8.py: error: the folder of --output {args.output} does not exist")


def load_val(limit: int | None) -> tuple[list[str], list[int]]:
    """Texts and labels of the embedded data's validation split (a seeded, class-stratified subset of
    ``limit`` rows if given)."""
    from lightning_topo.data import rotten_tomatoes_path

    texts, labels = [], []
    with gzip.open(rotten_tomatoes_path(), "rt", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            if row["split"] == "val":
                texts.append(row["text"])
                labels.append(int(row["label"]))
    if limit is None or limit >= len(texts):
        return texts, labels
    from lightning_topo.data import stratified_subset

    keep = sorted(stratified_subset(labels, limit, seed=0))
    return [texts[i] for i in keep], [labels[i] for i in keep]


def val_batches(tokenizer, texts, labels, batch_size: int = 64) -> list[dict]:
    out = []
    for s in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[s : s + batch_size], padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt"
        )
        out.append({**enc, "labels": torch.tensor(labels[s : s + batch_size])})
    return out


def load_models(args: argparse.Namespace) -> tuple[dict, dict, object]:
    """``(models, info, tokenizer)``: name -> model for dense/pruned x fp32/int8, per-folder facts."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lightning_topo.pruning import count_encoder_parameters, layer_widths, load_compressed, quantize_int8

    tok = AutoTokenizer.from_pretrained(args.dense, local_files_only=True)
    dense = AutoModelForSequenceClassification.from_pretrained(args.dense, local_files_only=True).eval()
    models = {"dense fp32": dense, "dense int8": quantize_int8(dense)}
    info = {"dense": {"folder": str(args.dense), "encoder_parameters": count_encoder_parameters(dense)}}
    for i, folder in enumerate(args.pruned):
        pruned = load_compressed(folder).eval()
        if pruned.config.vocab_size != dense.config.vocab_size:
            raise SystemExit(f"int8.py: error: --pruned {folder} has another vocabulary than --dense")
        models[f"pruned[{i}] fp32"] = pruned
        models[f"pruned[{i}] int8"] = quantize_int8(pruned)
        info[f"pruned[{i}]"] = {
            "folder": str(folder),
            "encoder_parameters": count_encoder_parameters(pruned),
            "encoder_ratio": count_encoder_parameters(pruned) / info["dense"]["encoder_parameters"],
            "widths": layer_widths(pruned),
        }
    return models, info, tok


def _mean_sd(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
        "values": values,
    }


def summarise(rows: dict, n_pruned: int) -> dict:
    """Per variant: mean +- sd over the pruned folders (the dense rows have n = 1)."""
    keys = (
        "accuracy",
        "accuracy_delta_points",
        "throughput_seq_s",
        "speedup",
        "latency_ms",
        "latency_speedup",
    )
    out = {}
    for variant in ("dense fp32", "dense int8", "pruned fp32", "pruned int8"):
        kind, precision = variant.split()
        names = [variant] if kind == "dense" else [f"pruned[{i}] {precision}" for i in range(n_pruned)]
        out[variant] = {k: _mean_sd([rows[n][k] for n in names]) for k in keys}
    return out


def _pm(stat: dict, spec: str) -> str:
    sd = stat["sd"]
    return format(stat["mean"], spec) + ("" if sd is None else " +- " + format(sd, spec.lstrip("+")))


def print_summary(summary: dict, settings: dict) -> None:
    head = f"{'model':<12s} {'accuracy':>18s} {'delta (points)':>18s} {'seq/s@32x64':>12s} {'speed-up':>16s} {'ms@1x64':>8s}"
    print(head)
    print("-" * len(head))
    for variant, s in summary.items():
        print(
            f"{variant:<12s} {_pm(s['accuracy'], '.4f'):>18s} {_pm(s['accuracy_delta_points'], '+.2f'):>18s} "
            f"{s['throughput_seq_s']['mean']:12.1f} {_pm(s['speedup'], '.2f'):>15s}x {s['latency_ms']['mean']:8.2f}"
        )
    n = summary["pruned fp32"]["accuracy"]["n"]
    print(
        f"(pruned rows: mean +- sd over {n} folder(s); {settings['threads']} threads; medians of "
        f"{settings['reps']} / {settings['latency_reps']} calls; {settings['val_examples']} val sentences)"
    )


def write_json(path: Path, data: dict) -> None:
    staged = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staged.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(staged, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    check_args(args)
    from lightning_topo.pruning.report import format_table, measure

    torch.manual_seed(0)
    models, info, tok = load_models(args)
    texts, labels = load_val(args.val_limit)
    batches = val_batches(tok, texts, labels)
    report = measure(models, batches, reps=args.reps, latency_reps=args.latency_reps, threads=args.threads)
    report["settings"].update(val_examples=len(texts), val_limit=args.val_limit, argv=sys.argv[1:])
    print(format_table(report), end="\n\n")
    summary = summarise(report["rows"], len(args.pruned))
    print_summary(summary, report["settings"])
    write_json(
        args.output,
        {"summary": summary, "rows": report["rows"], "models": info, "settings": report["settings"]},
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
