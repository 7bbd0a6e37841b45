"""Which stopping rule picks the best model? One long run per seed, every rule applied post hoc.

Setup (issue 26, item 3): the embedded all-MiniLM-L6-v2 with a fresh, seeded head, fine-tuned on a
seeded, stratified 600-sentence subset of the embedded Rotten Tomatoes training split for
``--epochs`` (4) epochs, AdamW at lr 5e-4 (warmup 0.1 + linear decay; at the quickstart's 1e-4 the
top 2 layers alone reached val acc 0.53-0.61 after one epoch and would not overfit in time),
batch 32, max_length 64 -- a schedule long enough for val loss to turn up. ``--seeds`` (0..4) seed
the subsets, the head and the training order. **CPU budget** (2 cores shared by several jobs): the
embeddings and the lower ``--frozen-layers`` (4) encoder layers are frozen (the top 2 layers and
the head are fine-tuned), and validation and test are seeded, stratified 400-sentence subsets of
their splits (``--val-limit``); PSF on the validation set is then measured on ~200 points per
class (below the cap, so the re-draw spread is 0 and ``psf/std`` is all from the examples).

**One training run per seed** records, at the end of every epoch, everything any rule looks at:
val loss / acc (Lightning's logged values), the [CLS] vectors of the last layer of every validation
sentence (from the validation forward itself), the same for a fixed 200-sentence subset of the
model's own training sentences (BERTops' setting: no held-out labels), the last layer's cone index
(mean over validation sentences, ``GeometryMonitor``'s definition: layer output, normalised), and
the **test**-split accuracy of that epoch's model. A stopping rule only decides when to stop, so
the trajectory before its stop is the same as in the full run: applying every rule afterwards to
the recorded series is exact for patience rules (nothing is approximated by not re-training).

Scoring (``--analyze``): PSF on val and on the train subset with the library's
``persistence_metrics`` (the monitor's defaults: cap 512 per class, 5 re-draws) and its standard
error ``psf/std`` (half-sampling over examples, ``docs/psf.md``). Then the rules:

* fixed epochs (2, 3, and all ``--epochs``), the model of the last epoch;
* ``EarlyStopping(val/loss, min)``, ``EarlyStopping(val/acc, max)``: Lightning's rule (an
  improvement is a change beyond ``min_delta = 0``; ``patience`` checks without one stop);
* ``PSFEarlyStopping(mode="min")`` on val PSF with the new std for several ``k_sigma`` (its rule:
  an improvement must exceed ``k * sqrt(std_now^2 + std_best^2)``);
* the same on the train-split PSF;
* ``EarlyStopping(cone, max)`` on the last-layer cone index (it rose with accuracy across models).

The chosen model of a rule is the best epoch *by the rule's own metric* among the epochs it trained
(``ModelCheckpoint(monitor=same metric)``, what users pair with ``EarlyStopping``); ``last`` (the
model at the stop) is in the JSON too. Per rule: epochs trained, test accuracy of the chosen
model, regret = test accuracy of the oracle epoch (best test accuracy of the run) minus the
chosen one, compute saved = 1 - epochs trained / ``--epochs``; mean +- sd over seeds, and paired
differences against ``EarlyStopping(val/loss)`` and against the full schedule with percentile
bootstrap 95 % CIs over seeds.

Usage::

    nice -n 10 .venv/bin/python benchmarks/early_stopping.py --record --seeds 0 2 4 --threads 1 &
    nice -n 10 .venv/bin/python benchmarks/early_stopping.py --record --seeds 1 3 --threads 1 &
    .venv/bin/python benchmarks/early_stopping.py --analyze       # scores + rules -> JSON
    .venv/bin/python benchmarks/early_stopping.py --quick          # smoke run in a temp dir

Per-seed recordings go to ``outputs/early_stopping/seed{s}/`` (one ``.npz`` per epoch and a
``done.json``); a seed with ``done.json`` is not re-trained, so runs resume per seed. Writes
``benchmarks/results/early_stopping.json``.
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

RESULTS = ROOT / "benchmarks" / "results" / "early_stopping.json"
OUT_DIR = ROOT / "outputs" / "early_stopping"
LEARNING_RATE = (
    5.0e-4  # the top 2 layers only: 5x the quickstart's 1e-4, so that val loss turns up within 4 epochs
)
MAX_LENGTH = 64
TRAIN_SENTENCES = 600
TRAIN_SCORE_SENTENCES = 200
EVAL_SENTENCES = 400
FROZEN_LAYERS = 4  # embeddings and encoder layers 1-4 frozen: the CPU budget of a shared machine


# ----------------------------------------------------------------------------- recording


def _recorder(dm: Any, folder: Path, train_score_loader: Any) -> Any:
    """A callback saving, at every epoch's validation end, what every rule needs (see module doc)."""
    import lightning.pytorch as pl

    from lightning_topo.scores.geometry import cone_index

    class Recorder(pl.Callback):
        def __init__(self) -> None:
            self.cls: list[torch.Tensor] = []
            self.labels: list[torch.Tensor] = []
            self.cone: list[torch.Tensor] = []
            self.start = time.perf_counter()

        def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.cls, self.labels, self.cone = [], [], []

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            last = outputs.hidden_states[-1].detach()
            self.cls.append(last[:, 0].float().cpu())
            self.labels.append(outputs.labels.detach().cpu())
            self.cone.append(cone_index(last.float(), outputs.attention_mask, True).double().cpu())

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking:
                return
            epoch = trainer.current_epoch
            train_s = time.perf_counter() - self.start
            m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
            test_acc, test_loss, _, _ = _evaluate(pl_module, dm.dataloader("test"))
            _, _, tr_cls, tr_labels = _evaluate(pl_module, train_score_loader)
            np.savez_compressed(
                folder / f".epoch{epoch}.tmp.npz",
                val_cls=torch.cat(self.cls).numpy(),
                val_labels=torch.cat(self.labels).numpy(),
                val_cone=torch.cat(self.cone).numpy(),
                train_cls=tr_cls.numpy(),
                train_labels=tr_labels.numpy(),
                scalars=json.dumps(
                    {
                        **m,
                        "test/acc": test_acc,
                        "test/loss": test_loss,
                        "epoch": epoch,
                        "wall_s_since_start": train_s,
                    }
                ),  # fmt: skip
            )
            os.replace(folder / f".epoch{epoch}.tmp.npz", folder / f"epoch{epoch}.npz")
            # the weights too: benchmarks/psf_across_models.py and attack.py reuse these models
            tmp_model = folder / f".epoch{epoch}_model.tmp"
            pl_module.model.save_pretrained(tmp_model)
            os.replace(tmp_model, folder / f"epoch{epoch}_model")
            print(f"{folder.name} epoch {epoch}: val loss {m.get('val/loss', math.nan):.4f} acc "
                  f"{m.get('val/acc', math.nan):.4f} test acc {test_acc:.4f} ({train_s:.0f} s)", flush=True)  # fmt: skip

    return Recorder()


def _evaluate(module: Any, loader: Any) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """Accuracy, mean cross-entropy, last-layer [CLS] vectors and labels of ``module`` on ``loader``."""
    was_training = module.training
    module.eval()
    correct = total = 0
    loss = 0.0
    cls, labels = [], []
    with torch.no_grad():
        for batch in loader:
            enc = module.encode(batch)
            y = batch["labels"].to(enc.logits.device)
            correct += int((enc.logits.argmax(-1) == y).sum())
            loss += float(torch.nn.functional.cross_entropy(enc.logits, y, reduction="sum"))
            total += int(y.numel())
            cls.append(enc.hidden_states[-1][:, 0].float().cpu())
            labels.append(y.cpu())
    module.train(was_training)
    return correct / total, loss / total, torch.cat(cls), torch.cat(labels)


def record_seed(seed: int, args: argparse.Namespace) -> None:
    """Train one seed for ``args.epochs`` epochs, saving every epoch's recording (skipped when done)."""
    import lightning.pytorch as pl

    from lightning_topo.models import SequenceClassifier, TextClassificationDataModule

    folder = args.out_dir / f"seed{seed}"
    if (folder / "done.json").exists():
        print(f"seed {seed}: recorded already", flush=True)
        return
    folder.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(seed, verbose=False)
    limits = {
        "train": args.train_sentences,
        **({"val": args.val_limit, "test": args.val_limit} if args.val_limit else {}),
    }
    dm = TextClassificationDataModule(
        max_length=MAX_LENGTH, batch_size=32, eval_batch_size=128, limit=limits, seed=seed
    )
    dm.setup("fit")
    dm.setup("test")
    # a fixed subset of the model's own training sentences (stratified by taking every k-th row)
    n_train = len(dm.split_texts("train"))
    step = max(1, n_train // args.train_score_sentences)
    subset = torch.utils.data.Subset(
        dm._dataset("train"), list(range(0, n_train, step))[: args.train_score_sentences]
    )
    from transformers import DataCollatorWithPadding

    train_score_loader = torch.utils.data.DataLoader(
        subset, batch_size=128, collate_fn=DataCollatorWithPadding(dm.tokenizer, return_tensors="pt")
    )
    model = SequenceClassifier(num_labels=2, learning_rate=args.learning_rate, warmup_ratio=0.1)
    frozen = [model.model.bert.embeddings, *model.model.bert.encoder.layer[: args.frozen_layers]]
    for module in frozen:
        module.requires_grad_(False)
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, precision="32-true", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[_recorder(dm, folder, train_score_loader)],
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    info = {"seed": seed, "epochs": args.epochs, "wall_s": time.perf_counter() - start,
            "train_sentences": n_train, "train_score_sentences": len(subset),
            "val_sentences": len(dm.split_texts("val")), "test_sentences": len(dm.split_texts("test")),
            "threads": torch.get_num_threads(), "learning_rate": args.learning_rate,
            "frozen_layers": args.frozen_layers}  # fmt: skip
    (folder / "done.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    print(f"seed {seed}: done in {info['wall_s']:.0f} s", flush=True)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", action="store_true", help="train and record the seeds")
    parser.add_argument("--analyze", action="store_true", help="score the recordings and apply the rules")
    parser.add_argument(
        "--watch", action="store_true", help="score epochs as they are recorded (beside --record)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--train-sentences", type=int, default=TRAIN_SENTENCES)
    parser.add_argument("--train-score-sentences", type=int, default=TRAIN_SCORE_SENTENCES)
    parser.add_argument(
        "--val-limit", type=int, default=EVAL_SENTENCES, help="val and test subset (seeded, stratified)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--frozen-layers", type=int, default=FROZEN_LAYERS, help="lower encoder layers frozen (+ embeddings)"
    )
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--bootstrap", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, 3 epochs, temp dir")
    args = parser.parse_args(argv)
    if args.quick:
        tmp = Path(tempfile.gettempdir()) / "early_stopping_quick"
        args.out_dir = args.out_dir or tmp / "runs"
        args.results = args.results or tmp / "early_stopping.json"
        args.epochs, args.train_sentences, args.train_score_sentences = 3, 64, 32
        args.val_limit, args.seeds = 64, args.seeds[:2]
        args.record = args.analyze = True
    args.out_dir = args.out_dir or OUT_DIR
    args.results = args.results or RESULTS
    if not (args.record or args.analyze or args.watch):
        args.record = args.analyze = True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.record:
        for seed in args.seeds:
            record_seed(seed, args)
    if args.watch:
        watch(args)
    if args.analyze:
        analyze(args)
    return 0


# ----------------------------------------------------------------------------- scoring


def load_seed(folder: Path) -> list[dict[str, Any]]:
    """The recorded epochs of one seed, in order."""
    epochs = []
    for e in range(10_000):
        f = folder / f"epoch{e}.npz"
        if not f.exists():
            break
        z = np.load(f)
        epochs.append({**{k: z[k] for k in z.files if k != "scalars"}, **json.loads(str(z["scalars"]))})
    return epochs


def score_epoch(folder: Path, epoch: int) -> dict[str, float]:
    """One epoch's val/test scalars, PSF (val, train subset) with ``psf/std``, cone (cached)."""
    from lightning_topo.scores import persistence_metrics

    cache = folder / f"epoch{epoch}_scores.json"
    if cache.exists():
        return json.loads(cache.read_text(encoding="utf-8"))
    z = np.load(folder / f"epoch{epoch}.npz")
    ep = {**{k: z[k] for k in z.files if k != "scalars"}, **json.loads(str(z["scalars"]))}
    row = {k: ep[k] for k in ("epoch", "val/loss", "val/acc", "test/acc", "test/loss", "wall_s_since_start")}
    for split in ("val", "train"):
        x = torch.from_numpy(ep[f"{split}_cls"]).double()
        y = torch.from_numpy(ep[f"{split}_labels"]).long()
        start = time.perf_counter()
        m = persistence_metrics({6: x}, y, scores=("psf",), homology_dims=(0,), resamples=5)
        row[f"psf_{split}"] = float(m.values["psf"])
        row[f"psf_{split}/std"] = float(m.values["psf/std"])
        row[f"psf_{split}/redraw_std"] = float(m.redraw_std["psf"])
        row[f"psf_{split}/seconds"] = time.perf_counter() - start
    row["cone"] = float(np.mean(ep["val_cone"]))
    tmp = cache.with_name(f".{cache.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(row, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, cache)
    return row


def recorded_epochs(folder: Path) -> int:
    """Number of consecutive epochs recorded in ``folder`` (0, 1, ...)."""
    e = 0
    while (folder / f"epoch{e}.npz").exists():
        e += 1
    return e


def score_seed(folder: Path, epochs: int | None = None) -> list[dict[str, float]]:
    """The scored rows of the first ``epochs`` recorded epochs (all recorded when ``None``)."""
    n = recorded_epochs(folder) if epochs is None else epochs
    return [score_epoch(folder, e) for e in range(n)]


def watch(args: argparse.Namespace) -> None:
    """Score each epoch as soon as it is recorded, until every seed is done (runs beside --record)."""
    while True:
        pending = False
        for seed in args.seeds:
            folder = args.out_dir / f"seed{seed}"
            for e in range(recorded_epochs(folder) if folder.exists() else 0):
                if not (folder / f"epoch{e}_scores.json").exists():
                    score_epoch(folder, e)
                    print(f"scored seed {seed} epoch {e}", flush=True)
            pending |= not (folder / "done.json").exists()
        if not pending:
            return
        time.sleep(20)


# ----------------------------------------------------------------------------- the rules


def lightning_rule(values: list[float], mode: str, patience: int) -> int:
    """Index of the epoch at which Lightning's own ``EarlyStopping`` stops (last index if never)."""
    from lightning.pytorch.callbacks import EarlyStopping

    es = EarlyStopping(monitor="m", mode=mode, patience=patience, min_delta=0.0)
    for e, v in enumerate(values):
        if es._evaluate_stopping_criteria(torch.tensor(v, dtype=torch.float64))[0]:
            return e
    return len(values) - 1


def psf_rule(values: list[float], stds: list[float], k: float, patience: int, counts: str) -> int:
    """Index of the epoch at which ``PSFEarlyStopping(mode="min")`` stops (its own ``decide``)."""
    from lightning_topo.callbacks import PSFEarlyStopping

    es = PSFEarlyStopping(mode="min", k_sigma=k, patience=patience, patience_counts=counts)
    for e, (v, sd) in enumerate(zip(values, stds, strict=True)):
        if es.decide(torch.tensor(v, dtype=torch.float64), sd)[0]:
            return e
    return len(values) - 1


def rules(rows: list[dict[str, float]], epochs: int) -> dict[str, dict[str, Any]]:
    """Every rule's stop epoch and chosen epochs (``best`` by its metric among the trained, ``last``)."""
    col = {k: [r[k] for r in rows] for k in rows[0]}
    out: dict[str, dict[str, Any]] = {}

    def add(name: str, stop: int, metric: str | None, mode: str) -> None:
        trained = list(range(stop + 1))
        if metric is None:
            best = stop
        else:
            vals = [col[metric][e] for e in trained]
            best = int(np.argmin(vals) if mode == "min" else np.argmax(vals))
        out[name] = {"stop_epoch": stop, "epochs_trained": stop + 1, "best": best, "last": stop}

    for e in sorted({2, 3, epochs}):
        if e <= len(rows):
            add(f"fixed_{e}", e - 1, None, "min")
    for p in (1, 2, 3):
        add(f"es_val_loss_p{p}", lightning_rule(col["val/loss"], "min", p), "val/loss", "min")
        add(f"es_val_acc_p{p}", lightning_rule(col["val/acc"], "max", p), "val/acc", "max")
        add(f"es_cone_p{p}", lightning_rule(col["cone"], "max", p), "cone", "max")
        add(f"es_psf_plain_p{p}", lightning_rule(col["psf_val"], "min", p), "psf_val", "min")
        for counts in ("not_better", "worse"):
            for k in (0.5, 1.0, 2.0, 3.0):
                tag = "" if counts == "not_better" else "_worse"
                add(f"psf_val_k{k:g}_p{p}{tag}",
                    psf_rule(col["psf_val"], col["psf_val/std"], k, p, counts), "psf_val", "min")  # fmt: skip
                add(f"psf_train_k{k:g}_p{p}{tag}",
                    psf_rule(col["psf_train"], col["psf_train/std"], k, p, counts), "psf_train", "min")  # fmt: skip
    return out


def _boot_ci(x: np.ndarray, draws: int, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    means = [float(np.mean(x[rng.integers(0, len(x), len(x))])) for _ in range(draws)]
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def summarize(per_seed: dict[int, dict[str, Any]], epochs: int, draws: int) -> dict[str, Any]:
    """Mean +- sd per rule over seeds, paired differences with bootstrap CIs."""
    seeds = sorted(per_seed)
    names = list(per_seed[seeds[0]]["rules"])
    table: dict[str, Any] = {}
    for name in names:
        for pick in ("best", "last"):
            acc, regret, trained = [], [], []
            for s in seeds:
                rows, r = per_seed[s]["rows"], per_seed[s]["rules"][name]
                test = [row["test/acc"] for row in rows]
                acc.append(test[r[pick]])
                regret.append(max(test) - test[r[pick]])
                trained.append(r["epochs_trained"])
            acc_a, reg_a, tr_a = np.array(acc), np.array(regret), np.array(trained, dtype=float)
            table[f"{name}/{pick}"] = {
                "test_acc": acc, "test_acc_mean": float(acc_a.mean()), "test_acc_sd": float(acc_a.std(ddof=1)),
                "regret_mean": float(reg_a.mean()), "regret_sd": float(reg_a.std(ddof=1)),
                "regret_ci95": _boot_ci(reg_a, draws),
                "epochs_trained": trained, "epochs_mean": float(tr_a.mean()), "epochs_sd": float(tr_a.std(ddof=1)),
                "compute_saved_mean": float(1 - tr_a.mean() / epochs),
            }  # fmt: skip
    for ref in ("es_val_loss_p2/best", f"fixed_{epochs}/best"):
        if ref not in table:
            continue
        for row in table.values():
            d = np.array(row["test_acc"]) - np.array(table[ref]["test_acc"])
            de = np.array(row["epochs_trained"], dtype=float) - np.array(table[ref]["epochs_trained"])
            row[f"vs_{ref.split('/')[0]}"] = {"test_acc_diff_mean": float(d.mean()), "test_acc_diff_ci95": _boot_ci(d, draws),
                                               "epochs_diff_mean": float(de.mean()), "epochs_diff_ci95": _boot_ci(de, draws)}  # fmt: skip
    return table


HEADLINE = (
    "fixed_2", "fixed_3", "fixed_{E}", "es_val_loss_p2", "es_val_acc_p2", "es_psf_plain_p2",
    "psf_val_k0.5_p2", "psf_val_k1_p2", "psf_val_k2_p2", "psf_val_k3_p2", "psf_val_k2_p2_worse",
    "psf_train_k2_p2", "es_cone_p2",
)  # fmt: skip


def print_table(table: dict[str, Any], epochs: int) -> None:
    print(f"\n{'rule (chosen = best by its metric)':<30} {'epochs':>10} {'test acc':>15} {'regret':>15} "
          f"{'saved':>6} {'vs ES(val/loss): acc diff [95% CI]':>36}")  # fmt: skip
    for name in dict.fromkeys(n.replace("{E}", str(epochs)) for n in HEADLINE):
        row = table.get(f"{name}/best")
        if row is None:
            continue
        vs = row.get("vs_es_val_loss_p2", {})
        ci = vs.get("test_acc_diff_ci95", [math.nan, math.nan])
        print(f"{name:<30} {row['epochs_mean']:>5.1f}±{row['epochs_sd']:<4.1f} {row['test_acc_mean']:>8.4f}±{row['test_acc_sd']:.4f} "
              f"{row['regret_mean']:>8.4f}±{row['regret_sd']:.4f} {row['compute_saved_mean']:>6.0%} "
              f"{vs.get('test_acc_diff_mean', math.nan):>+14.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]")  # fmt: skip


def analyze(args: argparse.Namespace) -> None:
    """Score every recorded seed, apply the rules, print the table, write the JSON."""
    from scipy.stats import spearmanr

    from lightning_topo.analysis import write_text_atomic

    per_seed: dict[int, dict[str, Any]] = {}
    folders = {s: args.out_dir / f"seed{s}" for s in args.seeds if (args.out_dir / f"seed{s}").exists()}
    available = {s: recorded_epochs(f) for s, f in folders.items()}
    # every seed is cut to the epochs all of them recorded (a run stopped by the time budget)
    epochs = min([args.epochs, *available.values()]) if available else 0
    if epochs < args.epochs:
        print(
            f"only {epochs} of {args.epochs} epochs recorded by every seed: the schedule is cut there",
            flush=True,
        )
    args.epochs_planned, args.epochs = args.epochs, epochs
    for seed, folder in folders.items():
        if epochs < 2:
            break
        rows = score_seed(folder, epochs)
        done = folder / "done.json"
        info = (
            json.loads(done.read_text(encoding="utf-8"))
            if done.exists()
            else {"complete": False, "recorded_epochs": available[seed]}
        )
        per_seed[seed] = {"info": info, "rows": rows, "rules": rules(rows, args.epochs),
                          "oracle_epoch": int(np.argmax([r["test/acc"] for r in rows])),
                          "val_loss_min_epoch": int(np.argmin([r["val/loss"] for r in rows])),
                          "spearman_psf_val_vs_val_acc": float(spearmanr([r["psf_val"] for r in rows], [r["val/acc"] for r in rows])[0]),
                          "spearman_psf_val_vs_test_acc": float(spearmanr([r["psf_val"] for r in rows], [r["test/acc"] for r in rows])[0])}  # fmt: skip
        print(f"seed {seed}: " + " | ".join(
            f"e{r['epoch']} vl {r['val/loss']:.3f} va {r['val/acc']:.3f} ta {r['test/acc']:.3f} psf {r['psf_val']:.4f}±{r['psf_val/std']:.4f} "
            f"tr {r['psf_train']:.4f} cone {r['cone']:.3f}" for r in rows), flush=True)  # fmt: skip
    if len(per_seed) < 2:
        print("fewer than 2 seeds recorded: no statistics", flush=True)
        return
    table = summarize(per_seed, args.epochs, args.bootstrap)
    print_table(table, args.epochs)
    payload = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                    "quiet": False},
        "protocol": {"model": "embedded all-MiniLM-L6-v2 + fresh seeded head", "epochs": args.epochs,
                     "epochs_planned": args.epochs_planned,
                     "train_sentences": args.train_sentences, "learning_rate": args.learning_rate,
                     "frozen_layers": args.frozen_layers, "val_test_sentences": args.val_limit,
                     "schedule": "AdamW, warmup 0.1 + linear decay, batch 32, max_length 64",
                     "psf": "persistence_metrics(scores=('psf',), resamples=5), cap 512, [CLS] last layer; "
                            "psf/std = half-sampling SE over examples (+ re-draw spread)",
                     "psf_train": f"the same on a fixed {args.train_score_sentences}-sentence subset of the model's training sentences",
                     "cone": "mean cone index (normalised) of the last layer's output over val sentences",
                     "chosen": "best = best epoch by the rule's own metric among the trained epochs "
                               "(ModelCheckpoint on that metric); last = the epoch at the stop",
                     "regret": "test acc of the oracle epoch (max test acc of the run) minus that of the chosen epoch",
                     "ci": f"percentile bootstrap over seeds, {args.bootstrap} draws", "seeds": sorted(per_seed)},
        "per_seed": per_seed, "rules": table,
    }  # fmt: skip
    write_text_atomic(args.results, json.dumps(payload, indent=1) + "\n", overwrite=True)
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    raise SystemExit(main())
