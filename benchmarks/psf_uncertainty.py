"""Is ``topo/psf/std`` the real sampling noise of PSF? Checked against disjoint splits of the data.

``persistence_metrics(..., resamples=5)`` logs ``psf/std``: the standard error over the examples
(half-sampling, ``std_splits`` random splits of every class into two halves, extrapolated to the
full size with ``sqrt(m / n)``) combined with the spread of the re-draws. The truth it should
match is the SD of the logged PSF between *independent* sets of examples of the same size. The
embedded data give them:

1. **Pool**: the pre-trained embedded MiniLM (fresh head; the monitor's defaults: [CLS] of the
   last layer) on ``--pool-train`` (2,500) training sentences and the whole validation split,
   about 1,780 sentences per class that this model never trained on. For each size ``n`` per
   class (64, 128, 256; 512 is the validation split's own size, checked in 2.) the pool is cut into disjoint pieces of ``n`` per class, several
   times; truth = SD of the logged PSF between pieces; estimate = mean ``psf/std`` of the pieces
   (each computed from its own piece only). Also fitted: how the SD scales with ``n``
   (``SD ~ n^-beta``).
2. **Validation split alone** (what a user has), for the pre-trained model and, when
   ``benchmarks/early_stopping.py`` has recorded them, fine-tuned models: the validation set is
   split into disjoint halves and quarters many times; the SD between halves (quarters),
   scaled to the full size with the measured ``beta`` (and with ``beta = 1/2``), is compared
   with ``psf/std`` of the whole split.
3. The bootstrap with replacement (duplicates are zero-length bars, which PSF drops), for
   contrast: its SD on the whole validation split, and its mean (PSF of fewer distinct points).
4. A 60-sentence validation set (30 per class): ``psf/std`` is > 0 (the re-draw spread is 0).
5. Cost: ``persistence_metrics(resamples=5)`` with ``std_splits=0`` (the re-draw spread only,
   as before) and with the default, on the validation split, alternated.

Usage::

    nice -n 10 .venv/bin/python benchmarks/psf_uncertainty.py --threads 1
    .venv/bin/python benchmarks/psf_uncertainty.py --quick     # smoke run, temp dir

Writes ``benchmarks/results/psf_uncertainty.json`` (``--quick``: a temp file). The pool's
vectors are cached in ``outputs/psf_uncertainty/pool.pt``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "psf_uncertainty.json"
CACHE = ROOT / "outputs" / "psf_uncertainty" / "pool.pt"
RECORDINGS = ROOT / "outputs" / "early_stopping"


def pool_vectors(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """[CLS] of the last layer of the pre-trained MiniLM on train + val (cached)."""
    if args.cache.exists():
        return torch.load(args.cache, weights_only=True)
    from lightning_topo.models import SequenceClassifier, TextClassificationDataModule

    limit = {"train": args.quick_limit, "val": args.quick_limit} if args.quick else {"train": args.pool_train}
    dm = TextClassificationDataModule(max_length=64, batch_size=32, eval_batch_size=128, limit=limit, seed=42)
    dm.setup("fit")
    torch.manual_seed(0)
    model = SequenceClassifier(num_labels=2).eval()
    out: dict[str, torch.Tensor] = {}
    for split in ("train", "val"):
        cls, labels = [], []
        with torch.no_grad():
            for batch in dm.dataloader(split, batch_size=128):
                cls.append(model.encode(batch).hidden_states[-1][:, 0].float())
                labels.append(batch["labels"].long())
        out[f"{split}_x"], out[f"{split}_y"] = torch.cat(cls), torch.cat(labels)
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.cache.with_name(f".{args.cache.name}.tmp{os.getpid()}")
    torch.save(out, tmp)
    os.replace(tmp, args.cache)
    return out


def logged(x: torch.Tensor, y: torch.Tensor, seed: int, std_splits: int) -> tuple[float, float]:
    """``(psf, psf/std)`` as the monitor logs them (cap 512, resamples=5)."""
    from lightning_topo.scores import persistence_metrics

    m = persistence_metrics({6: x}, y, scores=("psf",), homology_dims=(0,), seed=seed, resamples=5,
                            std_splits=std_splits)  # fmt: skip
    return float(m.values["psf"]), float(m.values["psf/std"])


def pieces(y: torch.Tensor, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random partition of the rows into disjoint pieces with ``n`` rows of every class."""
    by_class = [rng.permutation(np.flatnonzero(y.numpy() == c)) for c in np.unique(y.numpy())]
    k = min(len(idx) // n for idx in by_class)
    return [np.concatenate([idx[i * n : (i + 1) * n] for idx in by_class]) for i in range(k)]


def pool_check(data: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, Any]:
    """Truth (SD between disjoint pieces) vs mean estimate, per size."""
    x = torch.cat([data["train_x"], data["val_x"]]).double()
    y = torch.cat([data["train_y"], data["val_y"]])
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        values, estimates = [], []
        for _ in range(args.partitions):
            parts = pieces(y, n, rng)
            for j, rows_ in enumerate(parts):
                idx = torch.from_numpy(rows_)
                with_std = j < args.estimates_per_partition
                v, s = logged(x[idx], y[idx], seed=j, std_splits=args.std_splits if with_std else 0)
                values.append(v)
                if with_std:
                    estimates.append(s)
        # pieces of different partitions overlap; within a partition they are independent
        truth = float(np.std(values, ddof=1))
        est = float(np.mean(estimates))
        rows.append({"n_per_class": n, "pieces": len(values), "estimates": len(estimates),
                     "psf_mean": float(np.mean(values)), "sd_between_pieces": truth,
                     "mean_psf_std": est, "sd_of_psf_std": float(np.std(estimates, ddof=1)),
                     "ratio_estimate_to_truth": est / truth})  # fmt: skip
        print(f"pool n={n:4d}/class: {len(values)} pieces, PSF {np.mean(values):.4f}, SD between "
              f"pieces {truth:.5f}, mean psf/std {est:.5f} (ratio {est / truth:.2f})", flush=True)  # fmt: skip
    logn = np.log([r["n_per_class"] for r in rows])
    beta = float(-np.polyfit(logn, np.log([r["sd_between_pieces"] for r in rows]), 1)[0])
    mean_slope = float(-np.polyfit(logn, np.log([r["psf_mean"] for r in rows]), 1)[0])
    print(f"SD between pieces ~ n^-{beta:.2f}; mean PSF ~ n^-{mean_slope:.2f}", flush=True)
    return {"rows": rows, "beta_sd": beta, "beta_mean_psf": mean_slope}


def split_check(x: torch.Tensor, y: torch.Tensor, beta: float, args: argparse.Namespace, label: str) -> dict:
    """SD between disjoint halves / quarters of one validation set, scaled to its full size."""
    x = x.double()
    rng = np.random.default_rng(1)
    n_full = min(int((y == c).sum()) for c in torch.unique(y))
    full_psf, full_std = logged(x, y, seed=0, std_splits=args.std_splits)
    out = {"label": label, "n_per_class": n_full, "psf": full_psf, "psf_std": full_std}
    for parts, name in ((2, "halves"), (4, "quarters")):
        n = n_full // parts
        values = []
        for r in range(args.split_repeats):
            for rows_ in pieces(y, n, rng):
                values.append(logged(x[torch.from_numpy(rows_)], y[torch.from_numpy(rows_)], r, 0)[0])
        sd = float(np.std(values, ddof=1))
        out[name] = {"n_per_class": n, "values": len(values), "sd": sd,
                     "scaled_to_full_beta": sd * (n / n_full) ** beta,
                     "scaled_to_full_sqrt": sd * math.sqrt(n / n_full)}  # fmt: skip
        out[name]["ratio_std_to_scaled_beta"] = full_std / out[name]["scaled_to_full_beta"]
        out[name]["ratio_std_to_scaled_sqrt"] = full_std / out[name]["scaled_to_full_sqrt"]
    print(f"{label}: psf {full_psf:.4f}, psf/std {full_std:.5f}; halves SD {out['halves']['sd']:.5f} -> "
          f"{out['halves']['scaled_to_full_beta']:.5f} at full n (ratio {out['halves']['ratio_std_to_scaled_beta']:.2f}); "
          f"quarters -> {out['quarters']['scaled_to_full_beta']:.5f} (ratio {out['quarters']['ratio_std_to_scaled_beta']:.2f})",
          flush=True)  # fmt: skip
    return out


def bootstrap_check(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """The with-replacement bootstrap of the examples (per class), for contrast."""
    x = x.double()
    rng = np.random.default_rng(2)
    by_class = [np.flatnonzero(y.numpy() == c) for c in np.unique(y.numpy())]
    values = []
    for b in range(args.bootstrap_draws):
        idx = torch.from_numpy(np.concatenate([rng.choice(i, len(i), replace=True) for i in by_class]))
        values.append(logged(x[idx], y[idx], b, 0)[0])
    distinct = float(np.mean([len(np.unique(rng.choice(i, len(i)))) / len(i) for i in by_class]))
    return {"draws": len(values), "sd": float(np.std(values, ddof=1)), "mean_psf": float(np.mean(values)),
            "distinct_share": distinct}  # fmt: skip


def cost_check(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """Seconds of one measurement with std_splits=0 and with the default, alternated."""
    x = x.double()
    times: dict[str, list[float]] = {"std_splits=0": [], f"std_splits={args.std_splits}": []}
    for r in range(args.cost_repeats):
        for splits in (0, args.std_splits) if r % 2 == 0 else (args.std_splits, 0):
            start = time.perf_counter()
            logged(x, y, 0, splits)
            times[f"std_splits={splits}"].append(time.perf_counter() - start)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "seconds": times,
        "median_s": med,
        "added_s": med[f"std_splits={args.std_splits}"] - med["std_splits=0"],
    }


def recorded_models() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Validation [CLS] vectors recorded by benchmarks/early_stopping.py (epochs 1 and 3 of seed 0)."""
    out = []
    for epoch in (1, 3):
        f = RECORDINGS / "seed0" / f"epoch{epoch}.npz"
        if f.exists():
            z = np.load(f)
            out.append((f"fine-tuned (seed 0, epoch {epoch})", torch.from_numpy(z["val_cls"]),
                        torch.from_numpy(z["val_labels"]).long()))  # fmt: skip
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--pool-train", type=int, default=2500, help="training sentences in the pool (+ all of val)"
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--partitions", type=int, default=2, help="random partitions of the pool per size")
    p.add_argument("--estimates-per-partition", type=int, default=2, help="pieces whose psf/std is computed")
    p.add_argument("--split-repeats", type=int, default=5, help="random halvings/quarterings of val")
    p.add_argument("--bootstrap-draws", type=int, default=8)
    p.add_argument("--cost-repeats", type=int, default=2)
    p.add_argument("--std-splits", type=int, default=None, help="default: the library's STD_SPLITS")
    p.add_argument("--results", type=Path, default=None)
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    from lightning_topo.scores.summary import STD_SPLITS

    args.std_splits = STD_SPLITS if args.std_splits is None else args.std_splits
    args.quick_limit = 200
    if args.quick:
        tmp = Path(tempfile.gettempdir()) / "psf_uncertainty_quick"
        args.results, args.cache = args.results or tmp / "psf_uncertainty.json", args.cache or tmp / "pool.pt"
        args.sizes, args.partitions, args.estimates_per_partition = [16, 32], 1, 2
        args.split_repeats, args.bootstrap_draws, args.cost_repeats = 2, 3, 2
    args.results, args.cache = args.results or RESULTS, args.cache or CACHE
    return args


def main(argv: list[str] | None = None) -> int:
    from lightning_topo.analysis import write_text_atomic

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = pool_vectors(args)
    print(f"pool: {len(data['train_y'])} train + {len(data['val_y'])} val sentences", flush=True)
    pool = pool_check(data, args)
    splits = [split_check(data["val_x"], data["val_y"], pool["beta_sd"], args, "pre-trained")]
    splits += [
        split_check(x, y, pool["beta_sd"], args, name)
        for name, x, y in ([] if args.quick else recorded_models())
    ]
    boot = bootstrap_check(data["val_x"], data["val_y"], args)
    print(f"bootstrap with replacement: SD {boot['sd']:.5f}, mean PSF {boot['mean_psf']:.4f} "
          f"(whole split {splits[0]['psf']:.4f}), {boot['distinct_share']:.0%} distinct points", flush=True)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    small = torch.cat([torch.nonzero(data["val_y"] == c).flatten()[torch.randperm(int((data['val_y'] == c).sum()), generator=g)[:30]]
                       for c in (0, 1)])  # fmt: skip
    small_psf, small_std = logged(data["val_x"][small].double(), data["val_y"][small], 0, args.std_splits)
    from lightning_topo.scores import persistence_metrics

    small_old = persistence_metrics(
        {6: data["val_x"][small].double()}, data["val_y"][small], resamples=5, std_splits=0
    )
    print(f"60 sentences: psf {small_psf:.4f}, psf/std {small_std:.5f} (re-draw spread "
          f"{float(small_old.values['psf/std']):.5f})", flush=True)  # fmt: skip
    cost = cost_check(data["val_x"], data["val_y"], args)
    print(f"cost per measurement: {cost['median_s']} (added {cost['added_s']:.2f} s)", flush=True)
    payload = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                    "load_avg_1min_at_end": os.getloadavg()[0],
                    "quiet": False},
        "protocol": {"model": "embedded all-MiniLM-L6-v2, pre-trained, fresh head; [CLS] of the last layer",
                     "logged": "persistence_metrics(scores=('psf',), resamples=5, cap 512) as the monitor",
                     "std_splits": args.std_splits, "sizes": args.sizes, "partitions": args.partitions,
                     "estimates_per_partition": args.estimates_per_partition,
                     "split_repeats": args.split_repeats, "quick": args.quick},
        "pool": pool, "validation_splits": splits, "bootstrap_with_replacement": boot,
        "sixty_sentences": {"psf": small_psf, "psf_std": small_std,
                            "redraw_std": float(small_old.values["psf/std"])},
        "cost": cost, "wall_s": time.perf_counter() - start,
    }  # fmt: skip
    write_text_atomic(args.results, json.dumps(payload, indent=1) + "\n", overwrite=True)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
