"""Latent-concept lens: its cost at BERT-base shape and on MiniLM, piece by piece, old vs new defaults.

The lens's own work per fit is: choosing the token set (a pass over the tokenised validation
batches, no model), the reference forward over the token set's sentences, one Ward clustering per
layer for the reference and per measurement (with the description: alignments, chance levels),
the extraction of the tokens' vectors from the validation forward (``update``), the JSON files and
figures, and the trigger experiment (optional). This script times each piece on the model of a
*case* -- ``bert-base`` (random weights, BERT-base shape: hidden 768, 12 layers, 12 heads, the
embedded MiniLM tokenizer, vocabulary 30,522) or ``minilm`` (the embedded all-MiniLM-L6-v2) -- on
the embedded Rotten Tomatoes validation split, for

* ``old``: the defaults before the port (1,000 tokens, every layer, scikit-learn Ward, triggers on
  with 2 classes x 3 variants x 64 sentences);
* ``new``: :class:`~lightning_topo.callbacks.ConceptAlignmentMonitor`'s defaults now (500 tokens,
  layers ``(0, -1)``, Ward from one matrix product + SciPy's NN-chain, triggers off).

**The fit it is compared with** is the issue's case: 1 epoch, 10 training steps of 32 sentences
of the 2,500-sentence training subset, and one validation pass over the split (``--val-limit``
sentences, default all 1,057), max_length 64. Its time is *estimated in the same run* from forward
passes of the same model: the seconds per padded token of a forward pass (measured on the
reference forward, which the lens runs anyway) times the padded tokens of the fit's validation
batches plus 3 x the padded tokens of its 10 training batches (a training step counted as 3
forward passes: the usual rule that a backward pass costs 2 forwards; the script also measures one
training step of 8 sentences against its forward, ``step_factor_measured``, which a loaded machine
makes too noisy to use: 1.2 and 27 in two runs). Forward passes of the triggers are counted the same
way (their token count is exact).
So every ratio is a ratio of times measured in the same process, minutes apart, on the same
shared machine; absolute seconds are *not* comparable across runs of a loaded machine.

Usage::

    .venv/bin/python benchmarks/lenses_concepts.py                       # bert-base and minilm cases
    .venv/bin/python benchmarks/lenses_concepts.py --cases minilm --quick  # a smoke run
    .venv/bin/python benchmarks/lenses.py --lenses concepts --repeats 3   # the measured quickstart fit

Writes ``benchmarks/results/lenses_concepts.json`` (``--out`` to change) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: (tokens, layers, engine, triggers per class) of each variant: ``layers`` None = every hidden state.
VARIANTS: dict[str, dict[str, Any]] = {
    "old": {"max_tokens": 1000, "layers": None, "engine": "sklearn", "trigger_sentences": 64},
    "new": {"max_tokens": 500, "layers": (0, -1), "engine": "fast", "trigger_sentences": 0},
}
TRAIN_STEPS, TRAIN_BATCH, EVAL_BATCH, MAX_LENGTH = 10, 32, 128, 64
#: A training step (forward + backward) in forward passes of its batch (FLOP rule: backward = 2 forwards).
STEP_FACTOR = 3.0


def bert_base_folder(path: Path) -> Path:
    """A BERT-base-shaped classifier with random weights and the embedded tokenizer, saved at ``path``."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from lightning_topo.models.embedded import embedded_model_path

    tok = AutoTokenizer.from_pretrained(embedded_model_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, num_labels=2)  # hidden 768, 12 layers, 12 heads, 3072
    BertForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _padded_tokens(loader: Any) -> int:
    return sum(int(b["input_ids"].numel()) for b in loader)


def measure_case(case: str, folder: Path, val_limit: int | None, repeats: int) -> dict[str, Any]:
    """Every piece of the lens's work for the old and new defaults on one model (see the module doc)."""
    from transformers import AutoModelForSequenceClassification

    from lightning_topo.callbacks.concept_monitor import _TokenPlan
    from lightning_topo.loading import load_model
    from lightning_topo.metrics import ConceptAlignment
    from lightning_topo.models import TextClassificationDataModule
    from lightning_topo.plots.concepts import write_concept_figures
    from lightning_topo.representations.capture import HiddenStateCapture, batch_labels
    from lightning_topo.representations.tokens import pad_rows, word_labels
    from lightning_topo.scores.concepts import default_n_concepts, describe_layer, discover_concepts

    limit = {"train": 2500, **({"val": val_limit} if val_limit else {})}
    dm = TextClassificationDataModule(
        tokenizer_name_or_path=str(folder), max_length=MAX_LENGTH, batch_size=TRAIN_BATCH,
        eval_batch_size=EVAL_BATCH, limit=limit,
    )  # fmt: skip
    dm.setup("fit")
    val = dm.dataloader("val")
    model = load_model(AutoModelForSequenceClassification, str(folder), num_labels=2).eval()
    n_layers = model.config.num_hidden_layers
    out: dict[str, Any] = {"case": case, "hidden": model.config.hidden_size, "layers": n_layers,
                           "val_sentences": len(dm.split_texts("val"))}  # fmt: skip
    # ---- the fit (estimated from forward passes of this model, see the module docstring)
    train_batch = next(iter(dm.dataloader("train", batch_size=8, shuffle=False)))
    inputs = {k: train_batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        model(**inputs)  # warm-up: the first call allocates
        _, fwd8 = _timed(model, **inputs)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(**inputs).logits, train_batch["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad()

    saved = {k: v.clone() for k, v in model.state_dict().items()}
    step()  # warm-up (AdamW's states are created at the first step)
    _, step8 = _timed(step)
    model.load_state_dict(saved)  # undo the step
    del saved
    model.eval()
    out["step_factor_measured"] = step8 / fwd8
    out["step_factor"] = STEP_FACTOR
    train_loader = dm.dataloader("train", batch_size=TRAIN_BATCH, shuffle=False)
    train_tokens = sum(int(b["input_ids"].numel()) for _, b in zip(range(TRAIN_STEPS), train_loader, strict=False))
    out["fit_tokens"] = {"train_padded": train_tokens, "val_padded": _padded_tokens(val),
                         "train_epoch_padded": _padded_tokens(train_loader), "train_epoch_steps": len(train_loader)}  # fmt: skip
    variants: dict[str, Any] = {}
    for name, v in VARIANTS.items():
        layers = list(range(n_layers + 1)) if v["layers"] is None else list(v["layers"])
        metric = ConceptAlignment(layers=layers, max_tokens=v["max_tokens"], tokenizer=dm.tokenizer)
        metric.check_model(model)
        # 1. token plan: one pass over the validation batches, no model
        start = time.perf_counter()
        plan = _TokenPlan(metric)
        for batch in val:
            plan.add(batch, batch_labels(batch, None), int(batch["input_ids"].shape[0]))
        sentences = plan.sentences()
        t_plan = time.perf_counter() - start
        # 2. reference forward over the token set's sentences (timed, and the per-token speed)
        rows = [(ids, types) for _, (ids, types, _) in sentences]
        labels = [label for _, (_, _, label) in sentences]
        capture = HiddenStateCapture(model, keep=metric.selected_layers)
        ref_tokens, t_fwd, captured = 0, 0.0, []
        for s in range(0, len(rows), 64):
            batch = pad_rows(rows[s : s + 64], dm.tokenizer.pad_token_id)
            ref_tokens += int(batch["input_ids"].numel())
            with capture, torch.no_grad():
                _, dt = _timed(model, **batch)
            t_fwd += dt
            captured.append((capture.pop()[-1], torch.tensor(labels[s : s + 64])))
        start = time.perf_counter()
        for c, y in captured:
            metric.update_from(c, y)
        t_update_ref = time.perf_counter() - start
        ref, t_compute = _timed(metric.compute)  # the new engine on these layers, with descriptions
        sel = metric._gathered()
        # 3. one clustering + description per layer with the variant's engine (reference and each measurement)
        chosen = ref.extras
        vec = sel["vectors"]  # pruned candidates; the chosen tokens are a subset: re-pick them
        keyset = {(k, p): i for i, (k, p) in enumerate(zip(sel["keys"].tolist(), sel["positions"].tolist(), strict=True))}
        idx = torch.tensor([keyset[(k, p)] for k, p in zip(chosen["keys"].tolist(), chosen["positions"].tolist(), strict=True)])
        n_tok = int(idx.numel())
        k = default_n_concepts(n_tok)
        words = chosen["words"]
        label_sets = {s: word_labels(words, s) for s in metric.label_sets}
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for j in range(len(layers)):
                x = vec[idx, j].double().numpy()
                if v["engine"] == "sklearn":
                    from sklearn.cluster import AgglomerativeClustering

                    ids = torch.as_tensor(AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x))
                else:
                    ids = discover_concepts(x, k)
                describe_layer(ids, words, chosen["classes"], 2, label_sets, ids, 0.9, 10)
            times.append(time.perf_counter() - start)
        t_cluster = statistics.median(times)
        # agreement of the two engines on the last layer
        from sklearn.cluster import AgglomerativeClustering

        x = vec[idx, len(layers) - 1].double().numpy()
        a = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x)
        b = discover_concepts(x, k).numpy()
        same = len(set(zip(a.tolist(), b.tolist(), strict=True))) == k
        # 4. extraction during validation: update() on the validation batches (hidden states of the
        #    right shape; update's cost does not depend on their values), with the reference set
        fine = ConceptAlignment(layers=layers, max_tokens=v["max_tokens"], tokenizer=dm.tokenizer, reference=ref)
        fine.bind(n_layers)
        d = model.config.hidden_size
        start = time.perf_counter()
        t_fake = 0.0
        for batch in val:
            s0 = time.perf_counter()
            b, w = batch["input_ids"].shape
            hidden = tuple(torch.randn(b, w, d) if i in fine.selected_layers else None for i in range(n_layers + 1))
            t_fake += time.perf_counter() - s0
            fine.update(hidden, batch["attention_mask"], batch["labels"], batch["input_ids"])
        t_extract = time.perf_counter() - start - t_fake
        # 5. files: one JSON per measurement and the figures
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            payload = {str(layer): dd for layer, dd in ref.extras["descriptions"].items()}
            (Path(tmp) / "c.json").write_text(json.dumps(payload, default=str))
            t_json = time.perf_counter() - start
            start = time.perf_counter()
            write_concept_figures([{"epoch": 0, "step": 1, "scores": ref.metrics()}], tmp)
            t_fig = time.perf_counter() - start
        # 6. triggers: forward passes of 2 classes x 3 variants x n sentences (+ trigger words), by token count
        per_token = t_fwd / ref_tokens
        n_trig = v["trigger_sentences"]
        trig_tokens = 0
        if n_trig:
            lengths = sorted(int(m.sum()) for bb in val for m in bb["attention_mask"])
            mean_len = float(np.mean(lengths))
            trig_tokens = int(2 * n_trig * (3 * mean_len + 2 * 5 * 1.2))  # +5 words (~1.2 pieces) in 2 variants
        pieces = {
            "plan_s": t_plan,
            "reference_forward_s": t_fwd,
            "reference_update_s": t_update_ref,
            "cluster_describe_per_measurement_s": t_cluster,
            "extract_per_validation_s": t_extract,
            "json_per_measurement_s": t_json,
            "figures_s": t_fig,
            "triggers_s_from_tokens": trig_tokens * per_token,
        }
        # per fit of 1 epoch: reference + 1 measurement
        own = (t_plan + t_fwd + t_update_ref + 2 * t_cluster + t_extract + 2 * t_json + t_fig
               + pieces["triggers_s_from_tokens"])  # fmt: skip
        fit = per_token * (out["fit_tokens"]["val_padded"] + out["step_factor"] * train_tokens)
        # the MiniLM quickstart (configs/quickstart.yaml): 3 epochs of the 2,500 sentences, 3 validations
        quick_own = (t_plan + t_fwd + t_update_ref + 4 * t_cluster + 3 * t_extract + 3 * t_json + t_fig
                     + pieces["triggers_s_from_tokens"])  # fmt: skip
        quick_fit = per_token * 3 * (out["fit_tokens"]["val_padded"]
                                     + out["step_factor"] * out["fit_tokens"]["train_epoch_padded"])  # fmt: skip
        variants[name] = {
            "quickstart_3_epochs": {"own_s": quick_own, "fit_s_estimated": quick_fit, "own_share": quick_own / quick_fit},
            **v, "layers": layers, "tokens": n_tok, "n_concepts": k, "sentences": len(sentences),
            "reference_tokens_padded": ref_tokens, "seconds_per_padded_token": per_token,
            "same_partition_sklearn_vs_fast_last_layer": same, "compute_new_engine_s": t_compute,
            "pieces": pieces, "own_s": own, "fit_s_estimated": fit, "own_share": own / fit,
        }  # fmt: skip
        print(f"  {case} {name}: " + ", ".join(f"{p} {s:.2f}" for p, s in pieces.items())
              + f" | own {own:.1f} s of an estimated {fit:.0f} s fit = {100 * own / fit:.1f}%", flush=True)  # fmt: skip
    out["variants"] = variants
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["bert-base", "minilm"], choices=["bert-base", "minilm"])
    parser.add_argument("--val-limit", type=int, default=None, help="validation sentences (default all 1,057)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the clustering timing (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 validation sentences, 1 repeat")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lenses_concepts.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.val_limit, args.repeats = 200, 1
    from lightning_topo.models.embedded import embedded_model_path

    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(),
        },
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick, "val_limit": args.val_limit, "cases": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            folder = bert_base_folder(Path(tmp) / "bert-base") if case == "bert-base" else Path(embedded_model_path())
            print(f"{case}:", flush=True)
            result["cases"][case] = measure_case(case, folder, args.val_limit, args.repeats)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    out = Path(args.out)
    if args.quick and args.out == str(ROOT / "benchmarks" / "results" / "lenses_concepts.json"):
        out = Path(tempfile.gettempdir()) / "lenses_concepts_quick.json"  # a smoke run is not a result
    if out.exists():  # keep the cases not rerun (each case records its own machine load)
        kept = json.loads(out.read_text()).get("cases", {})
        result["cases"] = {**{k: v for k, v in kept.items() if k not in result["cases"]}, **result["cases"]}
    for case in args.cases:
        result["cases"][case]["machine"] = dict(result["machine"])
    print("\n| case | defaults | tokens | layers | own time (s) | fit, estimated (s) | own share | quickstart share |")
    print("|---|---|---|---|---|---|---|---|")
    for case, entry in result["cases"].items():
        for name, v in entry["variants"].items():
            q = v.get("quickstart_3_epochs", {}).get("own_share")
            print(f"| {case} | {name} | {v['tokens']} | {len(v['layers'])} | {v['own_s']:.2f} | "
                  f"{v['fit_s_estimated']:.0f} | {100 * v['own_share']:.1f}% | {'' if q is None else f'{100 * q:.1f}%'} |")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    os.replace(tmp_out, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
