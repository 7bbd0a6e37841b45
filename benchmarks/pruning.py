"""Benchmark: topology-guided structured pruning of the embedded MiniLM, over seeds (issue 17).

Protocol (CPU, ``torch.set_num_threads(--threads)``), for every seed ``s`` in ``--seeds``:

1. **Base model** ``outputs/pruning_bench/seed{s}/base``: the embedded all-MiniLM-L6-v2 with a fresh
   linear classifier (init seed ``s``), fine-tuned for ``--base-epochs`` epoch(s) on the embedded
   train split (8,455 sentences, max length 64, batch 32, AdamW lr 5e-5, linear decay, no warmup,
   shuffle seed ``s``). Every method of seed ``s`` starts from this same base.
2. **Calibration**: ``--calib-sentences`` train sentences drawn with seed ``1000 + s``, at most
   ``--max-positions`` token positions (position sample seed ``s``).
3. **Cells** (method x encoder-parameter ratio x plain/distilled recovery): prune a fresh copy of
   the base with :func:`lightning_topo.pruning.prune_model` (FFN units and heads, uniform per-layer
   allocation, FFN widths a multiple of 8), evaluate on the validation split (1,057 sentences),
   (batches of similar length throughout, see ``_grouped_order``),
   recover for one epoch on ``--recover-sentences`` (default 3,000, seeded) train sentences (same
   optimiser, shuffle seed ``s``; with
   ``+kd`` the loss is :func:`~lightning_topo.pruning.distill.distillation_loss` against the frozen
   base, T=2, alpha=0.5), evaluate again, save with :func:`save_compressed`, reload and check the
   logits. ``torch-pruning`` is Torch-Pruning 1.6.1's ``MetaPruner`` with
   ``MagnitudeImportance(p=2)`` (whole heads + FFN units, hidden size kept), bisected to the same
   budget. A method ``name:total`` means ``stat="total"``.
4. **Control**: the unpruned base trained for the same one extra epoch.

Every cell is written to ``outputs/pruning_bench/cells/*.json`` when it finishes, so the grid can
run in parts and in parallel processes (one per seed); ``--stage table`` collates them into
``benchmarks/results/pruning.json`` with mean +- sd over seeds and the paired per-seed differences
(each topological reading minus each baseline). Speed is timed separately (``--stage timing``, run
it on a quiet machine): the seed-0 model of each cell against its base, alternated batch by batch,
batch 32 x length 64; every seed's model of one (method, ratio) has the same shapes.
Round 1 (one seed, 0.8/0.6/0.55/0.4) is kept in ``benchmarks/results/history/pruning_round1.json``.

    python benchmarks/pruning.py --stage all --seeds 0       # base + grid + control of seed 0 (resumes)
    python benchmarks/pruning.py --stage all --seeds 1 --threads 1 &   # other seeds in parallel
    python benchmarks/pruning.py --stage timing              # quiet machine
    python benchmarks/pruning.py --stage table               # collate + print
    python benchmarks/pruning.py --speed-only                # BERT-base-shape cost, random weights,
                                                             # 80 sentences, 1 thread -> pruning_speed.json
"""

from __future__ import annotations

import argparse
import csv
import gzip
import itertools
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
DEVICE = torch.device("cpu")  # training and evaluation (--device); timing is always on CPU
TOPOLOGICAL = [
    "topological-1d",
    "topological-redundancy",
    "topological-contribution",
    "topological-contribution:total",
]
BASELINES = ["magnitude", "activation", "random", "torch-pruning"]
KD = {"temperature": 2.0, "alpha": 0.5}
RECOVER_DEFAULT = 3000  # recovery sentences of the main grid (--recover-sentences)
TRAIN_SIZE = 8455


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


def _grouped_order(tokenizer, texts, *, shuffle: bool, seed: int, batch_size: int) -> list[list[int]]:
    """Batches of indices with similar token lengths (less padding, ~2-3x faster on CPU).

    Evaluation: all texts sorted by length. Training: a seeded shuffle, sorted by length within
    chunks of 50 batches, the batches then shuffled again (the scheme of the package's
    ``LengthGroupedSampler``), so every epoch mixes lengths across batches but not inside one.
    """
    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=MAX_LEN)["input_ids"]]
    idx = list(range(len(texts)))
    if not shuffle:
        idx.sort(key=lambda i: lengths[i])
        return [idx[s : s + batch_size] for s in range(0, len(idx), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(idx)
    chunk = 50 * batch_size
    out = []
    for c in range(0, len(idx), chunk):
        part = sorted(idx[c : c + chunk], key=lambda i: lengths[i])
        out += [part[s : s + batch_size] for s in range(0, len(part), batch_size)]
    rng.shuffle(out)
    return out


def batches(tokenizer, texts, labels, *, shuffle=False, seed=0, batch_size=BATCH):
    for part in _grouped_order(tokenizer, texts, shuffle=shuffle, seed=seed, batch_size=batch_size):
        enc = tokenizer(
            [texts[i] for i in part], padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt"
        )
        batch = dict(enc)
        batch["labels"] = torch.tensor([labels[i] for i in part])
        yield {k: v.to(DEVICE) for k, v in batch.items()}


def subset(texts, labels, n, seed):
    if n is None or n >= len(texts):
        return list(texts), list(labels)
    from lightning_topo.data import stratified_subset

    idx = stratified_subset(labels, n, seed=seed)
    return [texts[i] for i in idx], [labels[i] for i in idx]


# ----------------------------------------------------------------------------- train / eval


def train_epochs(model, tokenizer, texts, labels, *, epochs=1, lr=5e-5, seed=0, log_every=50, teacher=None):
    """AdamW + linear decay; with ``teacher`` the loss is the distillation loss (:data:`KD`)."""
    from lightning_topo.pruning.distill import distillation_loss

    torch.manual_seed(seed)
    model.to(DEVICE).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(texts) / BATCH)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    step = 0
    t0 = time.perf_counter()
    for ep in range(epochs):
        for batch in batches(tokenizer, texts, labels, shuffle=True, seed=seed + ep):
            out = model(**batch)
            loss = out.loss
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
                loss = distillation_loss(out.logits, t_logits, batch["labels"], **KD)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if log_every and step % log_every == 0:
                print(
                    f"  step {step}/{steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
    model.eval()
    return time.perf_counter() - t0


@torch.no_grad()
def evaluate(model, tokenizer, texts, labels) -> float:
    model.to(DEVICE).eval()
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


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def encoder_params(model) -> int:
    from lightning_topo.pruning.structured import count_encoder_parameters

    return count_encoder_parameters(model)


def shapes(model) -> dict:
    layers = model.bert.encoder.layer
    return {
        "heads_per_layer": [layer.attention.self.num_attention_heads for layer in layers],
        "ffn_per_layer": [layer.intermediate.dense.out_features for layer in layers],
    }


# ----------------------------------------------------------------------------- names


def seed_dir(seed: int) -> Path:
    return OUT / f"seed{seed}"


def _recover_tag(recover: int, full: str, short: str) -> str:
    if recover == RECOVER_DEFAULT:
        return ""
    return full if recover >= TRAIN_SIZE else f"{short}{recover}"


def cell_key(method: str, ratio: float, kd: bool, recover: int = 3000) -> str:
    return f"{method}@{ratio}" + ("+kd" if kd else "") + _recover_tag(recover, " rec=all", " rec=")


def cell_file(method: str, ratio: float, kd: bool, seed: int, recover: int = 3000) -> str:
    kd_tag = "_kd" if kd else ""
    return f"{method.replace(':', '-')}_{ratio}{kd_tag}{_recover_tag(recover, '_recall', '_rec')}_s{seed}"


def split_method(method: str) -> tuple[str, str]:
    name, _, stat = method.partition(":")
    return name, stat or "max"


# ----------------------------------------------------------------------------- stages


def load_base(seed: int):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = seed_dir(seed) / "base"
    if not (path / "bench_meta.json").exists():
        raise SystemExit(
            f"no base model at {path}; run: python benchmarks/pruning.py --stage base --seeds {seed}"
        )
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    return model, AutoTokenizer.from_pretrained(path), json.loads((path / "bench_meta.json").read_text())


def stage_base(seed: int, args) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lightning_topo.models.embedded import embedded_model_path

    path = seed_dir(seed) / "base"
    if (path / "bench_meta.json").exists():
        return
    src = embedded_model_path()
    tok = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=2)
    train = subset(*load_split("train"), args.base_sentences, seed=3)
    secs = train_epochs(model, tok, *train, epochs=args.base_epochs, lr=5e-5, seed=seed)
    acc = evaluate(model, tok, *load_split("val"))
    print(f"seed {seed} base: val acc {acc:.4f} after {args.base_epochs} epoch(s), {secs:.0f}s", flush=True)
    tmp = path.with_name("base.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    meta = {"val_acc": acc, "epochs": args.base_epochs, "train_s": secs, "seed": seed}
    (tmp / "bench_meta.json").write_text(json.dumps(meta))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def _tp_prune(tp, base_path, example, fraction):
    """Torch-Pruning 1.6.1 MetaPruner, magnitude (L2), whole heads + FFN units, hidden size kept."""
    from transformers import AutoModelForSequenceClassification
    from transformers.models.bert.modeling_bert import BertSelfAttention

    model = AutoModelForSequenceClassification.from_pretrained(base_path).eval()
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


def torch_pruning_model(base_path, example, ratio: float, base_params: int):
    """Bisect Torch-Pruning's per-group ``pruning_ratio`` until the encoder keeps <= ``ratio``."""
    try:
        import torch_pruning as tp
    except ImportError as err:
        raise SystemExit("pip install 'lightning-topo[bench]' (torch-pruning==1.6.1)") from err
    lo, hi, best = 0.0, 1.0, None
    for _ in range(7):
        mid = (lo + hi) / 2
        model = _tp_prune(tp, base_path, example, mid)
        if encoder_params(model) / base_params > ratio:
            lo = mid
        else:
            hi, best = mid, (mid, model)
    if best is None:
        raise RuntimeError(f"Torch-Pruning did not reach ratio {ratio}")
    return best[1], {"tp_pruning_ratio": best[0]}


class SeedContext:
    """What every cell of one seed shares: base, tokenizer, splits, calibration batches."""

    def __init__(self, seed: int, args) -> None:
        self.seed = seed
        self.base, self.tok, self.meta = load_base(seed)
        self.base_path = seed_dir(seed) / "base"
        self.base_params = encoder_params(self.base)
        self.val = load_split("val")
        if args.val_limit:
            self.val = (self.val[0][: args.val_limit], self.val[1][: args.val_limit])
        train = load_split("train")
        self.train = subset(*train, args.recover_sentences or None, seed=2)
        cal_x, cal_y = subset(*train, args.calib_sentences, seed=1000 + seed)
        self.calib = list(batches(self.tok, cal_x, cal_y))


def _pruned(ctx: SeedContext, method: str, ratio: float, args):
    from transformers import AutoModelForSequenceClassification

    from lightning_topo.pruning import prune_model

    if method == "torch-pruning":
        example = {
            k: v.cpu()
            for k, v in next(batches(ctx.tok, ctx.val[0][:2], ctx.val[1][:2])).items()
            if k != "labels"
        }
        return torch_pruning_model(ctx.base_path, example, ratio, ctx.base_params)
    name, stat = split_method(method)
    model = AutoModelForSequenceClassification.from_pretrained(ctx.base_path).eval()
    prune_model(
        model,
        ctx.calib,
        method=name,
        ratio=ratio,
        stat=stat,
        max_positions=args.max_positions,
        ffn_multiple=args.ffn_multiple,
        seed=ctx.seed,
    )
    return model, {}


def _save_model(ctx: SeedContext, model, method: str, name: str) -> dict:
    """Save (our methods: compressed folder, reload and compare logits; Torch-Pruning: pickle, seed 0)."""
    from lightning_topo.pruning import load_compressed, save_compressed

    folder = seed_dir(ctx.seed) / "pruned" / name
    if method == "torch-pruning":  # not loadable with from_pretrained; --stage timing re-prunes it
        return {"checkpoint_mb": None, "reloadable_from_pretrained": False}
    model.to("cpu")
    save_compressed(model, folder, tokenizer=ctx.tok, overwrite=True)
    reloaded = load_compressed(folder).eval()
    b = {
        k: v.cpu()
        for k, v in next(batches(ctx.tok, ctx.val[0][:16], ctx.val[1][:16])).items()
        if k != "labels"
    }
    with torch.no_grad():
        diff = float((reloaded(**b).logits - model(**b).logits).abs().max())
    return {
        "checkpoint_mb": dir_mb(folder),
        "reload_max_abs_logit_diff": diff,
        "config_class": type(reloaded.config).__name__,
    }


def run_cell(ctx: SeedContext, method: str, ratio: float, kd: bool, args) -> None:
    recover = len(ctx.train[0])
    name = cell_file(method, ratio, kd, ctx.seed, recover)
    path = OUT / "cells" / f"{name}.json"
    if path.exists() and not args.redo:
        return
    t0 = time.perf_counter()
    model, extra = _pruned(ctx, method, ratio, args)
    prune_s = time.perf_counter() - t0
    acc0 = evaluate(model, ctx.tok, *ctx.val)
    teacher = None
    if kd:
        teacher = ctx.base.requires_grad_(False).eval().to(DEVICE)  # the base is never trained here
    rec_s = train_epochs(
        model, ctx.tok, *ctx.train, epochs=1, lr=args.recover_lr, seed=ctx.seed, log_every=0, teacher=teacher
    )
    acc1 = evaluate(model, ctx.tok, *ctx.val)
    p = encoder_params(model)
    cell = {
        "method": method,
        "target_ratio": ratio,
        "distill": kd,
        "seed": ctx.seed,
        "recover_sentences": recover,
        "encoder_params": p,
        "encoder_ratio": p / ctx.base_params,
        "base_val_acc": ctx.meta["val_acc"],
        "val_acc_before_recovery": acc0,
        "val_acc_after_recovery": acc1,
        "acc_drop_points": 100 * (ctx.meta["val_acc"] - acc1),
        "prune_s": prune_s,
        "recover_s": rec_s,
        **extra,
        **shapes(model),
        **_save_model(ctx, model, method, name),
    }
    _write_json(path, cell)
    print(
        f"s{ctx.seed} {cell_key(method, ratio, kd, recover):38s} enc {cell['encoder_ratio']:.3f} acc {acc0:.4f} -> {acc1:.4f} "
        f"(base {ctx.meta['val_acc']:.4f}; prune {prune_s:.0f}s, recover {rec_s:.0f}s)",
        flush=True,
    )


def run_control(ctx: SeedContext, args) -> None:
    """The unpruned base trained for the same one extra epoch as the pruned models' recovery."""
    path = OUT / "cells" / f"none_1.0_s{ctx.seed}.json"
    if path.exists() and not args.redo:
        return
    model = load_base(ctx.seed)[0]
    rec_s = train_epochs(model, ctx.tok, *ctx.train, epochs=1, lr=args.recover_lr, seed=ctx.seed, log_every=0)
    acc1 = evaluate(model, ctx.tok, *ctx.val)
    cell = {
        "method": "none",
        "target_ratio": 1.0,
        "distill": False,
        "seed": ctx.seed,
        "encoder_ratio": 1.0,
        "base_val_acc": ctx.meta["val_acc"],
        "val_acc_before_recovery": ctx.meta["val_acc"],
        "val_acc_after_recovery": acc1,
        "acc_drop_points": 100 * (ctx.meta["val_acc"] - acc1),
        "recover_s": rec_s,
    }
    _write_json(path, cell)
    print(f"s{ctx.seed} control (unpruned + 1 epoch): {ctx.meta['val_acc']:.4f} -> {acc1:.4f}", flush=True)


def stage_all(args) -> None:
    """Base, then the plain cells at each ratio, then the distilled ones, then the control, per seed."""
    for seed in args.seeds:
        stage_base(seed, args)
        ctx = SeedContext(seed, args)
        plan = [(r, False, args.methods) for r in args.ratios] + [
            (r, True, args.kd_methods) for r in args.kd_ratios
        ]
        for ratio, kd, methods in plan:
            for method in methods:
                run_cell(ctx, method, ratio, kd, args)
        if args.control:
            run_control(ctx, args)


def stage_timing(args) -> None:
    """Time the seed-0 model of every cell against the seed-0 base in this (fresh) process.

    Our methods: the saved compressed folder. Torch-Pruning's model does not reload with
    ``from_pretrained``; it is pruned again from the seed-0 base (deterministic, no data), checked to
    have the cell's shapes, and timed without its recovery epoch (speed depends on shapes only).
    """
    from lightning_topo.pruning import load_compressed

    base, tok, _ = load_base(0)
    example = {
        k: v.cpu()
        for k, v in next(batches(tok, ["a short example", "another"], [0, 1])).items()
        if k != "labels"
    }
    timing = {}
    for path in sorted((OUT / "cells").glob("*_s0.json")):
        cell = json.loads(path.read_text())
        if cell["method"] == "none":
            continue
        name = path.stem
        model_path = seed_dir(0) / "pruned" / name
        if cell["method"] == "torch-pruning":  # speed depends on shapes only: prune again, same shapes
            model = torch_pruning_model(
                seed_dir(0) / "base", example, cell["target_ratio"], encoder_params(base)
            )[0]
            if shapes(model) != {k: cell[k] for k in ("heads_per_layer", "ffn_per_layer")}:
                raise RuntimeError(f"re-pruned Torch-Pruning model of {name} has other shapes than the cell")
            model.eval()
        else:
            model = load_compressed(model_path).eval()
        tb, tm = paired_throughput(base, model, reps=args.timing_reps)
        key = cell_key(
            cell["method"], cell["target_ratio"], cell["distill"], cell.get("recover_sentences", 3000)
        )
        timing[key] = {"base_seq_s": tb, "pruned_seq_s": tm, "speedup": tm / tb}
        print(f"{key:38s} base {tb:6.1f} seq/s, pruned {tm:6.1f} seq/s, speedup {tm / tb:.2f}x", flush=True)
    info = {
        "how": f"fresh process; seed-0 model and seed-0 base alternated batch by batch; median of {args.timing_reps} "
        f"batches each; batch {BATCH}, length {MAX_LEN}, {torch.get_num_threads()} threads",
        "load_average_at_start": os.getloadavg(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_json(OUT / "timing.json", {"info": info, "cells": timing})


# ----------------------------------------------------------------------------- table


def _mean_sd(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def collate(args) -> dict:
    cells = [json.loads(p.read_text()) for p in sorted((OUT / "cells").glob("*.json"))]
    by_key: dict[str, dict[int, dict]] = {}
    for c in cells:
        key = cell_key(
            c["method"], c["target_ratio"], c["distill"], c.get("recover_sentences", RECOVER_DEFAULT)
        )
        by_key.setdefault(key, {})[c["seed"]] = c
    timing = (
        json.loads((OUT / "timing.json").read_text()) if (OUT / "timing.json").exists() else {"cells": {}}
    )
    summary = {}
    for key, per_seed in sorted(by_key.items()):
        accs = [c["val_acc_after_recovery"] for c in per_seed.values()]
        summary[key] = {
            "method": next(iter(per_seed.values()))["method"],
            "target_ratio": next(iter(per_seed.values()))["target_ratio"],
            "distill": next(iter(per_seed.values()))["distill"],
            "recover_sentences": next(iter(per_seed.values())).get("recover_sentences", RECOVER_DEFAULT),
            "seeds": sorted(per_seed),
            "val_acc_after_recovery": _mean_sd(accs),
            "val_acc_before_recovery": _mean_sd([c["val_acc_before_recovery"] for c in per_seed.values()]),
            "drop_vs_base_points": _mean_sd([c["acc_drop_points"] for c in per_seed.values()]),
            "encoder_ratio": statistics.fmean(c["encoder_ratio"] for c in per_seed.values()),
            "speedup": timing["cells"].get(key, {}).get("speedup"),
            "per_seed": {str(s): c for s, c in sorted(per_seed.items())},
        }
    return {"summary": summary, "paired": _paired(by_key), "timing": timing.get("info")}


def _paired(by_key: dict[str, dict[int, dict]]) -> dict:
    """Per-seed differences in val acc after recovery (points): A minus B on the seeds both have."""
    pairs = {}
    ratios = sorted({c["target_ratio"] for d in by_key.values() for c in d.values() if c["target_ratio"] < 1})
    for ratio in ratios:
        for a, b in itertools.product(TOPOLOGICAL, BASELINES + TOPOLOGICAL):
            if a != b:
                pairs[f"{a} - {b} @{ratio}"] = _diff(
                    by_key, cell_key(a, ratio, False), cell_key(b, ratio, False)
                )
        for method in TOPOLOGICAL + BASELINES:
            pairs[f"{method}+kd - {method} @{ratio}"] = _diff(
                by_key, cell_key(method, ratio, True), cell_key(method, ratio, False)
            )
            pairs[f"{method}+kd - control @{ratio}"] = _diff(
                by_key, cell_key(method, ratio, True), "none@1.0"
            )
            pairs[f"{method} - control @{ratio}"] = _diff(by_key, cell_key(method, ratio, False), "none@1.0")
            full = (cell_key(method, ratio, True, TRAIN_SIZE), cell_key(method, ratio, False, TRAIN_SIZE))
            pairs[f"{method}+kd rec=all - {method} rec=all @{ratio}"] = _diff(by_key, *full)
            pairs[f"{method} rec=all - {method} @{ratio}"] = _diff(
                by_key, full[1], cell_key(method, ratio, False)
            )
            pairs[f"{method}+kd rec=all - {method}+kd @{ratio}"] = _diff(
                by_key, full[0], cell_key(method, ratio, True)
            )
    return {k: v for k, v in pairs.items() if v is not None}


def _diff(by_key, a: str, b: str) -> dict | None:
    sa, sb = by_key.get(a, {}), by_key.get(b, {})
    seeds = sorted(set(sa) & set(sb))
    if not seeds:
        return None
    d = [100 * (sa[s]["val_acc_after_recovery"] - sb[s]["val_acc_after_recovery"]) for s in seeds]
    return {"seeds": seeds, "diff_points": d, **_mean_sd(d)}


def _fmt(stat: dict, scale: float = 1.0, digits: int = 2) -> str:
    sd = "" if stat["sd"] is None else f" ± {scale * stat['sd']:.{digits}f}"
    return f"{scale * stat['mean']:.{digits}f}{sd} (n={stat['n']})"


def print_table(res: dict) -> None:
    summary = res["summary"]
    control = summary.get("none@1.0")
    if control:
        print(f"unpruned + 1 epoch (control): val acc {_fmt(control['val_acc_after_recovery'], 100)}")
    print(
        "\n| method | enc. params kept | recovery | val acc % (mean ± sd) | drop vs base (pts) | speed-up |"
    )
    print("|---|---|---|---|---|---|")
    for _key, s in sorted(summary.items(), key=lambda kv: (-kv[1]["target_ratio"], kv[1]["distill"], kv[0])):
        if s["method"] == "none":
            continue
        sp = "" if s["speedup"] is None else f"{s['speedup']:.2f}x"
        print(
            f"| {s['method']} | {s['target_ratio']} | {'distilled' if s['distill'] else 'plain'}"
            f"{'' if s['recover_sentences'] == RECOVER_DEFAULT else ', ' + str(s['recover_sentences']) + ' sentences'} | "
            f"{_fmt(s['val_acc_after_recovery'], 100)} | {_fmt(s['drop_vs_base_points'])} | {sp} |"
        )
    print("\n| paired difference (val acc points, same seeds) | mean ± sd | per seed |")
    print("|---|---|---|")
    for key, p in res["paired"].items():
        if key.split(" - ")[1].split(" ")[0] in TOPOLOGICAL and "+kd" not in key:
            continue  # topological vs topological: in the JSON only
        print(f"| {key} | {_fmt(p)} | {', '.join(f'{d:+.2f}' for d in p['diff_points'])} |")


def stage_table(args) -> None:
    res = collate(args)
    res["protocol"] = {
        "base_epochs": args.base_epochs,
        "calib_sentences": args.calib_sentences,
        "max_positions": args.max_positions,
        "recover_sentences": RECOVER_DEFAULT,
        "recover_sentences_note": "cells whose key ends in 'rec=all' recovered on all 8,455 train sentences",
        "recover_sentences_seed": 2,
        "recover_epochs": 1,
        "recover_lr": args.recover_lr,
        "distillation": KD,
        "ffn_multiple": args.ffn_multiple,
        "val_sentences": 1057,
        "max_len": MAX_LEN,
        "batch": BATCH,
        "allocation": "uniform per layer (same head count and FFN width in every layer)",
        "batching": "length-grouped (train: seeded shuffle, sorted within 50-batch chunks, batches shuffled)",
    }
    res["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
    _write_json(RESULTS, res)
    print_table(res)


# ----------------------------------------------------------------------------- speed only (issue 24 item 5)

SPEED_RESULTS = ROOT / "benchmarks" / "results" / "pruning_speed.json"


def _reference_topological(model, outputs):
    """``topological`` (contribution reading, ``stat="total"``) as implemented before issue 24: FFN
    bars from a sort along the positions, one ``minimum_spanning_tree(pairwise_distances)`` per head."""
    from lightning_topo.pruning import layout
    from lightning_topo.pruning.importance import ImportanceTable
    from lightning_topo.topology import minimum_spanning_tree, pairwise_distances

    ffn, heads = [], []
    for layer, values, context in zip(layout.encoder_layers(model), outputs.ffn, outputs.heads, strict=True):
        gaps = torch.diff(torch.sort(values.double(), dim=0).values, dim=0)
        ffn.append(gaps.sum(dim=0) * layout.ffn_output(layer).weight.detach().double().norm(dim=0))
        h, d = layout.num_heads(layer), layout.head_size(layer)
        w = layout.attention_output(layer).weight.detach().double().reshape(-1, h, d)
        mapped = torch.einsum("nhk,hjk->nhj", context.double(), torch.linalg.qr(w.permute(1, 0, 2)).R)
        scores = torch.empty(h, dtype=torch.float64)
        for i in range(h):
            scores[i] = minimum_spanning_tree(pairwise_distances(mapped[:, i]))[1].sum()
        heads.append(scores)
    return ImportanceTable(method="topological-contribution", ffn=ffn, heads=heads)


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def stage_speed(args) -> None:
    """BERT-base shape (random weights, hidden 768, 12 layers), ``--calib-sentences`` (default 80)
    embedded train sentences, ``--threads`` (default 1): the cost of every scoring step, the
    previous topological implementation in the same run, and whether both keep the same units."""
    import copy as _copy
    import tempfile

    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from lightning_topo.models.embedded import embedded_model_path
    from lightning_topo.pruning import (
        collect_unit_outputs,
        compute_importance,
        plan_keep_masks,
        prune_model,
        save_compressed,
    )

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2)).eval()  # 12 x 768, random weights
    tok = AutoTokenizer.from_pretrained(embedded_model_path())
    texts, labels = subset(*load_split("train"), args.calib_sentences, seed=1000)
    calib = [{k: v for k, v in b.items() if k != "labels"} for b in batches(tok, texts, labels, batch_size=16)]
    positions = int(sum(int(b["attention_mask"].sum()) for b in calib))
    rows, timings = [], {}

    def record(name, seconds, note=""):
        timings[name] = round(seconds, 3)
        rows.append((name, seconds, note))
        print(f"  {name:<44} {seconds:8.2f} s  {note}", flush=True)

    print(f"BERT-base shape, {len(texts)} sentences ({positions} real tokens), {args.threads} thread(s)")
    outputs, t = _timed(lambda: collect_unit_outputs(model, calib, max_positions=args.max_positions))
    record("collect_unit_outputs", t, f"N={outputs.num_positions} positions")
    for method in ("magnitude", "activation", "topological"):
        table, t = _timed(lambda m=method: compute_importance(model, calib, method=m, max_positions=args.max_positions))
        record(f"compute_importance({method})", t, "with the forward passes" if method != "magnitude" else "")
        if method == "topological":
            fast = table
    _, t_act = _timed(lambda: compute_importance(model, None, method="activation", outputs=outputs))
    record("  activation scoring alone", t_act, "on the outputs collected above")
    _, t_score = _timed(lambda: compute_importance(model, None, method="topological", outputs=outputs))
    record("  topological scoring alone (after)", t_score, "on the outputs collected above")
    timings["ratio_same_collection"] = round(
        (timings["collect_unit_outputs"] + t_score) / (timings["collect_unit_outputs"] + t_act), 3
    )
    if not args.skip_before:
        ref, t_ref = _timed(lambda: _reference_topological(model, outputs))
        record("  topological scoring alone (before)", t_ref, "previous per-head implementation")
        same = True
        for ratio in (0.8, 0.6, 0.4):
            a = plan_keep_masks(model, fast, ratio=ratio)
            b = plan_keep_masks(model, ref, ratio=ratio)
            same &= all(torch.equal(x, y) for k in ("ffn", "heads") for x, y in zip(getattr(a, k), getattr(b, k), strict=True))
        timings["same_kept_units_as_before"] = bool(same)
        timings["topological_before_s"] = round(timings["collect_unit_outputs"] + t_ref, 3)
        timings["ratio_before_same_collection"] = round(
            (timings["collect_unit_outputs"] + t_ref) / (timings["collect_unit_outputs"] + t_act), 3
        )
        print(f"  same kept units as before at ratios 0.8/0.6/0.4: {same}")
    pruned, t = _timed(lambda: prune_model(_copy.deepcopy(model), calib, ratio=0.6, max_positions=args.max_positions))
    record("prune_model(topological, ratio=0.6)", t, "includes a deepcopy of the model")
    with tempfile.TemporaryDirectory() as tmp:
        _, t = _timed(lambda: save_compressed(pruned, Path(tmp) / "ckpt"))
    record("save_compressed", t)
    ratio = timings["compute_importance(topological)"] / timings["compute_importance(activation)"]
    res = {
        "what": "pruning cost at BERT-base shape (random weights), issue 24 item 5",
        "model": "BertForSequenceClassification(BertConfig()), hidden 768, 12 layers, random weights (seed 0)",
        "calibration": {"sentences": len(texts), "real_tokens": positions, "positions_sampled": outputs.num_positions},
        "threads": args.threads,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_average_at_end": os.getloadavg(), "quiet": args.machine_quiet},
        "seconds": timings,
        "topological_over_activation": round(ratio, 3),
        "issue_24_figures_other_run_s": {"collect_unit_outputs": 9.4, "compute_importance(topological)": 74.0,
                                         "compute_importance(activation)": 9.6, "prune_model": 58.0,
                                         "save_compressed": 1.8},
        "torch": torch.__version__,
    }
    if "topological_before_s" in timings:
        res["topological_before_over_activation"] = round(timings["topological_before_s"] / timings["compute_importance(activation)"], 3)
    _write_json(Path(args.results) if args.results else SPEED_RESULTS, res)
    print(f"topological / activation = {ratio:.2f}x end to end, {timings['ratio_same_collection']:.2f}x with one "
          "collection for both (goal <= 2x)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["base", "all", "timing", "table", "speed"], default="all")
    p.add_argument("--speed-only", action="store_true", help="= --stage speed: BERT-base-shape cost only (random weights)")
    p.add_argument("--skip-before", action="store_true", help="speed stage: leave out the previous implementation")
    p.add_argument("--machine-quiet", action="store_true", help="speed stage: record that nothing else ran")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--device", default="cpu", help="training/evaluation device, e.g. cuda (timing stays on CPU)"
    )
    p.add_argument("--base-epochs", type=int, default=1)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.6, 0.4])
    p.add_argument("--methods", nargs="*", default=TOPOLOGICAL + BASELINES)
    p.add_argument("--kd-ratios", type=float, nargs="+", default=[0.4, 0.6])
    p.add_argument("--kd-methods", nargs="*", default=["topological-contribution:total"])
    p.add_argument("--no-control", dest="control", action="store_false")
    p.add_argument("--base-sentences", type=int, default=None, help="train subset for the base (dry runs)")
    p.add_argument("--calib-sentences", type=int, default=256)
    p.add_argument("--max-positions", type=int, default=2048)
    p.add_argument(
        "--recover-sentences", type=int, default=3000, help="seeded train subset for recovery (0: all 8,455)"
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
    if args.speed_only or args.stage == "speed":
        if "--calib-sentences" not in (argv if argv is not None else sys.argv):
            args.calib_sentences = 80
        if "--threads" not in (argv if argv is not None else sys.argv):
            args.threads = 1
        torch.set_num_threads(args.threads)
        stage_speed(args)
        return 0
    global OUT, RESULTS, DEVICE
    DEVICE = torch.device(args.device)
    if args.out:
        OUT = Path(args.out)
    if args.results:
        RESULTS = Path(args.results)
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.stage == "base":
        for seed in args.seeds:
            stage_base(seed, args)
    elif args.stage == "all":
        stage_all(args)
    elif args.stage == "timing":
        stage_timing(args)
    stage_table(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
