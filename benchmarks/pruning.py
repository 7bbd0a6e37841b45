"""Benchmark: topology-guided structured pruning of the embedded MiniLM on the embedded data.

Protocol (all on CPU, ``torch.set_num_threads(--threads)``, seed 0):

1. **Base model** (cached in ``outputs/pruning_bench/base``): the embedded all-MiniLM-L6-v2 with a
   fresh linear classifier (``BertForSequenceClassification``), fine-tuned for ``--base-epochs``
   epochs on the embedded train split (8,455 sentences, max length 64, batch 32, AdamW lr 5e-5,
   linear decay, no warmup).
2. **Calibration**: ``--calib-sentences`` train sentences (seeded), at most ``--max-positions``
   token positions.
3. For every encoder-parameter ratio and method: prune a fresh copy of the base model with
   :func:`lightning_topo.pruning.prune_model` (FFN units and heads, uniform per-layer allocation),
   evaluate on the validation split (1,057 sentences), recover for one epoch on the train split
   (all 8,455 sentences by default, or a seeded ``--recover-sentences`` subset; same optimiser),
   evaluate again,
   save with :func:`save_compressed`, reload with ``AutoModelForSequenceClassification`` and
   check logits, and time CPU inference (batch 32, length 64, ``--timing-reps`` repetitions,
   median) against the unpruned base model timed in the same run.
4. Control (``--stage control``): the unpruned base trained for the same one extra epoch, so the
   table separates what pruning costs from what the extra epoch gives.
5. Optional external reference: Torch-Pruning 1.6.1 ``MetaPruner`` with
   ``MagnitudeImportance(p=2)``, ``prune_num_heads=True``, hidden size kept, at the same ratios.

Writes ``benchmarks/results/pruning.json`` (merged with what is already there) and prints a table.

    python benchmarks/pruning.py --stage base          # fine-tune and cache the base model
    python benchmarks/pruning.py --stage grid          # the pruning grid (resumes per cell)
    python benchmarks/pruning.py --stage control       # unpruned + the same extra epoch
    python benchmarks/pruning.py --stage torch-pruning # external reference
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "pruning_bench"
RESULTS = ROOT / "benchmarks" / "results" / "pruning.json"
MAX_LEN = 64
BATCH = 32


# ----------------------------------------------------------------------------- data


def load_split(split: str) -> tuple[list[str], list[int]]:
    from lightning_topo.data import rotten_tomatoes_path

    texts, labels = [], []
    with gzip.open(rotten_tomatoes_path(), "rt", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            if row["split"] == split:
                texts.append(row["text"])
                labels.append(int(row["label"]))
    return texts, labels


def batches(tokenizer, texts, labels, *, shuffle=False, seed=0, batch_size=BATCH):
    idx = list(range(len(texts)))
    if shuffle:
        random.Random(seed).shuffle(idx)
    for s in range(0, len(idx), batch_size):
        part = idx[s : s + batch_size]
        enc = tokenizer(
            [texts[i] for i in part], padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt"
        )
        batch = dict(enc)
        batch["labels"] = torch.tensor([labels[i] for i in part])
        yield batch


def subset(texts, labels, n, seed):
    if n is None or n >= len(texts):
        return list(texts), list(labels)
    from lightning_topo.data import stratified_subset

    idx = stratified_subset(labels, n, seed=seed)
    return [texts[i] for i in idx], [labels[i] for i in idx]


# ----------------------------------------------------------------------------- train / eval


def train_epochs(model, tokenizer, texts, labels, *, epochs=1, lr=5e-5, seed=0, log_every=50):
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(texts) / BATCH)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    step = 0
    t0 = time.perf_counter()
    for ep in range(epochs):
        for batch in batches(tokenizer, texts, labels, shuffle=True, seed=seed + ep):
            out = model(**batch)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if log_every and step % log_every == 0:
                print(
                    f"  step {step}/{steps} loss {out.loss.item():.4f} ({time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
    model.eval()
    return time.perf_counter() - t0


@torch.no_grad()
def evaluate(model, tokenizer, texts, labels) -> float:
    model.eval()
    correct = 0
    for batch in batches(tokenizer, texts, labels, batch_size=64):
        y = batch.pop("labels")
        correct += int((model(**batch).logits.argmax(-1) == y).sum())
    return correct / len(texts)


@torch.no_grad()
def throughput(model, reps: int = 20, seed: int = 0) -> float:
    """Sequences per second at batch 32, length 64 (median over ``reps`` timed batches)."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 20000, (BATCH, MAX_LEN), generator=g)
    mask = torch.ones_like(ids)
    for _ in range(3):
        model(input_ids=ids, attention_mask=mask)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        times.append(time.perf_counter() - t)
    return BATCH / statistics.median(times)


@torch.no_grad()
def paired_throughput(base, model, reps: int = 15, seed: int = 0) -> tuple[float, float]:
    """Sequences/s of ``base`` and ``model`` (batch 32, length 64), timed alternately.

    Alternating the two models in one loop makes their ratio robust to load from other processes
    on a shared machine; each figure is the median over ``reps`` batches.
    """
    base.eval()
    model.eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 20000, (BATCH, MAX_LEN), generator=g)
    mask = torch.ones_like(ids)
    for m in (base, model, base, model):
        m(input_ids=ids, attention_mask=mask)
    tb, tm = [], []
    for _ in range(reps):
        for m, acc in ((base, tb), (model, tm)):
            t = time.perf_counter()
            m(input_ids=ids, attention_mask=mask)
            acc.append(time.perf_counter() - t)
    return BATCH / statistics.median(tb), BATCH / statistics.median(tm)


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).glob("*.safetensors")) / 2**20


# ----------------------------------------------------------------------------- stages


def load_base(tokenizer_only=False):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = OUT / "base"
    if not (path / "config.json").exists():
        raise SystemExit(f"no base model at {path}; run: python benchmarks/pruning.py --stage base")
    tok = AutoTokenizer.from_pretrained(path)
    if tokenizer_only:
        return tok
    return AutoModelForSequenceClassification.from_pretrained(path).eval(), tok


def stage_base(args) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lightning_topo.models.embedded import embedded_model_path

    src = embedded_model_path()
    tok = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=2)
    tr_x, tr_y = load_split("train")
    va_x, va_y = load_split("val")
    secs = train_epochs(model, tok, tr_x, tr_y, epochs=args.base_epochs, lr=5e-5, seed=0)
    acc = evaluate(model, tok, va_x, va_y)
    print(f"base: val acc {acc:.4f} after {args.base_epochs} epoch(s), {secs:.0f}s")
    tmp = OUT / "base.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "bench_meta.json").write_text(
        json.dumps({"val_acc": acc, "epochs": args.base_epochs, "train_s": secs})
    )
    shutil.rmtree(OUT / "base", ignore_errors=True)
    tmp.rename(OUT / "base")


def _results() -> dict:
    if RESULTS.exists():
        return json.loads(RESULTS.read_text())
    return {"cells": {}}


def _write_results(res: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=2, sort_keys=True))
    tmp.replace(RESULTS)


def encoder_params(model) -> int:
    from lightning_topo.pruning.structured import count_encoder_parameters

    return count_encoder_parameters(model)


def _stage_inputs(args):
    """The base model, its tokenizer and metadata, the validation split (``--val-limit``) and the
    recovery sentences (``--recover-sentences``, seed 2): what grid, control and torch-pruning share."""
    base, tok = load_base()
    base_meta = json.loads((OUT / "base" / "bench_meta.json").read_text())
    va_x, va_y = load_split("val")
    if args.val_limit:
        va_x, va_y = va_x[: args.val_limit], va_y[: args.val_limit]
    rec = subset(*load_split("train"), args.recover_sentences, seed=2)
    return base, tok, base_meta, (va_x, va_y), rec


def stage_grid(args) -> None:
    from transformers import AutoModelForSequenceClassification

    from lightning_topo.pruning import load_compressed, prune_model, save_compressed

    base, tok, base_meta, (va_x, va_y), (rec_x, rec_y) = _stage_inputs(args)
    cal_x, cal_y = subset(*load_split("train"), args.calib_sentences, seed=1)
    calib = list(batches(tok, cal_x, cal_y))
    res = _results()
    res["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
    res["protocol"] = {
        "base_epochs": base_meta["epochs"],
        "calib_sentences": args.calib_sentences,
        "max_positions": args.max_positions,
        "recover_sentences": len(rec_x),
        "recover_epochs": 1,
        "ffn_multiple": args.ffn_multiple,
        "timing_reps": args.timing_reps,
        "val_sentences": len(va_x),
        "max_len": MAX_LEN,
        "batch": BATCH,
        "allocation": "uniform per layer (same head count and FFN width in every layer), "
        f"FFN widths rounded down to a multiple of {args.ffn_multiple}",
    }
    base_tp = throughput(base, reps=args.timing_reps)
    base_params = encoder_params(base)
    res["base"] = {
        "val_acc": base_meta["val_acc"],
        "encoder_params": base_params,
        "total_params": sum(p.numel() for p in base.parameters()),
        "throughput_seq_s": base_tp,
        "checkpoint_mb": dir_mb(OUT / "base"),
    }
    _write_results(res)
    print(
        f"base: acc {base_meta['val_acc']:.4f} enc params {base_params} throughput {base_tp:.1f} seq/s",
        flush=True,
    )
    for ratio in args.ratios:
        for method in args.methods:
            key = f"{method}@{ratio}"
            if key in res["cells"] and not args.redo:
                print(f"skip {key} (done)")
                continue
            t0 = time.perf_counter()
            model = AutoModelForSequenceClassification.from_pretrained(OUT / "base").eval()
            prune_model(
                model,
                calib,
                method=method,
                ratio=ratio,
                max_positions=args.max_positions,
                ffn_multiple=args.ffn_multiple,
                seed=0,
            )
            prune_s = time.perf_counter() - t0
            acc0 = evaluate(model, tok, va_x, va_y)
            rec_s = train_epochs(model, tok, rec_x, rec_y, epochs=1, lr=args.recover_lr, seed=0, log_every=0)
            acc1 = evaluate(model, tok, va_x, va_y)
            folder = OUT / "pruned" / key.replace("@", "_")
            save_compressed(model, folder, tokenizer=tok, overwrite=True)
            reloaded = load_compressed(folder).eval()
            b = next(batches(tok, va_x[:16], va_y[:16]))
            b.pop("labels")
            with torch.no_grad():
                diff = float((reloaded(**b).logits - model(**b).logits).abs().max())
            tp_base, tp = paired_throughput(base, reloaded, reps=args.timing_reps)
            p = encoder_params(reloaded)
            cell = {
                "method": method,
                "target_ratio": ratio,
                "encoder_params": p,
                "encoder_ratio": p / base_params,
                "total_params": sum(q.numel() for q in reloaded.parameters()),
                "val_acc_before_recovery": acc0,
                "val_acc_after_recovery": acc1,
                "acc_drop_points": 100 * (base_meta["val_acc"] - acc1),
                "checkpoint_mb": dir_mb(folder),
                "throughput_seq_s": tp,
                "base_throughput_seq_s": tp_base,
                "speedup": tp / tp_base,
                "reload_max_abs_logit_diff": diff,
                "config_class": type(reloaded.config).__name__,
                "heads_per_layer": [
                    layer.attention.self.num_attention_heads for layer in reloaded.bert.encoder.layer
                ],
                "ffn_per_layer": [
                    layer.intermediate.dense.out_features for layer in reloaded.bert.encoder.layer
                ],
                "prune_s": prune_s,
                "recover_s": rec_s,
            }
            res = _results()
            res["cells"][key] = cell
            _write_results(res)
            print(
                f"{key:28s} enc {cell['encoder_ratio']:.3f} acc {acc0:.4f} -> {acc1:.4f} "
                f"speedup {cell['speedup']:.2f}x ckpt {cell['checkpoint_mb']:.1f}MB "
                f"(prune {prune_s:.0f}s, recover {rec_s:.0f}s)",
                flush=True,
            )


def stage_control(args) -> None:
    """The unpruned base trained for the same one extra epoch as the pruned models' recovery."""
    from transformers import AutoModelForSequenceClassification

    base, tok, base_meta, (va_x, va_y), (rec_x, rec_y) = _stage_inputs(args)
    key = "none@1.0"
    res = _results()
    if key in res.get("cells", {}) and not args.redo:
        print(f"skip {key} (done)")
        return
    model = AutoModelForSequenceClassification.from_pretrained(OUT / "base").eval()
    acc0 = evaluate(model, tok, va_x, va_y)
    rec_s = train_epochs(model, tok, rec_x, rec_y, epochs=1, lr=args.recover_lr, seed=0, log_every=0)
    acc1 = evaluate(model, tok, va_x, va_y)
    p = encoder_params(model)
    cell = {
        "method": "none (unpruned control)",
        "target_ratio": 1.0,
        "encoder_params": p,
        "encoder_ratio": 1.0,
        "total_params": sum(q.numel() for q in model.parameters()),
        "val_acc_before_recovery": acc0,
        "val_acc_after_recovery": acc1,
        "acc_drop_points": 100 * (base_meta["val_acc"] - acc1),
        "checkpoint_mb": dir_mb(OUT / "base"),
        "speedup": 1.0,
        "recover_s": rec_s,
        "recover_sentences": len(rec_x),
    }
    res = _results()
    res.setdefault("cells", {})[key] = cell
    _write_results(res)
    print(f"{key:28s} acc {acc0:.4f} -> {acc1:.4f} (one more epoch, {rec_s:.0f}s)", flush=True)


def _tp_prune(tp, example, fraction):
    """Torch-Pruning 1.6.1 MetaPruner, magnitude (L2), whole heads + FFN units, hidden size kept."""
    from transformers import AutoModelForSequenceClassification
    from transformers.models.bert.modeling_bert import BertSelfAttention

    model = AutoModelForSequenceClassification.from_pretrained(OUT / "base").eval()
    num_heads = {}
    for m in model.modules():
        if isinstance(m, BertSelfAttention):
            for lin in (m.query, m.key, m.value):
                num_heads[lin] = m.num_attention_heads
    ignored = [model.classifier, model.bert.pooler, model.bert.embeddings]
    for layer in model.bert.encoder.layer:  # their output channels are the hidden size: keep it
        ignored += [
            layer.attention.output.dense,
            layer.output.dense,
            layer.attention.output.LayerNorm,
            layer.output.LayerNorm,
        ]
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=fraction,
        ignored_layers=ignored,
        num_heads=num_heads,
        prune_head_dims=False,
        prune_num_heads=True,
        head_pruning_ratio=fraction,
        output_transform=lambda out: out.logits.sum(),
    )
    pruner.step()
    for m in model.modules():
        if isinstance(m, BertSelfAttention):
            m.num_attention_heads = pruner.num_heads[m.query]
            m.all_head_size = m.query.out_features
    return model


def stage_torch_pruning(args) -> None:
    try:
        import torch_pruning as tp
    except ImportError as err:
        raise SystemExit("pip install 'lightning-topo[bench]' (torch-pruning==1.6.1)") from err

    base, tok, base_meta, (va_x, va_y), (rec_x, rec_y) = _stage_inputs(args)
    base_params = encoder_params(base)
    example = next(batches(tok, va_x[:2], va_y[:2]))
    example.pop("labels")
    for ratio in args.ratios:
        key = f"torch-pruning-magnitude@{ratio}"
        res = _results()
        if key in res.get("cells", {}) and not args.redo:
            continue
        # pruning_ratio is the fraction of channels removed per group; bisect to the same budget.
        lo, hi, best = 0.0, 1.0, None
        for _ in range(7):
            mid = (lo + hi) / 2
            model = _tp_prune(tp, example, mid)
            r = encoder_params(model) / base_params
            if r > ratio:
                lo = mid
            else:
                hi, best = mid, (mid, model, r)
        if best is None:
            continue
        mid, model, r = best
        acc0 = evaluate(model, tok, va_x, va_y)
        rec_s = train_epochs(model, tok, rec_x, rec_y, epochs=1, lr=args.recover_lr, seed=0, log_every=0)
        acc1 = evaluate(model, tok, va_x, va_y)
        tp_base, tp_model = paired_throughput(base, model, reps=args.timing_reps)
        # not loadable with from_pretrained; pickled whole so --stage timing can re-time it
        (OUT / "pruned").mkdir(parents=True, exist_ok=True)
        torch.save(model, OUT / "pruned" / f"torch-pruning-magnitude_{ratio}.pt")
        cell = {
            "method": "torch-pruning-magnitude",
            "target_ratio": ratio,
            "tp_pruning_ratio": mid,
            "encoder_params": encoder_params(model),
            "encoder_ratio": r,
            "total_params": sum(q.numel() for q in model.parameters()),
            "val_acc_before_recovery": acc0,
            "val_acc_after_recovery": acc1,
            "acc_drop_points": 100 * (base_meta["val_acc"] - acc1),
            "throughput_seq_s": tp_model,
            "base_throughput_seq_s": tp_base,
            "speedup": tp_model / tp_base,
            "checkpoint_mb": None,
            "reloadable_from_pretrained": False,
            "heads_per_layer": [
                layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer
            ],
            "ffn_per_layer": [layer.intermediate.dense.out_features for layer in model.bert.encoder.layer],
            "recover_s": rec_s,
        }
        res = _results()
        res.setdefault("cells", {})[key] = cell
        _write_results(res)
        print(
            f"{key:28s} enc {r:.3f} acc {acc0:.4f} -> {acc1:.4f} speedup {cell['speedup']:.2f}x", flush=True
        )


def stage_timing(args) -> None:
    """Re-time every saved pruned model against the base in one fresh process.

    The grid times each model in the process that just trained it; that figure is kept as
    ``speedup_in_grid_process``. This stage loads each saved model (our folders with
    :func:`load_compressed`, Torch-Pruning's pickled modules with ``torch.load``), times it
    alternately with the base (``--timing-reps`` batches each, median) and stores ``speedup``.
    Run it on a quiet machine.
    """
    from lightning_topo.pruning import load_compressed

    base, _ = load_base()
    res = _results()
    for key, cell in sorted(res.get("cells", {}).items()):
        if cell["target_ratio"] not in args.ratios or cell["method"].startswith("none"):
            continue
        name = key.replace("@", "_")
        if cell["method"].startswith("torch-pruning"):
            path = OUT / "pruned" / f"{name}.pt"
            if not path.exists():
                print(f"skip {key}: {path} missing (rerun --stage torch-pruning --redo)")
                continue
            model = torch.load(path, weights_only=False).eval()
        else:
            path = OUT / "pruned" / name
            if not path.exists():
                print(f"skip {key}: {path} missing")
                continue
            model = load_compressed(path).eval()
        tb, tm = paired_throughput(base, model, reps=args.timing_reps)
        if "speedup_in_grid_process" not in cell:
            cell["speedup_in_grid_process"] = cell["speedup"]
        elif cell.get("timing") == "fresh process":  # keep the earlier fresh-process figure too
            cell.setdefault("earlier_fresh_speedups", []).append(
                {"speedup": cell["speedup"], "timing_reps": cell.get("timing_reps")}
            )
        cell.update(
            base_throughput_seq_s=tb,
            throughput_seq_s=tm,
            speedup=tm / tb,
            timing="fresh process",
            timing_reps=args.timing_reps,
        )
        print(f"{key:34s} base {tb:6.1f} seq/s, pruned {tm:6.1f} seq/s, speedup {tm / tb:.2f}x", flush=True)
        res["cells"][key] = cell
        _write_results(res)
    res.pop("timing_rerun", None)  # superseded by the per-cell fresh-process figures
    res["timing"] = {
        "how": "fresh process; base and pruned model alternated batch by batch; median of each cell's "
        f"timing_reps batches each; batch {BATCH}, length {MAX_LEN}, {torch.get_num_threads()} threads",
        "load_average_at_start": os.getloadavg(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_results(res)


def print_table() -> None:
    res = _results()
    base = res.get("base", {})
    cells = res.get("cells", {})
    control = cells.get("none@1.0", {}).get("val_acc_after_recovery")
    print(f"base: val acc {base.get('val_acc')}, throughput {base.get('throughput_seq_s')}")
    print(
        "| method | target | enc. params kept | val acc (pruned) | val acc (+1 recovery epoch) | drop vs base (pts) "
        "| drop vs control (pts) | ckpt MB | speedup |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for _key, c in sorted(cells.items(), key=lambda kv: (-kv[1]["target_ratio"], kv[1]["method"])):
        mb = "n/a" if c.get("checkpoint_mb") is None else f"{c['checkpoint_mb']:.1f}"
        vs_control = "" if control is None else f"{100 * (control - c['val_acc_after_recovery']):+.2f}"
        print(
            f"| {c['method']} | {c['target_ratio']} | {c['encoder_ratio']:.3f} | {c['val_acc_before_recovery']:.4f} | "
            f"{c['val_acc_after_recovery']:.4f} | {c['acc_drop_points']:+.2f} | {vs_control} | {mb} | "
            f"{c['speedup']:.2f}x |"
        )
    # compact view: val acc after recovery (speed-up), one row per budget
    methods = [
        "topological-1d",
        "topological-redundancy",
        "magnitude",
        "activation",
        "random",
        "torch-pruning-magnitude",
    ]
    ratios = sorted({c["target_ratio"] for c in cells.values() if c["target_ratio"] < 1.0}, reverse=True)
    print("\n| encoder params kept | " + " | ".join(methods) + " |")
    print("|---" * (len(methods) + 1) + "|")
    for r in ratios:
        row = []
        for m in methods:
            c = cells.get(f"{m}@{r}")
            row.append("not run" if c is None else f"{c['val_acc_after_recovery']:.4f} ({c['speedup']:.2f}x)")
        print(f"| {r} | " + " | ".join(row) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--stage", choices=["base", "grid", "control", "torch-pruning", "timing", "table"], default="grid"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--base-epochs", type=int, default=1)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.6, 0.4, 0.8])
    p.add_argument(
        "--methods",
        nargs="+",
        default=["topological-1d", "topological-redundancy", "magnitude", "activation", "random"],
    )
    p.add_argument("--calib-sentences", type=int, default=256)
    p.add_argument("--max-positions", type=int, default=2048)
    p.add_argument(
        "--recover-sentences", type=int, default=None, help="seeded train subset for recovery (default: all)"
    )
    p.add_argument("--ffn-multiple", type=int, default=8, help="see plan_keep_masks (1 = exact budget)")
    p.add_argument("--recover-lr", type=float, default=5e-5)
    p.add_argument("--timing-reps", type=int, default=30)
    p.add_argument("--redo", action="store_true")
    p.add_argument("--out", default=None, help="work folder (default outputs/pruning_bench)")
    p.add_argument("--results", default=None, help="results JSON (default benchmarks/results/pruning.json)")
    p.add_argument(
        "--val-limit", type=int, default=None, help="evaluate on the first N val sentences (dry runs)"
    )
    args = p.parse_args(argv)
    global OUT, RESULTS
    if args.out:
        OUT = Path(args.out)
    if args.results:
        RESULTS = Path(args.results)
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.stage == "base":
        stage_base(args)
    elif args.stage == "grid":
        stage_grid(args)
    elif args.stage == "control":
        stage_control(args)
    elif args.stage == "torch-pruning":
        stage_torch_pruning(args)
    elif args.stage == "timing":
        stage_timing(args)
    print_table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
