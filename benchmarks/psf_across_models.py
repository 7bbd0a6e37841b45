"""Does PSF track accuracy across models? Every logged score of many MiniLM classifiers vs val acc.

Models: the embedded all-MiniLM-L6-v2 with a fresh classification head, fine-tuned on seeded,
stratified subsets of the embedded Rotten Tomatoes training split (0 to 8,455 sentences; more
epochs for the small subsets, where one epoch leaves a model at chance) -- :data:`GRID`. Each
trained model is saved under ``--out-dir`` (``<name>/model``, a Hugging Face folder) and its
scores in ``<name>/scores.json``; a model already trained / scored with the same settings is
skipped, so the script can run in parts (``--models``, ``--max-models``) and resume.

Scores of each model, all with the library's own functions at the monitors' defaults:

* ``analyze(scores=("psf", "geometry"), layers=[-1])`` on the validation split: ``topo/psf``
  (the default PSF: [CLS], last layer, <= 512 points per class, 5 re-draws, as
  ``PersistenceScoreMonitor``), ``topo/h{0,1}/total_persistence``, ``topo/h{0,1}/entropy``, and
  the geometry lens of the last layer (``geometry/cone``, ``geometry/directionality``, ...);
* ``analyze(pooling="mean")`` on the validation split: ``psf_mean_pooling``;
* ``analyze`` on a fixed subset of the training split (``--train-score-size`` sentences, the same
  for every model; how much of it each model trained on is recorded): ``psf_train_split``;
* the concept lens (``ConceptAlignmentMonitor``'s defaults, last layer): the pre-trained model's
  Ward concepts are the reference; ``concepts/matched``, ``concepts/polar``;
* the tree-probe lens (``TreeProbeMonitor``'s defaults, last layer): held-out ``probe/ssp``,
  ``probe/essp`` losses;
* label-free scores users reach for (issue 26): WeightWatcher's power-law ``alpha`` and
  ``alpha_weighted`` of the weight matrices (``weightwatcher`` 0.7.7, the ``bench`` extra; no
  data needed), and RankMe (Garrido et al. 2023, :func:`lightning_topo.scores.rankme.rankme`) of
  the validation [CLS] vectors of the last layer.

``--from-study`` scores instead the models that ``benchmarks/early_stopping.py`` saved (every
seed x epoch: 800-sentence fine-tunings of 1-5 epochs), from its recordings (val [CLS] vectors,
cone index, PSF on val and train) and saved weights (WeightWatcher), without the concept and
tree-probe lenses (token-level activations were not recorded); it also reports each score
against the *test* accuracy, and draws the scores x models figure
``docs/img/psf_scoreboard.png``. Results: ``benchmarks/results/psf_across_models_study.json``.

Then, for each score against val acc: Pearson and Spearman, each with a seeded bootstrap 95 % CI
over models, and the pairwise order agreement (share of model pairs ordered the same way by the
score and by val acc; ties in the score count one half).

Usage::

    .venv/bin/python benchmarks/psf_across_models.py --threads 1                 # everything
    .venv/bin/python benchmarks/psf_across_models.py --threads 1 --max-models 4  # train/score the first 4 (the report covers all scored so far)
    .venv/bin/python benchmarks/psf_across_models.py --report-only               # statistics of the cache
    .venv/bin/python benchmarks/psf_across_models.py --quick                     # smoke run (2 tiny models)

Writes ``benchmarks/results/psf_across_models.json`` and ``docs/img/psf_across_models.png``
(``--quick``: into the temporary directory, never over the results).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "psf_across_models.json"
FIGURE = ROOT / "docs" / "img" / "psf_across_models.png"
OUT_DIR = ROOT / "outputs" / "psf_across_models"
FULL_TRAIN = 8455  # sentences in the embedded training split
MAX_LENGTH = 64
LEARNING_RATE = 1.0e-4  # configs/quickstart.yaml
LAST_LAYER = 6  # all-MiniLM-L6-v2


@dataclass(frozen=True)
class ModelSpec:
    """One model of the grid: ``n_train`` training sentences (a stratified subset drawn with
    ``seed``, which also seeds the head and the training order), ``epochs`` passes over them."""

    n_train: int
    seed: int
    epochs: int

    @property
    def name(self) -> str:
        return f"n{self.n_train}_s{self.seed}_e{self.epochs}"


#: The models, cheapest first (0 sentences: the pre-trained encoder with a seeded random head).
GRID: tuple[ModelSpec, ...] = (
    ModelSpec(0, 0, 0),
    ModelSpec(0, 1, 0),
    ModelSpec(50, 0, 10),
    ModelSpec(50, 1, 10),
    ModelSpec(100, 0, 8),
    ModelSpec(100, 1, 8),
    ModelSpec(200, 0, 5),
    ModelSpec(200, 1, 5),
    ModelSpec(400, 0, 3),
    ModelSpec(400, 1, 3),
    ModelSpec(800, 0, 2),
    ModelSpec(800, 1, 2),
    ModelSpec(1600, 0, 1),
    ModelSpec(1600, 1, 1),
    ModelSpec(3200, 0, 1),
    ModelSpec(FULL_TRAIN, 0, 1),
)
QUICK_GRID: tuple[ModelSpec, ...] = (ModelSpec(0, 0, 0), ModelSpec(50, 0, 1), ModelSpec(100, 0, 2))

#: Scores correlated with val acc: key in a model's ``scores`` -> label in tables and figures.
SCORES: dict[str, str] = {
    "topo/psf": "PSF (default: [CLS], last layer, val)",
    "psf_mean_pooling": "PSF, mean pooling",
    "psf_train_split": "PSF, train split",
    "topo/h0/total_persistence": "H0 total persistence",
    "topo/h1/total_persistence": "H1 total persistence",
    "topo/h0/entropy": "H0 persistence entropy",
    "topo/h1/entropy": "H1 persistence entropy",
    "geometry/cone": "cone index (layer output)",
    "geometry/attention_entropy": "attention entropy",
    "geometry/directionality": "directionality (W_Q W_K)",
    "geometry/qk_spectral_entropy": "QK spectral entropy",
    "concepts/matched": "concepts matched to pre-trained",
    "concepts/polar": "polar concepts",
    "probe/ssp": "tree probe, ssp loss",
    "probe/essp": "tree probe, essp loss",
    "ww/alpha": "WeightWatcher alpha",
    "ww/alpha_weighted": "WeightWatcher alpha-weighted",
    "rankme": "RankMe of val [CLS] (last layer)",
}
#: Panels of the figure besides the default PSF.
PANELS: tuple[str, ...] = (
    "psf_mean_pooling",
    "psf_train_split",
    "topo/h1/total_persistence",
    "geometry/cone",
    "concepts/polar",
    "probe/ssp",
)


# ----------------------------------------------------------------------------- data and training


def datamodule(seed: int, limits: dict[str, int] | None) -> Any:
    """The embedded data at max_length 64 (batch 32, eval batch 128), ``limits`` per split."""
    from lightning_topo.models import TextClassificationDataModule

    return TextClassificationDataModule(
        max_length=MAX_LENGTH, batch_size=32, eval_batch_size=128, limit=limits or None, seed=seed
    )


def train_model(spec: ModelSpec, folder: Path) -> dict[str, Any]:
    """Fine-tune (or, for 0 sentences, only initialise) one model and save it to ``folder``."""
    import lightning.pytorch as pl

    from lightning_topo.models import SequenceClassifier

    pl.seed_everything(spec.seed, verbose=False)
    model = SequenceClassifier(num_labels=2, learning_rate=LEARNING_RATE, warmup_ratio=0.1)
    start = time.perf_counter()
    texts: list[str] = []
    if spec.n_train > 0:
        dm = datamodule(spec.seed, {"train": spec.n_train} if spec.n_train < FULL_TRAIN else None)
        trainer = pl.Trainer(
            max_epochs=spec.epochs, accelerator="cpu", devices=1, precision="32-true", logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            limit_val_batches=0, num_sanity_val_steps=0,
        )  # fmt: skip
        trainer.fit(model, datamodule=dm)
        texts = dm.split_texts("train")
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    model.model.save_pretrained(tmp)
    (tmp / "train_texts.json").write_text(json.dumps(texts), encoding="utf-8")
    os.replace(tmp, folder)
    return {"train_s": time.perf_counter() - start}


def load_model(folder: Path) -> Any:
    """The saved Hugging Face classifier, in eval mode (never running code from the folder)."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=False).eval()


# ----------------------------------------------------------------------------- scoring


@dataclass
class ScoringData:
    """What every model is scored on (built once): loaders, token set, concept reference."""

    val_loader: Any
    train_loader: Any
    train_texts: list[str]
    token_set: Any
    label_sets: dict[str, list]
    reference_ids: Any
    tokenizer: Any
    settings: dict[str, Any]


def scoring_data(val_limit: int | None, train_size: int) -> ScoringData:
    """Loaders of the validation split and of the fixed training subset; the concept lens's token
    set (``ConceptAlignmentMonitor`` defaults) and the pre-trained model's concepts on it."""
    from lightning_topo.models import SequenceClassifier
    from lightning_topo.representations.tokens import LABEL_SETS, build_token_set, token_labels

    limits = {"train": train_size, **({"val": val_limit} if val_limit else {})}
    dm = datamodule(42, limits)
    dm.setup("fit")
    texts, labels = dm.split_texts("val"), dm.split_labels("val")
    ts = build_token_set(texts, labels, dm.tokenizer, 1000, MAX_LENGTH, 10, 0)
    # the monitor's default label sets: every set but the output class (that is 'polar') and upos
    label_sets = {name: token_labels(ts, name) for name in LABEL_SETS if name != "class"}
    torch.manual_seed(0)
    pretrained = SequenceClassifier(num_labels=2).model.eval()
    reference = concept_ids(pretrained, ts)
    settings = {"val_sentences": len(texts), "train_score_sentences": len(dm.split_texts("train")),
                "concept_tokens": ts.n_tokens, "val_limit": val_limit}  # fmt: skip
    return ScoringData(
        val_loader=dm.dataloader("val"),
        train_loader=dm.dataloader("train", batch_size=128),
        train_texts=dm.split_texts("train"),
        token_set=ts,
        label_sets=label_sets,
        reference_ids=reference,
        tokenizer=dm.tokenizer,
        settings=settings,
    )


def concept_ids(model: Any, token_set: Any) -> Any:
    """Ward concepts of the last layer on the token set (the monitor's default K)."""
    from lightning_topo.representations.tokens import token_activations
    from lightning_topo.scores.concepts import default_n_concepts, discover_concepts

    acts = token_activations(model, token_set, [LAST_LAYER])[LAST_LAYER]
    return discover_concepts(acts, default_n_concepts(token_set.n_tokens))


def weight_scores(model: Any, data: ScoringData | None = None) -> dict[str, float]:
    """WeightWatcher's ``alpha`` and ``alpha_weighted`` (means over the analysed layers, its
    ``get_summary``) of a Hugging Face model; reads only the weights (no data, offline)."""
    import logging
    import warnings

    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        watcher = ww.WeightWatcher(model=model)
        summary = watcher.get_summary(watcher.analyze())
    return {"ww/alpha": float(summary["alpha"]), "ww/alpha_weighted": float(summary["alpha_weighted"])}


def accuracy_and_probe(model: Any, data: ScoringData) -> dict[str, float]:
    """Val acc, and the tree-probe lens of the last layer, from one pass over the validation split."""
    from lightning_topo.encoding import encode_batch
    from lightning_topo.metrics import TreeProbeScore
    from lightning_topo.scores.rankme import rankme
    from lightning_topo.scores.tree_probe import MONITOR_BUDGET, fit_probe

    sample = TreeProbeScore(layers=[LAST_LAYER], max_samples=256, seed=0, tokenizer=data.tokenizer)
    correct = total = 0
    cls = []
    with torch.no_grad():
        for batch in data.val_loader:
            encoded = encode_batch(model, batch)
            correct += int((encoded.logits.argmax(-1) == batch["labels"]).sum())
            total += int(batch["labels"].numel())
            sample.update(encoded.hidden_states, encoded.attention_mask, None, batch["input_ids"],
                          batch.get("token_type_ids"))
            cls.append(encoded.hidden_states[-1][:, 0].double())
    hidden, mask = sample.word_sample()[LAST_LAYER]
    out = {"val_acc": correct / total, "rankme": float(rankme(torch.cat(cls)))}
    for kind in ("ssp", "essp"):
        out[f"probe/{kind}"] = fit_probe(hidden, mask, kind, budget=MONITOR_BUDGET, seed=0).val_loss
    return out


def persistence_scores(model: Any, data: ScoringData) -> dict[str, float]:
    """The PSF monitor's and geometry lens's scores (val), mean-pooling PSF, train-split PSF."""
    from lightning_topo import analyze

    main = analyze(model, data.val_loader, scores=("psf", "geometry"), layers=[-1], progress=False)
    out = {k: v for k, v in main.metrics.items() if "/layer_" not in k and "/class_" not in k}
    out.update(
        {f"geometry/{k.split('/')[1]}": v for k, v in main.rows[LAST_LAYER].items() if _is_geo_head(k)}
    )
    mean = analyze(model, data.val_loader, scores="psf", layers=[-1], pooling="mean", progress=False)
    out["psf_mean_pooling"] = mean.metrics["topo/psf"]
    out["psf_mean_pooling/std"] = mean.metrics["topo/psf/std"]
    train = analyze(model, data.train_loader, scores="psf", layers=[-1], progress=False)
    out["psf_train_split"] = train.metrics["topo/psf"]
    out["psf_train_split/std"] = train.metrics["topo/psf/std"]
    return out


def _is_geo_head(column: str) -> bool:
    """``geometry/cone``, ``geometry/directionality``, ... (not ``geometry/cone/input`` etc.)."""
    parts = column.split("/")
    return parts[0] == "geometry" and len(parts) == 2


def concept_scores(model: Any, data: ScoringData) -> dict[str, float]:
    """The concept lens of the last layer against the pre-trained reference (theta 0.9)."""
    from lightning_topo.scores.concepts import concept_metrics, describe_layer

    ts = data.token_set
    ids = concept_ids(model, ts)
    desc = describe_layer(ids, ts.words, ts.token_classes, 2, data.label_sets, data.reference_ids, 0.9)
    flat = concept_metrics({LAST_LAYER: desc})
    return {f"concepts/{k.replace(f'/layer_{LAST_LAYER}', '')}": v for k, v in flat.items()}


def score_model(folder: Path, data: ScoringData) -> dict[str, Any]:
    """Every score of one saved model, with the time each part took."""
    model = load_model(folder)
    timings, scores = {}, {}
    for name, fn in (("acc_probe", accuracy_and_probe), ("persistence", persistence_scores),
                     ("concepts", concept_scores), ("weights", weight_scores)):  # fmt: skip
        start = time.perf_counter()
        scores.update(fn(model, data))
        timings[f"{name}_s"] = time.perf_counter() - start
    trained_on = set(json.loads((folder / "train_texts.json").read_text(encoding="utf-8")))
    overlap = sum(t in trained_on for t in data.train_texts) / len(data.train_texts)
    return {"scores": scores, "timings": timings, "train_score_overlap": overlap}


# ----------------------------------------------------------------------------- --from-study

STUDY = ROOT / "outputs" / "early_stopping"
STUDY_CACHE = ROOT / "outputs" / "psf_across_models_study"
RESULTS_STUDY = ROOT / "benchmarks" / "results" / "psf_across_models_study.json"
FIGURE_STUDY = ROOT / "docs" / "img" / "psf_scoreboard.png"
#: Scores of the study's models (no concept / tree-probe lenses: no token activations recorded).
STUDY_SCORES: dict[str, str] = {
    "topo/psf": "PSF (val)",
    "psf_train_split": "PSF, train split",
    "topo/h0/total_persistence": "H0 total persistence",
    "topo/h1/total_persistence": "H1 total persistence",
    "topo/h0/entropy": "H0 persistence entropy",
    "topo/h1/entropy": "H1 persistence entropy",
    "geometry/cone": "cone index (last layer)",
    "rankme": "RankMe (val [CLS])",
    "ww/alpha": "WeightWatcher alpha",
    "ww/alpha_weighted": "WeightWatcher alpha-weighted",
    "val_loss": "val loss",
}


def study_row(seed_dir: Path, epoch: int, row: dict[str, float], with_ww: bool = True) -> dict[str, Any]:
    """Every score of one saved study model (cached in ``outputs/psf_across_models_study``)."""

    from lightning_topo.scores import persistence_metrics
    from lightning_topo.scores.rankme import rankme

    name = f"{seed_dir.name}_e{epoch}"
    cache = STUDY_CACHE / f"{name}.json"
    if cache.exists():
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if not with_ww or "ww/alpha" in cached["scores"]:
            return cached
        # scored earlier without WeightWatcher: add its scores to the cached row
        ww, cached["timings"]["weightwatcher_s"] = _study_weight_scores(seed_dir, epoch)
        cached["scores"].update(ww)
        _write_study_cache(cache, cached)
        print(f"{name}: + WeightWatcher alpha {cached['scores']['ww/alpha']:.2f} "
              f"({cached['timings']['weightwatcher_s']:.1f} s)", flush=True)  # fmt: skip
        return cached
    z = np.load(seed_dir / f"epoch{epoch}.npz")
    x, y = torch.from_numpy(z["val_cls"]).double(), torch.from_numpy(z["val_labels"]).long()
    start = time.perf_counter()
    stats = persistence_metrics({LAST_LAYER: x}, y, scores=("total_persistence", "entropy"))
    scores = {f"topo/{k}": float(v) for k, v in stats.values.items()}
    scores.update({"val_acc": row["val/acc"], "test_acc": row["test/acc"], "val_loss": row["val/loss"],
                   "topo/psf": row["psf_val"], "topo/psf/std": row["psf_val/std"],
                   "psf_train_split": row["psf_train"], "psf_train_split/std": row["psf_train/std"],
                   "geometry/cone": row["cone"], "rankme": float(rankme(x))})  # fmt: skip
    timings = {"persistence_rankme_s": time.perf_counter() - start}
    if with_ww:
        ww, timings["weightwatcher_s"] = _study_weight_scores(seed_dir, epoch)
        scores.update(ww)
    seed = int(seed_dir.name[len("seed") :])
    out = {
        "name": name,
        "spec": {"seed": seed, "epoch": epoch, "n_train": _study_protocol().get("train_sentences")},
        "scores": scores,
        "timings": timings,
    }
    _write_study_cache(cache, out)
    print(f"{name}: val acc {scores['val_acc']:.3f}, alpha {scores.get('ww/alpha', math.nan):.2f}, RankMe {scores['rankme']:.1f} "
          f"({sum(timings.values()):.0f} s)", flush=True)  # fmt: skip
    return out


def _study_weight_scores(seed_dir: Path, epoch: int) -> tuple[dict[str, float], float]:
    """WeightWatcher's scores of one saved study model and the seconds they took (load included)."""
    start = time.perf_counter()
    return weight_scores(load_model(seed_dir / f"epoch{epoch}_model")), time.perf_counter() - start


def _study_protocol() -> dict[str, Any]:
    """The recorded study's protocol (``benchmarks/results/early_stopping.json``), or ``{}``."""
    path = ROOT / "benchmarks" / "results" / "early_stopping.json"
    return json.loads(path.read_text(encoding="utf-8")).get("protocol", {}) if path.exists() else {}


def _write_study_cache(cache: Path, row: dict[str, Any]) -> None:
    STUDY_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(row, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, cache)


def study_report(args: argparse.Namespace) -> int:
    """Scoreboard of the early-stopping study's models: Spearman vs val acc and vs test acc."""
    from lightning_topo.analysis import write_text_atomic

    rows = []
    for seed_dir in sorted(p for p in STUDY.glob("seed*") if p.is_dir()):
        for scored in sorted(seed_dir.glob("epoch*_scores.json")):
            r = json.loads(scored.read_text(encoding="utf-8"))
            if (seed_dir / f"epoch{int(r['epoch'])}_model").exists():
                rows.append(study_row(seed_dir, int(r["epoch"]), r, args.weightwatcher))
    if len(rows) < 3:
        print(f"{len(rows)} study models scored; run benchmarks/early_stopping.py (--record, --analyze) first",
              file=sys.stderr)  # fmt: skip
        return 1
    out: dict[str, Any] = {}
    keys = [k for k in STUDY_SCORES if all(k in r["scores"] for r in rows)]
    for target in ("val_acc", "test_acc"):
        acc = np.array([r["scores"][target] for r in rows])
        out[target] = {k: score_statistics(np.array([r["scores"][k] for r in rows]), acc, args.bootstrap, args.seed)
                       for k in keys}  # fmt: skip
    print(f"\n{len(rows)} study models (seeds x epochs): Spearman vs val acc / test acc [95% CI]")
    for k in keys:
        label = STUDY_SCORES[k]
        v, t = out["val_acc"][k], out["test_acc"][k]
        print(f"{label:<34} {v['spearman']:+.2f} [{v['spearman_ci95'][0]:+.2f}, {v['spearman_ci95'][1]:+.2f}]   "
              f"{t['spearman']:+.2f} [{t['spearman_ci95'][0]:+.2f}, {t['spearman_ci95'][1]:+.2f}]")  # fmt: skip
    sp = _study_protocol()
    payload = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                    "load_avg_1min_at_end": os.getloadavg()[0]},
        "protocol": {"models": f"benchmarks/early_stopping.py: MiniLM fine-tuned on {sp.get('train_sentences')} "
                               f"sentences ({sp.get('frozen_layers')} lowest layers frozen), every seed x epoch",
                     "val_acc": f"on the seed's {sp.get('val_test_sentences')}-sentence validation subset",
                     "test_acc": f"the seed's {sp.get('val_test_sentences')}-sentence test subset",
                     "weightwatcher": "weightwatcher 0.7.7 analyze() defaults, get_summary alpha / alpha_weighted",
                     "rankme": "lightning_topo.scores.rankme on the val [CLS] vectors of the last layer",
                     "statistics": f"bootstrap over models ({args.bootstrap} draws); epochs of one seed are not "
                                   "independent models, so the CIs are optimistic"},
        "models": rows, "statistics": out,
    }  # fmt: skip
    write_text_atomic(args.results, json.dumps(_json_ready(payload), indent=1, allow_nan=False) + "\n",
                      overwrite=True)  # fmt: skip
    draw_scoreboard(rows, out, args.figure)
    print(f"\nwrote {args.results} and {args.figure}")
    return 0


def draw_scoreboard(rows: list[dict[str, Any]], stats: dict[str, Any], path: Path) -> Path:
    """Scores x models (models sorted by val acc; each score's values as ranks 0..1) and the
    Spearman of each score with val acc and test acc, with 95 % CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["scores"]["val_acc"])
    keys = list(stats["val_acc"])
    grid = np.array([[r["scores"][k] for r in rows] for k in keys], dtype=float)
    ranks = grid.argsort(axis=1).argsort(axis=1) / max(1, len(rows) - 1)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 5.2), gridspec_kw={"width_ratios": [2.2, 1]})
    im = ax.imshow(ranks, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(keys)), [STUDY_SCORES[k] for k in keys], fontsize=8)
    ax.set_xticks(range(len(rows)), [f"{r['scores']['val_acc']:.2f}" for r in rows], fontsize=6, rotation=90)
    ax.set_xlabel("models, sorted by val acc (tick = val acc)", fontsize=8)
    ax.set_title("each score's rank across models (0 = lowest, 1 = highest)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.025)
    y = np.arange(len(keys))
    for off, target, colour in ((-0.18, "val_acc", "tab:blue"), (0.18, "test_acc", "tab:orange")):
        rho = np.array([stats[target][k]["spearman"] for k in keys])
        ci = np.array([stats[target][k]["spearman_ci95"] for k in keys])
        bx.errorbar(rho, y + off, xerr=[rho - ci[:, 0], ci[:, 1] - rho], fmt="o", color=colour, ms=4,
                    capsize=2, label=f"vs {target.replace('_', ' ')}")  # fmt: skip
    bx.axvline(0, color="grey", lw=0.8)
    bx.set_yticks(y, [""] * len(keys))
    bx.set_ylim(ax.get_ylim())
    bx.set_xlim(-1, 1)
    bx.set_xlabel("Spearman [95 % CI]", fontsize=8)
    bx.legend(fontsize=7, loc="lower left")
    fig.suptitle(
        f"{len(rows)} fine-tuned MiniLM classifiers (benchmarks/early_stopping.py, seeds x epochs)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- statistics


def _corr(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Pearson and Spearman (NaN when either side is constant)."""
    from scipy.stats import pearsonr, spearmanr

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    return float(pearsonr(x, y)[0]), float(spearmanr(x, y)[0])


def order_agreement(score: np.ndarray, acc: np.ndarray) -> dict[str, Any]:
    """Share of model pairs (distinct val acc) that the score orders as val acc does.

    A tie in the score counts one half. ``direction``: ``"higher"`` when the share is above 0.5
    (a higher score goes with a higher accuracy), ``"lower"`` below, ``"none"`` at 0.5.
    """
    agree, pairs = 0.0, 0
    for i, j in itertools.combinations(range(len(acc)), 2):
        da, ds = np.sign(acc[i] - acc[j]), np.sign(score[i] - score[j])
        if da == 0:
            continue
        pairs += 1
        agree += 0.5 if ds == 0 else float(ds == da)
    share = agree / pairs if pairs else math.nan
    direction = "none" if not pairs or share == 0.5 else ("higher" if share > 0.5 else "lower")
    return {"share": share, "pairs": pairs, "direction": direction}


def score_statistics(score: np.ndarray, acc: np.ndarray, draws: int, seed: int) -> dict[str, Any]:
    """Pearson, Spearman with percentile bootstrap 95 % CIs (resampling models), order agreement."""
    pearson, spearman = _corr(score, acc)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(draws):
        idx = rng.integers(0, len(acc), len(acc))
        boot.append(_corr(score[idx], acc[idx]))
    boot_arr = np.array(boot)
    valid = ~np.isnan(boot_arr).any(axis=1)

    def ci(column: int) -> list[float] | None:
        return (
            None
            if not valid.any()
            else [float(np.percentile(boot_arr[valid, column], q)) for q in (2.5, 97.5)]
        )

    return {
        "n_models": len(acc),
        "pearson": pearson,
        "pearson_ci95": ci(0),
        "spearman": spearman,
        "spearman_ci95": ci(1),
        "bootstrap_draws_used": int(valid.sum()),
        "order_agreement": order_agreement(score, acc),
    }


def statistics(rows: list[dict[str, Any]], draws: int, seed: int, min_acc: float = 0.0) -> dict[str, Any]:
    """:func:`score_statistics` of every score in :data:`SCORES` over the models with val acc >= ``min_acc``."""
    kept = [r for r in rows if r["scores"]["val_acc"] >= min_acc]
    acc = np.array([r["scores"]["val_acc"] for r in kept])
    out = {}
    for key in SCORES:
        values = np.array([r["scores"].get(key, math.nan) for r in kept], dtype=float)
        if len(kept) < 3 or np.isnan(values).any():
            out[key] = {"n_models": len(kept), "skipped": "fewer than 3 models or missing values"}
            continue
        out[key] = score_statistics(values, acc, draws, seed)
    return out


# ----------------------------------------------------------------------------- report


def print_table(stats: dict[str, Any], title: str) -> None:
    """One line per score: Pearson, Spearman (CIs) and order agreement."""
    print(f"\n{title}")
    print(f"{'score':<38} {'Pearson [95% CI]':>24} {'Spearman [95% CI]':>24} {'order agr.':>10}")
    for key, s in stats.items():
        if "skipped" in s:
            print(f"{SCORES[key]:<38} skipped: {s['skipped']}")
            continue

        def fmt(v: float, ci: list[float] | None) -> str:
            return f"{v:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else f"{v:+.2f} [n/a]"

        agr = s["order_agreement"]
        print(
            f"{SCORES[key]:<38} {fmt(s['pearson'], s['pearson_ci95']):>24} "
            f"{fmt(s['spearman'], s['spearman_ci95']):>24} {agr['share']:>9.2f}{agr['direction'][0]}"
        )


def draw_figure(rows: list[dict[str, Any]], stats: dict[str, Any], path: Path) -> Path:
    """Scatter of the default PSF vs val acc (large, points labelled by training sentences) and
    small panels for :data:`PANELS`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 6.5))
    grid = fig.add_gridspec(2, 5)
    axes = [fig.add_subplot(grid[:, :2])] + [fig.add_subplot(grid[i // 3, 2 + i % 3]) for i in range(6)]
    acc = [r["scores"]["val_acc"] for r in rows]
    for ax, key in zip(axes, ("topo/psf", *PANELS), strict=True):
        values = [r["scores"].get(key, math.nan) for r in rows]
        ax.scatter(acc, values, c=[math.log10(1 + r["spec"]["n_train"]) for r in rows], cmap="viridis", s=28)
        if key == "topo/psf":
            for a, v, r in zip(acc, values, rows, strict=True):
                ax.annotate(
                    str(r["spec"]["n_train"]), (a, v), fontsize=7, xytext=(3, 2), textcoords="offset points"
                )
        s = stats.get(key, {})
        rho = f"Spearman {s['spearman']:+.2f}" if "spearman" in s else ""
        ax.set_title(f"{SCORES[key]}\n{rho}", fontsize=10 if key == "topo/psf" else 8)
        ax.set_xlabel("val acc", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("topo/psf (mean of 5 re-draws)")
    fig.suptitle(
        f"{len(rows)} MiniLM classifiers on the embedded Rotten Tomatoes data (labels and colour: training sentences)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    parser.add_argument("--out-dir", type=Path, default=None, help=f"model cache (default {OUT_DIR})")
    parser.add_argument("--results", type=Path, default=None, help=f"JSON (default {RESULTS})")
    parser.add_argument("--figure", type=Path, default=None, help=f"PNG (default {FIGURE})")
    parser.add_argument("--models", nargs="*", default=None, help="names from the grid to train/score")
    parser.add_argument("--max-models", type=int, default=None, help="only the first N models of the grid")
    parser.add_argument("--val-limit", type=int, default=None, help="score on a subset of the val split")
    parser.add_argument(
        "--train-score-size", type=int, default=1200, help="training sentences for PSF(train)"
    )
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap draws")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--report-only", action="store_true", help="statistics of the models already scored")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 tiny models, temp dir, 128 val")
    parser.add_argument("--list", action="store_true", help="print the grid and exit")
    parser.add_argument(
        "--from-study", action="store_true", help="score benchmarks/early_stopping.py's saved models"
    )
    parser.add_argument(
        "--no-weightwatcher", dest="weightwatcher", action="store_false",
        help="--from-study without WeightWatcher (its cost on a loaded machine)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.from_study:
        args.results, args.figure = args.results or RESULTS_STUDY, args.figure or FIGURE_STUDY
        return args
    for name in ("threads", "max_models", "val_limit", "train_score_size", "bootstrap"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; got {value}")
    if args.quick:
        tmp = Path(tempfile.gettempdir()) / "psf_across_models_quick"
        args.out_dir = args.out_dir or tmp / "models"
        args.results, args.figure = (
            args.results or tmp / "psf_across_models.json",
            args.figure or tmp / "fig.png",
        )
        args.val_limit, args.train_score_size = args.val_limit or 128, min(args.train_score_size, 128)
    elif args.val_limit and None in (args.results, args.out_dir, args.figure):
        parser.error(
            "--val-limit scores on a subset: give --out-dir, --results and --figure (not the published ones)"
        )
    args.out_dir, args.results, args.figure = (
        args.out_dir or OUT_DIR,
        args.results or RESULTS,
        args.figure or FIGURE,
    )
    return args


def selected_grid(args: argparse.Namespace) -> list[ModelSpec]:
    """The grid, or ``--quick``'s, filtered by ``--models`` and cut to ``--max-models``."""
    grid = list(QUICK_GRID if args.quick else GRID)
    if args.models:
        known = {s.name: s for s in grid}
        unknown = [m for m in args.models if m not in known]
        if unknown:
            raise SystemExit(f"--models: unknown {unknown}; the grid has {sorted(known)}")
        grid = [known[m] for m in args.models]
    return grid[: args.max_models] if args.max_models else grid


def scoring_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a cached ``scores.json`` must match to be reused."""
    return {"val_limit": args.val_limit, "train_score_size": args.train_score_size, "version": 1}


def run_model(
    spec: ModelSpec, args: argparse.Namespace, data: ScoringData | None
) -> tuple[dict, ScoringData]:
    """Train (unless cached) and score (unless cached with the same settings) one model."""
    from lightning_topo.analysis import write_text_atomic

    folder = args.out_dir / spec.name
    cached = folder / "scores.json"
    if cached.exists():
        row = json.loads(cached.read_text(encoding="utf-8"))
        if row.get("settings") == scoring_settings(args):
            print(f"{spec.name}: cached (val acc {row['scores']['val_acc']:.3f})", flush=True)
            return row, data
    train_info = {}
    if not (folder / "model").exists():
        folder.mkdir(parents=True, exist_ok=True)
        train_info = train_model(spec, folder / "model")
        (folder / "train.json").write_text(json.dumps(train_info), encoding="utf-8")
        print(f"{spec.name}: trained in {train_info['train_s']:.0f} s", flush=True)
    elif (folder / "train.json").exists():
        train_info = json.loads((folder / "train.json").read_text(encoding="utf-8"))
    data = data or scoring_data(args.val_limit, args.train_score_size)
    row = {"name": spec.name, "spec": asdict(spec), "settings": scoring_settings(args), **train_info}
    row.update(score_model(folder / "model", data))
    row["data"] = data.settings
    write_text_atomic(cached, json.dumps(row, indent=1) + "\n", overwrite=True)
    s = row["scores"]
    print(f"{spec.name}: val acc {s['val_acc']:.3f}, PSF {s['topo/psf']:.4f}, scored in "
          f"{sum(row['timings'].values()):.0f} s", flush=True)  # fmt: skip
    return row, data


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Statistics, table, JSON and figure of the scored models."""
    from lightning_topo.analysis import write_text_atomic

    stats = statistics(rows, args.bootstrap, args.seed)
    good = statistics(rows, args.bootstrap, args.seed, min_acc=0.75)
    print_table(stats, f"all {len(rows)} models: score vs val acc")
    print_table(good, f"models with val acc >= 0.75 ({sum(r['scores']['val_acc'] >= 0.75 for r in rows)})")
    payload = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())},
        "protocol": protocol(args),
        "models": [{k: r[k] for k in ("name", "spec", "train_s", "train_score_overlap", "timings", "scores")
                    if k in r} for r in rows],
        "totals": {"train_s": sum(r.get("train_s", 0.0) for r in rows),
                   "score_s": sum(sum(r["timings"].values()) for r in rows)},
        "ranking_by_abs_spearman": sorted((k for k in stats if "spearman" in stats[k]),
                                          key=lambda k: -abs(stats[k]["spearman"])),
        "statistics": stats,
        "statistics_val_acc_ge_0.75": good,
    }  # fmt: skip
    write_text_atomic(args.results, json.dumps(_json_ready(payload), indent=1, allow_nan=False) + "\n",
                      overwrite=True)  # fmt: skip
    draw_figure(rows, stats, args.figure)
    print(f"\nwrote {args.results} and {args.figure}")
    return payload


def _json_ready(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def protocol(args: argparse.Namespace) -> dict[str, Any]:
    """How the models were built and scored (for the JSON)."""
    return {
        "model": "embedded all-MiniLM-L6-v2 + fresh classification head (seeded)",
        "data": "embedded Rotten Tomatoes; train subsets stratified, seeded by the model's seed",
        "training": f"AdamW lr {LEARNING_RATE}, warmup 0.1 + linear decay, batch 32, max_length {MAX_LENGTH}",
        "grid": [asdict(s) for s in (QUICK_GRID if args.quick else GRID)],
        "val_acc": "accuracy on the validation split (1,057 sentences unless val_limit)",
        "psf_default": "analyze(scores=('psf','geometry'), layers=[-1]): [CLS], last layer, val split, "
        "<= 512 points per class, resamples=5, seed 0 (PersistenceScoreMonitor's defaults)",
        "psf_mean_pooling": "the same with pooling='mean'",
        "psf_train_split": f"the default on a fixed stratified subset of {args.train_score_size} training "
        "sentences (data seed 42), the same for every model; train_score_overlap = share of it the model trained on",
        "geometry": "GeometryMonitor's scores of the last layer (analyze, whole val split)",
        "concepts": "ConceptAlignmentMonitor defaults, last layer: 1,000 val tokens (seed 0), K = 50, theta 0.9, "
        "reference = the pre-trained MiniLM",
        "tree_probe": "TreeProbeMonitor defaults, last layer: 256 val sentences, MONITOR_BUDGET, seed 0",
        "statistics": f"Pearson / Spearman vs val acc; percentile bootstrap 95% CI over models "
        f"({args.bootstrap} draws, seed {args.seed}; draws where a side is constant are dropped); order "
        "agreement = share of model pairs with distinct val acc ordered alike (score ties count 1/2)",
        "val_limit": args.val_limit,
        "lenses_skipped": "none: scoring a model took 41-83 s in all (1 thread, shared machine), "
        "the concept and tree-probe lenses about 1-12 s of it",
        "ties": "the 0-sentence models share the pre-trained encoder (only the head differs), so every "
        "score but val acc is the same for them",
        "subset": "statistics_val_acc_ge_0.75 repeats the statistics over the models with val acc >= 0.75 "
        "(threshold fixed before the run)",
    }


def cached_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The cached scores of every model of the grid scored with the present settings, in grid order."""
    rows = []
    for spec in QUICK_GRID if args.quick else GRID:
        cached = args.out_dir / spec.name / "scores.json"
        if cached.exists():
            row = json.loads(cached.read_text(encoding="utf-8"))
            if row.get("settings") == scoring_settings(args):
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_study:
        if args.threads:
            torch.set_num_threads(args.threads)
        return study_report(args)
    grid = selected_grid(args)
    if args.list:
        print("\n".join(f"{s.name}: {s.n_train} sentences, {s.epochs} epochs, seed {s.seed}" for s in grid))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    data = None
    for spec in [] if args.report_only else grid:
        _, data = run_model(spec, args, data)
    # the report covers every model of the grid scored so far with these settings (runs in parts add up)
    rows = cached_rows(args)
    if len(rows) < 3:
        print(f"{len(rows)} models scored; statistics need at least 3", file=sys.stderr)
        return 1 if args.report_only else 0
    report(rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
