"""Benchmark: CPU latency of dense vs pruned vs pruned+int8, in PyTorch and in ONNX Runtime (issue 24 item 6).

Protocol (one run, CPU, ``--threads`` for torch and ONNX Runtime alike, default 2):

* Models. ``--dense HF_FOLDER --pruned FOLDER`` (a fine-tuned model and a compressed checkpoint
  pruned from it), or ``--build`` (small compute): the embedded all-MiniLM-L6-v2 with a fresh
  head fine-tuned 1 epoch on ``--train-sentences`` seeded train sentences, pruned with
  ``prune_model(method="topological", ratio=--ratio)`` (256 calibration sentences) and recovered
  1 epoch on the same sentences (``benchmarks/pruning.py``'s training loop: AdamW lr 5e-5,
  batch 32, max length 64). Both are written under ``--work`` and reused.
* Six variants: dense fp32, pruned fp32, pruned int8, each in PyTorch (int8:
  :func:`lightning_topo.pruning.quantize_int8`) and in ONNX Runtime (graphs from
  :func:`lightning_topo.pruning.export_onnx`; int8: ONNX Runtime's dynamic quantisation).
* Equality: the largest ``|ONNX Runtime - PyTorch|`` logit of the fp32 graphs over the whole
  validation split (goal <= 1e-4).
* Accuracy on the validation split (1,057 sentences; ``--val-limit`` for smoke runs) and speed with
  :func:`lightning_topo.pruning.report.measure`: all six alternated call by call, medians,
  batch 32 x 64 (throughput) and batch 1 x 64 (latency), random token ids.

Writes ``benchmarks/results/onnx_latency.json`` and prints a table; the goal is pruned+int8 at
>= 5x dense fp32 PyTorch with <= 1 point accuracy loss. Say whether the machine was quiet
(``--machine-quiet``; the load average is recorded).

    python benchmarks/onnx_latency.py --build --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import pruning as bench  # noqa: E402  (benchmarks/pruning.py: data, training loop, evaluation)

RESULTS = ROOT / "benchmarks" / "results" / "onnx_latency.json"


class OrtModel(nn.Module):
    """An ONNX Runtime graph behind the keyword interface :mod:`lightning_topo.pruning.report` times."""

    def __init__(self, session, config, file: Path) -> None:
        super().__init__()
        self.session, self.config, self.file = session, config, file

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.session(input_ids, attention_mask)


def build(args) -> tuple[Path, Path]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lightning_topo.models.embedded import embedded_model_path
    from lightning_topo.pruning import prune_model, save_compressed

    work = Path(args.work)
    dense_dir, pruned_dir = work / "dense", work / f"pruned_{args.ratio}"
    tok = AutoTokenizer.from_pretrained(embedded_model_path())
    texts, labels = bench.subset(*bench.load_split("train"), args.train_sentences, seed=0)
    if args.no_train:
        dense_dir, pruned_dir = work / "dense_untrained", work / f"pruned_{args.ratio}_untrained"
    if not (dense_dir / "config.json").is_file():
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(
            embedded_model_path(), num_labels=2, trust_remote_code=False
        )
        if not args.no_train:
            print(f"fine-tuning the dense model on {len(texts)} sentences", flush=True)
            bench.train_epochs(model, tok, texts, labels, epochs=1, seed=0)
        model.save_pretrained(dense_dir)
        tok.save_pretrained(dense_dir)
    if not (pruned_dir / "config.json").is_file():
        model = AutoModelForSequenceClassification.from_pretrained(dense_dir, trust_remote_code=False)
        ctexts, clabels = bench.subset(*bench.load_split("train"), 256, seed=1000)
        calib = [{k: v for k, v in b.items() if k != "labels"} for b in bench.batches(tok, ctexts, clabels)]
        prune_model(model, calib, method="topological", ratio=args.ratio)
        if not args.no_train:
            print(f"recovering the pruned model on {len(texts)} sentences", flush=True)
            bench.train_epochs(model, tok, texts, labels, epochs=1, seed=0)
        save_compressed(model, pruned_dir, tokenizer=tok)
    return dense_dir, pruned_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dense", type=Path, help="Hugging Face folder of the dense fine-tuned model")
    p.add_argument("--pruned", type=Path, help="compressed checkpoint pruned from --dense")
    p.add_argument("--build", action="store_true", help="build both from the embedded MiniLM (small compute)")
    p.add_argument("--work", default=str(ROOT / "outputs" / "onnx_bench"))
    p.add_argument("--train-sentences", type=int, default=1500)
    p.add_argument("--ratio", type=float, default=0.6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--latency-reps", type=int, default=30)
    p.add_argument("--val-limit", type=int, default=None)
    p.add_argument("--machine-quiet", action="store_true")
    p.add_argument(
        "--no-train",
        action="store_true",
        help="with --build: speed only (no fine-tuning or recovery; accuracy is not measured, the "
        "ONNX-vs-PyTorch logit check still runs on the validation sentences)",
    )
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.build == bool(args.dense or args.pruned) or (not args.build and not (args.dense and args.pruned)):
        p.error("pass --build, or both --dense and --pruned")
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lightning_topo.pruning import export_onnx, load_compressed, onnx_session, quantize_int8
    from lightning_topo.pruning.report import format_table, measure

    dense_dir, pruned_dir = build(args) if args.build else (args.dense, args.pruned)
    tok = AutoTokenizer.from_pretrained(dense_dir)
    dense = AutoModelForSequenceClassification.from_pretrained(dense_dir, trust_remote_code=False).eval()
    pruned = load_compressed(pruned_dir).eval()
    onnx_dir = Path(args.work) / "onnx"
    files = {
        "dense": export_onnx(dense, onnx_dir / "dense.onnx", overwrite=True),
        "pruned": export_onnx(pruned_dir, onnx_dir / "pruned.onnx", overwrite=True),
        "pruned int8": export_onnx(
            pruned_dir, onnx_dir / "pruned_int8.onnx", overwrite=True, quantize="int8"
        ),
    }
    sessions = {k: onnx_session(f, threads=args.threads) for k, f in files.items()}
    texts, labels = bench.load_split("val")
    if args.val_limit:
        texts, labels = bench.subset(texts, labels, args.val_limit, seed=0)
    val = list(bench.batches(tok, texts, labels, batch_size=64))

    equality = {}
    with torch.no_grad():
        for name, model in (("dense", dense), ("pruned", pruned)):
            diff = 0.0
            for b in val:
                want = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                got = sessions[name](b["input_ids"], b["attention_mask"])
                diff = max(diff, float((got - want).abs().max()))
            equality[name] = diff
            print(
                f"max |ONNX Runtime - PyTorch| logit on the validation split, {name} fp32: {diff:.2e}",
                flush=True,
            )

    models = {
        "dense fp32 (PyTorch)": dense,
        "pruned fp32 (PyTorch)": pruned,
        "pruned int8 (PyTorch)": quantize_int8(copy.deepcopy(pruned)),
        "dense fp32 (ONNX Runtime)": OrtModel(sessions["dense"], dense.config, files["dense"]),
        "pruned fp32 (ONNX Runtime)": OrtModel(sessions["pruned"], pruned.config, files["pruned"]),
        "pruned int8 (ONNX Runtime)": OrtModel(sessions["pruned int8"], pruned.config, files["pruned int8"]),
    }
    report = measure(
        models, None if args.no_train else val, reps=args.reps, latency_reps=args.latency_reps, threads=args.threads
    )
    for name, model in models.items():
        if isinstance(model, OrtModel):
            report["rows"][name]["state_dict_mb"] = model.file.stat().st_size / 2**20  # the .onnx file
    print(format_table(report))
    ok = report["rows"]["pruned int8 (ONNX Runtime)"]
    res = {
        "what": "CPU latency and accuracy: dense vs pruned vs pruned+int8, PyTorch and ONNX Runtime (issue 24 item 6)",
        "dense": str(dense_dir),
        "pruned": str(pruned_dir),
        "built": bool(args.build),
        "trained": not args.no_train,
        "build_settings": {"train_sentences": args.train_sentences, "ratio": args.ratio}
        if args.build
        else None,
        "validation_sentences": len(texts),
        "onnx_vs_pytorch_max_abs_logit_diff": equality,
        "report": report,
        "machine": {
            "quiet": args.machine_quiet,
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
        },
        "goal_pruned_int8_speedup_vs_dense_fp32_pytorch": 5.0,
        "measured": {
            name: {
                "speedup": r["speedup"],
                "latency_speedup": r["latency_speedup"],
                "accuracy_delta_points": r["accuracy_delta_points"],
            }
            for name, r in report["rows"].items()
        },
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=2, sort_keys=True, default=str))
    tmp.replace(args.output)
    delta = ok["accuracy_delta_points"]
    print(
        f"pruned int8 (ONNX Runtime): {ok['speedup']:.2f}x throughput, {ok['latency_speedup']:.2f}x latency"
        + ("" if delta is None else f", {delta:+.2f} points")
        + " vs dense fp32 PyTorch"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
