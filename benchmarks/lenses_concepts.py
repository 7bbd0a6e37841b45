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
import tempfile
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
    from lightning_topo.representations.tokens import build_token_set, token_activations
    from lightning_topo.scores.concepts import default_n_concepts, discover_concepts

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


def time_components(epochs: int, limit_val: int | None) -> dict[str, Any]:
    """The monitor's work at default settings, piece by piece, on the pre-trained MiniLM.

    Reference forward (the token set's sentences), one measurement (clustering + description of
    every layer), the triggers (default 5 words x 64 sentences per class) and the figures; the
    projection for a fit of ``epochs`` epochs is ``forward + (1 + epochs) x measurement +
    triggers + figures`` (the per-epoch vectors come from the validation forward).
    """
    from lightning_topo.callbacks.concept_monitor import ConceptAlignmentMonitor
    from lightning_topo.models import SequenceClassifier, TextClassificationDataModule
    from lightning_topo.plots.concepts import write_concept_figures
    from lightning_topo.representations.tokens import (
        build_token_set,
        concept_triggers,
        token_activations,
        token_labels,
        trigger_words,
    )
    from lightning_topo.scores.concepts import (
        concept_metrics,
        default_n_concepts,
        describe_layer,
        discover_concepts,
    )

    mon = ConceptAlignmentMonitor()
    dm = TextClassificationDataModule(max_length=64, limit={"val": limit_val} if limit_val else None)
    model = SequenceClassifier(num_labels=dm.num_classes)
    texts, labels = dm.split_texts("val"), dm.split_labels("val")
    t = {}
    start = time.perf_counter()
    ts = build_token_set(texts, labels, dm.tokenizer, mon.max_tokens, 64, mon.max_per_word, mon.seed)
    sets = {name: token_labels(ts, name) for name in mon.label_sets}
    t["token_set_s"] = time.perf_counter() - start
    layers = list(range(model.model.config.num_hidden_layers + 1))
    start = time.perf_counter()
    acts = token_activations(model, ts, layers, pad_token_id=dm.tokenizer.pad_token_id)
    t["reference_forward_s"] = time.perf_counter() - start
    start = time.perf_counter()
    k = default_n_concepts(ts.n_tokens)
    ids = {layer: discover_concepts(acts[layer], k) for layer in layers}
    desc = {
        layer: describe_layer(ids[layer], ts.words, ts.token_classes, 2, sets, ids[layer]) for layer in layers
    }
    concept_metrics(desc)
    t["measurement_s"] = time.perf_counter() - start
    start = time.perf_counter()
    words = trigger_words(ids[layers[-1]], ts, 2, mon.trigger_words)
    concept_triggers(model, dm.tokenizer, texts, labels, words, ts.words, 64, mon.trigger_sentences, mon.seed)
    t["triggers_s"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        record = {
            "epoch": 0,
            "step": 1,
            "scores": {f"concepts/{n}": v for n, v in concept_metrics(desc).items()},
        }
        write_concept_figures([record], tmp)
        t["figures_s"] = time.perf_counter() - start
    t["tokens"], t["sentences"], t["layers"], t["n_concepts"] = ts.n_tokens, len(ts.texts), len(layers), k
    t["projected_fit_s"] = (
        t["token_set_s"]
        + t["reference_forward_s"]
        + (1 + epochs) * t["measurement_s"]
        + t["triggers_s"]
        + t["figures_s"]
    )
    print(
        "  " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in t.items()),
        flush=True,
    )
    return t


def concepts_section(args: argparse.Namespace) -> dict[str, Any]:
    """The clustering part of the concept lens's benchmark (its cost on the fit is ``benchmarks/lenses.py
    --lenses concepts``)."""
    print("clustering time vs token count (MiniLM top layer, d=384):", flush=True)
    out = {"clustering": time_clustering(args.sizes, args.cluster_repeats, args.limit_val)}
    print(
        f"the monitor's work at default settings, piece by piece (projection for {args.epochs} epochs):",
        flush=True,
    )
    out["components"] = time_components(args.epochs, args.limit_val)
    return out


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
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the projected fit (default 3)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1, as the quickstart timing)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: small sizes, a 200-sentence val split"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lenses_concepts.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
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
