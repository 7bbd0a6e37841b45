"""Latent-concept lens: Ward clustering time vs token count (the engine choice of docs/concepts.md).

The monitor's own time as a share of the quickstart fit is measured by the shared lens
benchmark, ``benchmarks/lenses.py --lenses concepts`` (alternating runs, phase timing, the
hooks timed from outside). This script adds the clustering part of that section:
word-token vectors of the pre-trained embedded MiniLM (top layer, d=384) on the embedded
validation split; :func:`~lightning_topo.scores.concepts.discover_concepts` (scikit-learn
Ward, K = min(600, n/20)) timed for n in ``--sizes`` against SciPy's Ward linkage cut to K
clusters (the partitions are checked to agree).

Usage (quiet machine)::

    .venv/bin/python benchmarks/lenses.py --lenses concepts --repeats 3   # cost on the fit
    .venv/bin/python benchmarks/lenses_concepts.py                        # clustering vs tokens
    .venv/bin/python benchmarks/lenses_concepts.py --quick                # a smoke run (seconds)

Writes ``benchmarks/results/lenses_concepts.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
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


def concepts_section(args: argparse.Namespace) -> dict[str, Any]:
    """The clustering part of the concept lens's benchmark (its cost on the fit is ``benchmarks/lenses.py
    --lenses concepts``)."""
    print("clustering time vs token count (MiniLM top layer, d=384):", flush=True)
    return {"clustering": time_clustering(args.sizes, args.cluster_repeats, args.limit_val)}


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
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: small sizes, a 200-sentence val split"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lenses_concepts.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.cluster_repeats, args.limit_val = [200, 400], 1, 200
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
