"""Does PSF predict robustness? A small black-box character-level attack on many classifiers.

BERTops (Chauhan et al. 2022, claim iv) reports that PSF predicts the success rate of adversarial
attacks. This benchmark measures attack success on the models of ``benchmarks/early_stopping.py``
(every recorded seed x epoch, fine-tuned MiniLM classifiers) and correlates it with each score of
``benchmarks/psf_across_models.py --from-study`` (the scoreboard), Spearman with a bootstrap CI.

**The attack** (ours, benchmark-only code; the DeepWordBug family, Gao et al. 2018): black-box,
it only reads the model's class probabilities.

1. Word importance by deletion: for a sentence of words ``w_1..w_L`` (whitespace split) and true
   class ``y``, the importance of ``w_i`` is the drop of ``p(y)`` when ``w_i`` is deleted (one
   batched forward of the ``L`` deletions).
2. In order of importance, each of the ``--budget`` most important words (of >= 2 characters)
   gets ONE character edit: the candidate among four -- swap two adjacent inner characters,
   substitute one character by a neighbour on the QWERTY keyboard, delete one character, insert
   one random letter -- (positions and letters seeded per sentence and word) that lowers ``p(y)``
   most, kept whether or not it flips the prediction.
3. Success at budget ``b``: the prediction differs from ``y`` after the first ``b`` edits. Only
   sentences the model classifies correctly to begin with are attacked (success rate = flipped /
   attacked, the usual definition); one greedy run gives the success rate at every budget
   ``1..--budget``.

Sentences: a fixed, seeded set of ``--sentences`` (default 120) validation sentences, the same for
every model. Usage::

    nice -n 10 .venv/bin/python benchmarks/attack.py --threads 1
    .venv/bin/python benchmarks/attack.py --quick

Writes ``benchmarks/results/attack.json``; per-model results are cached in
``outputs/attack/<model>.json`` (resumable).
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

RESULTS = ROOT / "benchmarks" / "results" / "attack.json"
CACHE = ROOT / "outputs" / "attack"
STUDY = ROOT / "outputs" / "early_stopping"
SCOREBOARD = ROOT / "benchmarks" / "results" / "psf_across_models_study.json"

_KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]


def _neighbours(ch: str) -> str:
    """Letters next to ``ch`` on a QWERTY keyboard (same row and the rows above/below)."""
    low = ch.lower()
    for r, row in enumerate(_KEYBOARD):
        if low in row:
            c = row.index(low)
            out = [row[j] for j in (c - 1, c + 1) if 0 <= j < len(row)]
            for rr in (r - 1, r + 1):
                if 0 <= rr < len(_KEYBOARD):
                    out += [_KEYBOARD[rr][j] for j in (c - 1, c, c + 1) if 0 <= j < len(_KEYBOARD[rr])]
            return "".join(out)
    return "e"


def candidates(word: str, rng: np.random.Generator) -> list[str]:
    """The four one-character edits of ``word`` (swap, substitute, delete, insert), seeded."""
    n = len(word)
    out = []
    if n >= 4:  # swap two adjacent inner characters
        i = int(rng.integers(1, n - 2))
        out.append(word[:i] + word[i + 1] + word[i] + word[i + 2 :])
    i = int(rng.integers(0, n))
    nb = _neighbours(word[i])
    out.append(word[:i] + nb[int(rng.integers(0, len(nb)))] + word[i + 1 :])  # substitute
    i = int(rng.integers(0, n))
    out.append(word[:i] + word[i + 1 :])  # delete
    i = int(rng.integers(0, n + 1))
    out.append(word[:i] + "abcdefghijklmnopqrstuvwxyz"[int(rng.integers(0, 26))] + word[i:])  # insert
    return [c for c in out if c != word and c]


class Classifier:
    """Black-box access: class probabilities of a list of sentences (batched, no gradients)."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int = 64, batch_size: int = 64) -> None:
        self.model, self.tok, self.max_length, self.batch_size = (
            model.eval(),
            tokenizer,
            max_length,
            batch_size,
        )
        self.queries = 0

    def probs(self, texts: list[str]) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tok(texts[i : i + self.batch_size], padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")  # fmt: skip
                out.append(self.model(**enc).logits.softmax(-1))
        self.queries += len(texts)
        return torch.cat(out)


def attack_sentence(clf: Classifier, text: str, label: int, budget: int, seed: int) -> dict[str, Any]:
    """Greedy deletion importance + one character edit per word; success flags per budget."""
    words = text.split()
    p0 = clf.probs([text])[0]
    if int(p0.argmax()) != label:
        return {"attacked": False}
    deletions = [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
    drop = p0[label] - clf.probs(deletions)[:, label] if len(words) > 1 else torch.zeros(len(words))
    order = [int(i) for i in torch.argsort(drop, descending=True) if len(words[int(i)]) >= 2][:budget]
    rng = np.random.default_rng([seed, len(words)])
    current = list(words)
    flipped_at = None
    for b, i in enumerate(order, start=1):
        options = candidates(current[i], rng)
        if not options:
            continue
        texts = [" ".join(current[:i] + [o] + current[i + 1 :]) for o in options]
        p = clf.probs(texts)
        j = int(torch.argmin(p[:, label]))
        current[i] = options[j]
        if flipped_at is None and int(p[j].argmax()) != label:
            flipped_at = b
            break
    return {"attacked": True, "flipped_at": flipped_at, "words": len(words), "adversarial": " ".join(current)}


def attack_model(
    name: str, folder: Path, texts: list[str], labels: list[int], args: argparse.Namespace
) -> dict:
    """Attack one saved Hugging Face classifier (cached)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cache = args.cache / f"{name}.json"
    if cache.exists():
        row = json.loads(cache.read_text(encoding="utf-8"))
        if row.get("settings") == settings(args):
            return row
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=False)
    tok = AutoTokenizer.from_pretrained(tokenizer_folder(), trust_remote_code=False)
    clf = Classifier(model, tok)
    start = time.perf_counter()
    results = [
        attack_sentence(clf, t, y, args.budget, args.seed + k)
        for k, (t, y) in enumerate(zip(texts, labels, strict=True))
    ]
    attacked = [r for r in results if r["attacked"]]
    success = {b: sum(r["flipped_at"] is not None and r["flipped_at"] <= b for r in attacked) / max(1, len(attacked))
               for b in range(1, args.budget + 1)}  # fmt: skip
    row = {"name": name, "settings": settings(args), "clean_acc": len(attacked) / len(results),
           "attacked": len(attacked), "success": success, "queries": clf.queries,
           "seconds": time.perf_counter() - start,
           "examples": [{"text": t, "adversarial": r["adversarial"]} for t, r in zip(texts, results, strict=True)
                        if r.get("flipped_at")][:3]}  # fmt: skip
    args.cache.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(row, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, cache)
    print(f"{name}: clean acc {row['clean_acc']:.3f}, success " + ", ".join(f"b{b} {s:.2f}" for b, s in success.items())
          + f" ({row['seconds']:.0f} s)", flush=True)  # fmt: skip
    return row


def tokenizer_folder() -> Path:
    """The embedded model's folder (its tokenizer is every study model's)."""
    from lightning_topo.models.embedded import embedded_model_path

    return Path(embedded_model_path())


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"sentences": args.sentences, "budget": args.budget, "seed": args.seed, "version": 1}


def fixed_sentences(n: int, seed: int) -> tuple[list[str], list[int]]:
    """``n`` seeded validation sentences, balanced over the classes, the same for every model."""
    from lightning_topo.models import TextClassificationDataModule

    dm = TextClassificationDataModule(max_length=64, limit={"val": n}, seed=seed)
    dm.setup("validate")
    return dm.split_texts("val"), dm.split_labels("val")


def study_models(epochs: list[int] | None) -> list[tuple[str, Path]]:
    out = []
    for folder in sorted(STUDY.glob("seed*/epoch*_model")):
        e = int(folder.name[len("epoch") : -len("_model")])
        if epochs is None or e in epochs:
            out.append((f"{folder.parent.name}_e{e}", folder))
    return out


def spearman_ci(x: np.ndarray, y: np.ndarray, draws: int, seed: int = 0) -> dict[str, Any]:
    """Spearman with a percentile bootstrap 95 % CI over models (NaN draws dropped)."""
    from scipy.stats import spearmanr

    rho = float(spearmanr(x, y)[0])
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(draws):
        i = rng.integers(0, len(x), len(x))
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            boot.append(float(spearmanr(x[i], y[i])[0]))
    ci = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))] if boot else None
    return {"spearman": rho, "ci95": ci, "n_models": len(x)}


def correlate(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Spearman between each scoreboard score and attack success (at ``--report-budget``)."""
    if not SCOREBOARD.exists():
        return {"skipped": f"{SCOREBOARD} missing: run benchmarks/psf_across_models.py --from-study first"}
    board = {m["name"]: m["scores"] for m in json.loads(SCOREBOARD.read_text(encoding="utf-8"))["models"]}
    kept = [r for r in rows if r["name"] in board]
    success = np.array([r["success"][str(args.report_budget)] if str(args.report_budget) in r["success"]
                        else r["success"][args.report_budget] for r in kept])  # fmt: skip
    out = {}
    keys = sorted({k for r in kept for k in board[r["name"]] if not k.endswith("/std")})
    for key in keys:
        x = np.array([board[r["name"]].get(key, math.nan) for r in kept], dtype=float)
        if np.isnan(x).any() or np.ptp(x) == 0:
            continue
        out[key] = spearman_ci(x, success, args.bootstrap)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--sentences", type=int, default=120)
    p.add_argument("--budget", type=int, default=3, help="largest number of words edited")
    p.add_argument(
        "--report-budget", type=int, default=None, help="budget correlated (default: widest spread)"
    )
    p.add_argument("--epochs", type=int, nargs="*", default=None, help="study epochs attacked (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--results", type=Path, default=None)
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        tmp = Path(tempfile.gettempdir()) / "attack_quick"
        args.results, args.cache = args.results or tmp / "attack.json", args.cache or tmp / "cache"
        args.sentences, args.bootstrap = 12, 50
    args.results, args.cache = args.results or RESULTS, args.cache or CACHE
    return args


def main(argv: list[str] | None = None) -> int:
    from lightning_topo.analysis import write_text_atomic

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    texts, labels = fixed_sentences(args.sentences, 7)
    models = study_models(args.epochs)
    if args.quick:
        models = models[:2]
    if not models:
        print(f"no models under {STUDY}: run benchmarks/early_stopping.py --record first", file=sys.stderr)
        return 1
    rows = [attack_model(name, folder, texts, labels, args) for name, folder in models]
    spread = {b: float(np.std([r["success"][str(b)] if str(b) in r["success"] else r["success"][b] for r in rows]))
              for b in range(1, args.budget + 1)}  # fmt: skip
    args.report_budget = args.report_budget or max(spread, key=spread.get)
    corr = correlate(rows, args)
    for key, c in sorted(corr.items(), key=lambda kv: -abs(kv[1]["spearman"]) if "spearman" in kv[1] else 0):
        if "spearman" in c:
            ci = c["ci95"] or [math.nan, math.nan]
            print(
                f"{key:<32} Spearman vs success(b={args.report_budget}) {c['spearman']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]"
            )
    payload = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                    "load_avg_1min_at_end": os.getloadavg()[0]},
        "protocol": {"attack": "ours: deletion importance, one char edit (swap/substitute/delete/insert) per word, "
                               "greedy, black-box probabilities", "sentences": args.sentences,
                     "budget": args.budget, "report_budget": args.report_budget,
                     "success": "flipped / attacked (attacked = correctly classified before the attack)",
                     "models": "benchmarks/early_stopping.py recordings (seed x epoch)",
                     "spread_sd_by_budget": spread},
        "models": rows, "correlations": corr,
    }  # fmt: skip
    write_text_atomic(args.results, json.dumps(payload, indent=1) + "\n", overwrite=True)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
