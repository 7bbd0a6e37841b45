"""Cost of the lens monitors: each monitor's own time as a share of the quickstart fit.

For every selected lens, the quickstart fine-tune (configs/quickstart.yaml: MiniLM-L6, 2,500
training sentences, the full validation split of 1,057, max_length 64; its callbacks removed,
``--max-epochs`` 3 by default) runs with the same seed in two variants: ``baseline`` (no
callback) and the lens's monitor at its default settings, reusing
``SequenceClassifier``'s validation forward as shipped. ``--repeats`` rounds run the two
alternately (baseline first in even rounds, the lens first in odd ones) so that drifts of a
shared machine hit both; medians are reported. Each fit is split into phases by a callback
(training batches, validation loops, fit end), and the monitor's own time is measured from
outside: every Lightning hook the callback overrides (and any extra method a lens names, such
as the geometry lens's ``_on_layer``, called by its forward hooks inside the validation
forward) is wrapped with a timer on the instance; nested calls count once. Figures at fit
end are part of ``on_fit_end``.
Target (README): the monitor's own time is at most 5 % of the fit.

Lenses register a function in :data:`LENSES` (name -> function returning a
:class:`LensRun`): ``psf``, ``geometry``, ``concepts``, ``tree_probe`` (each monitor at its defaults).

Usage::

    .venv/bin/python benchmarks/lenses.py --repeats 3               # every lens, full quickstart
    .venv/bin/python benchmarks/lenses.py --lenses geometry --repeats 3
    .venv/bin/python benchmarks/lenses.py --quick --threads 1      # smoke test: tiny fit, 1 round
    .venv/bin/python benchmarks/lenses.py --bert-base --repeats 2 --case-args '{"limit_train_batches": 10}'
                                                                    # every lens at BERT-base shape

Writes ``benchmarks/results/lenses.json`` (``--quick``: ``lenses_quick.json`` in the temp dir), keeping the
results of lenses not rerun, and prints a table.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "lenses.json"
QUICK_RESULTS = Path(tempfile.gettempdir()) / "lenses_quick.json"  # a smoke test, not a result
QUICK_ARGS = ["--data.limit={train: 64, val: 64}", "--data.eval_batch_size=32"]


#: Lightning hooks a lens callback may implement; those it defines are timed.
CALLBACK_HOOKS: tuple[str, ...] = (
    "setup",
    "on_fit_start",
    "on_train_start",  # the lens core's checks before training (label scan, dry run of the first batch)
    "on_train_epoch_start",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_train_epoch_end",
    "on_validation_start",
    "on_validation_epoch_start",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_validation_epoch_end",
    "on_validation_end",
    "on_fit_end",
    "teardown",
)


@dataclass
class LensRun:
    """A lens monitor for one fit, and the extra methods of it to time.

    ``extra`` names methods that do the monitor's work outside Lightning's hooks; ``inner`` pairs
    other objects with such methods, e.g. the geometry lens's metric and its ``_reduce_layer``,
    which the forward hooks call inside the validation forward.
    """

    callback: Any
    extra: tuple[str, ...] = ()
    inner: tuple[tuple[Any, tuple[str, ...]], ...] = ()


def time_methods(obj: Any, names: tuple[str, ...], depth: list[int] | None = None) -> dict[str, float]:
    """Wrap ``names`` of one instance with wall-clock timers; returns the running totals.

    Nested calls (a hook calling another timed method, also of another object sharing ``depth``)
    are counted once, by the outermost. Nothing in the class is changed.
    """
    totals = dict.fromkeys(names, 0.0)
    depth = [0] if depth is None else depth
    for name in names:
        original = getattr(obj, name)

        def timed(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            depth[0] += 1
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    totals[_name] += time.perf_counter() - start

        setattr(obj, name, timed)
    return totals


def instrument(run: LensRun) -> Callable[[], dict[str, float]]:
    """Wrap every hook ``run.callback`` overrides, ``run.extra`` and ``run.inner`` with timers
    (nested calls count once); returns a function that reads the per-method seconds after the fit
    (inner methods named ``Owner.method``)."""
    from lightning.pytorch import Callback

    cls = type(run.callback)
    hooks = tuple(h for h in CALLBACK_HOOKS if getattr(cls, h) is not getattr(Callback, h))  # overridden
    depth = [0]
    totals = time_methods(run.callback, hooks + run.extra, depth)
    inner = [(time_methods(obj, names, depth), type(obj).__name__) for obj, names in run.inner]

    def read() -> dict[str, float]:  # running totals: read after the fit
        out = dict(totals)
        for times, owner in inner:
            out.update({f"{owner}.{k}": v for k, v in times.items()})
        return out

    return read


def psf_lens(tokenizer: Any = None) -> LensRun:
    """``PersistenceScoreMonitor()`` at its defaults (last layer, [CLS], <= 512 points per class,
    5 re-draws, bootstrap standard error); pooling runs in its metric's ``update``."""
    from lightning_topo.callbacks.persistence_monitor import PersistenceScoreMonitor

    monitor = PersistenceScoreMonitor()
    return LensRun(monitor, inner=((monitor._template, ("update",)),))


def geometry_lens(tokenizer: Any = None) -> LensRun:
    """``GeometryMonitor()`` at its defaults (every layer, every epoch, <= 512 sequences); the
    per-layer reduction runs in its metric's ``_reduce_layer``, called by the forward hooks."""
    from lightning_topo.callbacks.geometry_monitor import GeometryMonitor

    monitor = GeometryMonitor()
    return LensRun(monitor, inner=((monitor._template, ("_reduce_layer",)),))


def concepts_lens(tokenizer: Any = None) -> LensRun:
    """``ConceptAlignmentMonitor()`` at its defaults (every layer, 1,000 tokens, triggers at fit end);
    its pre-trained reference is measured in ``on_train_start``. ``tokenizer``: for a model built
    from a config (no ``name_or_path`` to find it on), as a user would pass it."""
    from lightning_topo.callbacks.concept_monitor import ConceptAlignmentMonitor

    return LensRun(ConceptAlignmentMonitor(tokenizer=tokenizer), extra=("on_train_start",))


def tree_probe_lens(tokenizer: Any = None) -> LensRun:
    """``TreeProbeMonitor()`` at its defaults (every layer, ssp + essp, 256 sentences, 5 probe epochs)."""
    from lightning_topo.callbacks.tree_probe_monitor import TreeProbeMonitor

    return LensRun(TreeProbeMonitor(tokenizer=tokenizer))


#: name -> factory (``tokenizer`` for a model without ``name_or_path``): one function above and one line here per lens.
LENSES: dict[str, Callable[..., LensRun]] = {
    "psf": psf_lens,
    "geometry": geometry_lens,
    "concepts": concepts_lens,
    "tree_probe": tree_probe_lens,
}


def bert_base_case(
    lenses: list[str],
    *,
    hidden: int = 768,
    layers: int = 12,
    heads: int = 12,
    intermediate: int = 3072,
    train_sentences: int = 2500,
    max_length: int = 64,
    batch_size: int = 32,
    eval_batch_size: int = 128,
    limit_train_batches: int | None = None,
    repeats: int = 1,
    seed: int = 42,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every lens in ``lenses`` at a real model's size: a BERT-base-shaped classifier with random
    weights (default hidden 768, 12 layers, 12 heads) in a user's own LightningModule (the HF model
    at ``self.net``, ``validation_step`` logging ``val/acc``, plain ``forward``), the embedded
    tokenizer and data (the quickstart's: ``train_sentences`` training sentences, the full
    validation split of 1,057, ``max_length`` 64), a 1-epoch fit (``limit_train_batches``
    shortens it) without a monitor and with each lens's monitor at its defaults; each round runs
    the baseline and every lens (the order rotates between rounds).

    A monitor's own time is measured from outside: every hook its callback overrides, the
    methods a lens names (``LensRun.extra``) and those its metric runs inside the validation
    forward (``LensRun.inner``); nested calls count once.

    Returns:
        ``{"settings", "runs": {"baseline": [...], lens: [...]}, "summary": {lens: ...}}`` (each
        summary as :func:`summarise`).
    """
    import lightning.pytorch as pl
    from transformers import BertConfig, BertForSequenceClassification

    from lightning_topo.models.datamodule import TextClassificationDataModule

    class UserModule(pl.LightningModule):
        def __init__(self, vocab_size: int) -> None:
            super().__init__()
            config = BertConfig(
                vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                intermediate_size=intermediate, num_labels=2,
            )  # fmt: skip
            self.net = BertForSequenceClassification(config)

        def _logits(self, batch: dict) -> torch.Tensor:
            return self.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(self._logits(batch), batch["labels"])

        def validation_step(self, batch: dict, batch_idx: int) -> None:
            self.log("val/acc", (self._logits(batch).argmax(-1) == batch["labels"]).float().mean())

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=1e-4)

    data = TextClassificationDataModule(
        max_length=max_length, batch_size=batch_size, eval_batch_size=eval_batch_size,
        limit={"train": train_sentences}, seed=seed,
    )  # fmt: skip
    data.setup("fit")
    vocab = len(data.tokenizer)
    settings = {
        "hidden": hidden, "layers": layers, "heads": heads, "intermediate": intermediate,
        "train_sentences": train_sentences, "max_length": max_length, "batch_size": batch_size,
        "eval_batch_size": eval_batch_size, "limit_train_batches": limit_train_batches,
        "threads": torch.get_num_threads(), "lenses": list(lenses),
    }  # fmt: skip
    variants: list[str | None] = [None, *lenses]
    runs: dict[str, list[dict]] = {v or "baseline": [] for v in variants}
    for r in range(repeats):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for variant in order:
            with tempfile.TemporaryDirectory() as tmp:
                torch.manual_seed(seed)
                module = UserModule(vocab)
                timer = _phase_timer()
                callbacks: list[Any] = [timer]
                read_times = None
                if variant is not None:
                    run = LENSES[variant](tokenizer=data.tokenizer)  # the model is built from a config
                    read_times = instrument(run)
                    callbacks.append(run.callback)
                trainer = pl.Trainer(
                    default_root_dir=tmp, max_epochs=1, callbacks=callbacks, logger=False, accelerator="cpu",
                    devices=1, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                    num_sanity_val_steps=0, limit_train_batches=limit_train_batches,
                )  # fmt: skip
                start = time.perf_counter()
                trainer.fit(module, datamodule=data)
                end = time.perf_counter()
            out: dict[str, Any] = {"variant": variant or "baseline", "fit_s": end - start, **timer.phases}
            if read_times is not None:
                by_method = read_times()
                out["monitor_by_method_s"] = {k: v for k, v in by_method.items() if v > 0}
                out["monitor_s"] = sum(by_method.values())
            print(
                f"  bert-base {out['variant']}: fit {out['fit_s']:.1f} s, monitor {out.get('monitor_s', 0):.2f} s",
                flush=True,
            )
            runs[out["variant"]].append(out)
            if on_run is not None:  # keep what is measured if a later fit fails
                on_run({"settings": settings, "runs": runs, "partial": True})
    summary = {lens: summarise(runs["baseline"], runs[lens]) for lens in lenses}
    return {"settings": settings, "runs": runs, "summary": summary}


def _phase_timer() -> Any:
    """A callback splitting a fit into training batches, validation loops and the fit end."""
    import lightning.pytorch as pl

    class PhaseTimer(pl.Callback):
        def __init__(self) -> None:
            self.phases = {"train_s": 0.0, "val_s": 0.0}
            self._t: dict[str, float] = {}
            self.fit_end_at: float | None = None

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._t["train"] = time.perf_counter()

        def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
            now = time.perf_counter()
            if "train" in self._t:  # validation runs inside the training epoch: pause its clock
                self.phases["train_s"] += now - self._t.pop("train")
            self._t["val"] = now

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            self.phases["val_s"] += time.perf_counter() - self._t.pop("val")

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if "train" in self._t:
                self.phases["train_s"] += time.perf_counter() - self._t.pop("train")

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:  # first callback: before any figures
            self.fit_end_at = time.perf_counter()

    return PhaseTimer()


def run_fit(lens: str | None, workdir: Path, max_epochs: int, extra_args: list[str]) -> dict[str, Any]:
    """One quickstart fit without callbacks (``lens=None``) or with the lens's monitor."""

    from lightning_topo.cli.fit import run_lightning_cli

    args = [
        "--config",
        str(ROOT / "configs" / "quickstart.yaml"),
        "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={workdir}",
        f"--trainer.max_epochs={max_epochs}",
        *extra_args,
    ]
    old = os.getcwd()
    os.chdir(workdir)  # the config's CSV logger writes to ./runs
    try:
        cli = run_lightning_cli(args, run=False)
        timer = _phase_timer()
        run = LENSES[lens]() if lens is not None else None
        read_times = None
        if run is not None:
            read_times = instrument(run)
            cli.trainer.callbacks.insert(0, run.callback)
        cli.trainer.callbacks.insert(0, timer)
        torch.manual_seed(42)
        start = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        end = time.perf_counter()
    finally:
        os.chdir(old)
    out: dict[str, Any] = {
        "variant": lens or "baseline",
        "fit_s": end - start,
        "epochs": cli.trainer.current_epoch,
        "threads": torch.get_num_threads(),
        **timer.phases,
        "fit_end_s": end - timer.fit_end_at if timer.fit_end_at is not None else None,
        **{k: float(v) for k, v in cli.trainer.callback_metrics.items() if k in ("val/acc", "val/loss")},
    }
    if read_times is not None:
        totals = read_times()
        out["monitor_by_method_s"] = {k: v for k, v in totals.items() if v > 0}
        out["monitor_s"] = sum(totals.values())
    own_txt = f", monitor {out['monitor_s']:.2f} s" if run is not None else ""
    print(
        f"  fit {out['variant']}: {out['fit_s']:.1f} s (train {out['train_s']:.1f}, val {out['val_s']:.1f}"
        f"{own_txt})",
        flush=True,
    )
    return out


def summarise(baseline: list[dict], lens_runs: list[dict]) -> dict[str, Any]:
    """Medians, the monitor's own share of the fit, and the wall-time gap to the baseline."""

    def med(rs: list[dict], key: str) -> float | None:
        values = [r[key] for r in rs if r.get(key) is not None]
        return statistics.median(values) if values else None

    out: dict[str, Any] = {"runs": len(lens_runs)}
    for key in ("fit_s", "train_s", "val_s", "monitor_s"):
        out[f"median_{key}"] = med(lens_runs, key)
        out[f"baseline_median_{key}"] = med(baseline, key)
    shares = [r["monitor_s"] / r["fit_s"] for r in lens_runs]
    out["own_shares"] = shares
    out["median_own_share"] = statistics.median(shares)
    base = out["baseline_median_fit_s"]
    if base:
        out["wall_overhead_share"] = (out["median_fit_s"] - base) / base
        paired = [(m["fit_s"] - b["fit_s"]) / b["fit_s"] for b, m in zip(baseline, lens_runs, strict=False)]
        out["paired_wall_shares"] = paired
        out["median_paired_wall_share"] = statistics.median(paired)
    out["meets_5pct_target"] = out["median_own_share"] <= 0.05
    return out


def _write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }


def benchmark_lens(
    lens: str, repeats: int, max_epochs: int, extra: list[str], result: dict, path: Path
) -> None:
    """Alternate baseline and lens fits for ``repeats`` rounds; store runs and summary in ``result``."""
    runs: dict[str, list[dict]] = {"baseline": [], lens: []}
    machine = _machine()
    for r in range(repeats):
        order = [None, lens] if r % 2 == 0 else [lens, None]
        for variant in order:
            with tempfile.TemporaryDirectory() as tmp:
                runs[variant or "baseline"].append(run_fit(variant, Path(tmp), max_epochs, extra))
    result["lenses"][lens] = {
        "runs": runs,
        "summary": summarise(runs["baseline"], runs[lens]),
        "max_epochs": max_epochs,
        "extra_args": extra,
        "machine": machine,  # each lens entry says where and when it was measured
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write(result, path)  # keep finished lenses if a later one is interrupted


def print_table(result: dict) -> None:
    print(
        "\n| lens | fit, baseline (s) | fit, with monitor (s) | monitor's own time (s) | own share | wall gap |"
    )
    print("|---|---|---|---|---|---|")
    for lens, entry in result.get("lenses", {}).items():
        s = entry["summary"]
        gap = s.get("median_paired_wall_share")
        print(
            f"| {lens} | {s['baseline_median_fit_s']:.1f} | {s['median_fit_s']:.1f} | {s['median_monitor_s']:.2f} "
            f"| {100 * s['median_own_share']:.1f}% | {'' if gap is None else f'{100 * gap:+.1f}%'} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lenses", nargs="*", default=list(LENSES), choices=list(LENSES), help="lenses to time"
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds of baseline + lens fits (default 3)")
    parser.add_argument(
        "--max-epochs", type=int, default=3, help="epochs per fit (default 3, as the quickstart)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 64 sentences per split, 1 epoch, 1 round"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--cli-args", nargs="*", default=[], help="extra LightningCLI arguments")
    parser.add_argument(
        "--results", default=None, help="results JSON (default benchmarks/results/lenses.json)"
    )
    parser.add_argument(
        "--bert-base", action="store_true",
        help="the --lenses at BERT-base shape (bert_base_case: random weights, user module, 1-epoch fit of 2,500 "
        "sentences) instead of the quickstart",
    )  # fmt: skip
    parser.add_argument(
        "--case-args",
        default="{}",
        help="bert_base_case keyword arguments as JSON, e.g. '{\"limit_train_batches\": 10}'",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.max_epochs < 1:
        parser.error("--repeats and --max-epochs must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    path = Path(args.results).resolve() if args.results else (QUICK_RESULTS if args.quick else RESULTS)
    extra = [*QUICK_ARGS, *args.cli_args] if args.quick else list(args.cli_args)
    repeats, epochs = (1, 1) if args.quick else (args.repeats, args.max_epochs)
    result: dict[str, Any] = {"lenses": {}}
    if path.exists():  # keep what is not rerun: the other lenses and the other case
        previous = json.loads(path.read_text())
        result["lenses"] = previous.get("lenses", {})
        if "cases" in previous:
            result["cases"] = previous["cases"]
    if args.bert_base:  # the quickstart entries keep their own machine and date
        def keep(partial: dict[str, Any]) -> None:
            result.setdefault("cases", {})["bert_base"] = partial
            _write(result, path)

        case = bert_base_case(
            args.lenses, repeats=args.repeats if not args.quick else 1, on_run=keep, **json.loads(args.case_args)
        )
        case["machine"] = _machine()
        case["date_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        result.setdefault("cases", {})["bert_base"] = case
        _write(result, path)
        print(f"\nat BERT-base shape (load average at start {case['machine']['load_average_at_start']}):")
        print("| lens | fit, baseline (s) | fit, with monitor (s) | monitor's own time (s) | own share |")
        print("|---|---|---|---|---|")
        for lens, s in case["summary"].items():
            print(
                f"| {lens} | {s['baseline_median_fit_s']:.1f} | {s['median_fit_s']:.1f} | {s['median_monitor_s']:.2f} "
                f"| {100 * s['median_own_share']:.1f}% |"
            )
        print(f"wrote {path}")
        return 0
    for lens in args.lenses:
        print(
            f"{lens}: quickstart fit without and with the monitor ({repeats} rounds, {epochs} epochs)",
            flush=True,
        )
        benchmark_lens(lens, repeats, epochs, extra, result, path)
    _write(result, path)
    print_table(result)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
