"""``lightning-topo prune``: prune a trained checkpoint, optionally recover, write a compressed folder.

    lightning-topo prune --checkpoint runs/.../epoch=2.ckpt --method topological --ratio 0.6 \\
        --recover-epochs 1 --output outputs/pruned

``--checkpoint`` is a Lightning ``.ckpt`` of :class:`~lightning_topo.models.SequenceClassifier`
(read with ``torch.load(weights_only=True)``: tensors and plain data only, so a crafted file cannot
run code) or a Hugging Face folder (e.g. one written by ``save_compressed``). Calibration and
recovery data come from :class:`~lightning_topo.models.TextClassificationDataModule`: by default the
embedded dataset (or the datamodule settings stored in the ``.ckpt`` by ``lightning-topo fit``),
overridable with ``--data-file``, ``--text-column``, ``--label-column`` etc. The source checkpoint
is only read.

Every argument, the source and the output folder are checked before anything is loaded or trained;
a bad input prints one line (``lightning-topo prune: error: ...``) and exits with status 2. A
source folder is verified first (:func:`lightning_topo.pruning.export.verify_compressed`: its
``SHA256SUMS`` when we wrote it, complete weights files, no code of its own), the output folder is
really written to (a file created and removed) and the disk must hold the dense model's weights
before the recovery trains. If the final write still fails, the trained model is kept in another
folder (named in the one line; exit status 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import pickle
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_topo.cli.errors import USER_ERRORS, report_refusal
from lightning_topo.pruning.config import DEFAULTS, METHODS, UNIT_KINDS, PruningConfig

__all__ = ["main", "build_parser"]

#: Datamodule settings taken from a ``.ckpt`` written by ``lightning-topo fit`` (same data, same splits).
_DATAMODULE_KEYS = (
    "data_file",
    "train_file",
    "val_file",
    "text_column",
    "text_pair_column",
    "label_column",
    "split_column",
    "label_names",
    "tokenizer_name_or_path",
    "max_length",
    "batch_size",
    "eval_batch_size",
    "val_fraction",
    "test_fraction",
    "seed",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-topo prune`` (defaults from :data:`~lightning_topo.pruning.config.DEFAULTS`)."""
    p = argparse.ArgumentParser(
        prog="lightning-topo prune",
        description="Topology-guided structured pruning of a trained checkpoint (docs/pruning.md).",
    )
    p.add_argument("--checkpoint", required=True, help="Lightning .ckpt or Hugging Face model folder")
    p.add_argument("--output", required=True, help="folder for the compressed checkpoint (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output checkpoint")
    p.add_argument("--method", default=DEFAULTS.method, choices=METHODS)
    p.add_argument(
        "--ratio", type=float, default=DEFAULTS.ratio, help="fraction of encoder parameters kept, in (0, 1]"
    )
    p.add_argument("--units", nargs="+", default=list(DEFAULTS.units), choices=UNIT_KINDS)
    p.add_argument(
        "--recover-epochs", type=int, default=1, help="recovery fine-tune epochs after pruning (0: none)"
    )
    p.add_argument(
        "--distill",
        action="store_true",
        help="distil the recovery epochs from the unpruned model (needs --recover-epochs >= 1)",
    )
    p.add_argument(
        "--temperature", type=float, default=None, help="with --distill: softmax temperature (default 2)"
    )
    p.add_argument(
        "--alpha", type=float, default=None, help="with --distill: weight of the soft term (default 0.5)"
    )
    p.add_argument("--calibration-batches", type=int, default=DEFAULTS.calibration_batches, help="(>= 1)")
    p.add_argument("--max-positions", type=int, default=DEFAULTS.max_positions)
    p.add_argument("--min-heads", type=int, default=DEFAULTS.min_heads)
    p.add_argument("--min-ffn", type=int, default=DEFAULTS.min_ffn)
    p.add_argument(
        "--ffn-multiple",
        type=int,
        default=DEFAULTS.ffn_multiple,
        help="round pruned FFN widths down to a multiple of this (default 8, faster GEMMs; 1 = exact budget)",
    )
    p.add_argument(
        "--stat",
        default=DEFAULTS.stat,
        choices=("max", "total"),
        help="H0 summary of the topological readings (default: the method's own, docs/pruning.md)",
    )
    p.add_argument(
        "--learning-rate", type=float, default=None, help="recovery learning rate (default: checkpoint's)"
    )
    p.add_argument(
        "--data-file", default=None, help="CSV/TSV/JSONL data file (default: the embedded dataset)"
    )
    p.add_argument(
        "--text-column", default=None, help="column of --data-file holding the text (default: text)"
    )
    p.add_argument(
        "--label-column", default=None, help="column of --data-file holding the label (default: label)"
    )
    p.add_argument("--split-column", default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--limit-train", type=int, default=None, help="use a seeded subset of the training split")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--accelerator", default="auto")
    p.add_argument(
        "--int8-report",
        action="store_true",
        help="after saving, compare dense/pruned x fp32/int8 on the validation split (accuracy, CPU "
        "throughput at 32x64, latency at 1x64); prints a table, writes int8_report.json into --output",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-topo prune``; returns the exit status (2 for bad input, with one line on stderr;
    1 when the compressed folder could not be written after the work, naming where it was kept)."""
    from lightning_topo.callbacks.pruning import CompressedSaveError, NotEnoughSpaceError

    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except CompressedSaveError as err:
        print(f"lightning-topo prune: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    except (*USER_ERRORS, NotEnoughSpaceError) as err:
        return report_refusal("prune", err)


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    source, output = _check_paths(args)
    stored = _stored_settings(source)
    dm_kwargs, from_checkpoint = _datamodule_kwargs(args, stored, source)  # checks the data files' columns
    if args.int8_report:
        from lightning_topo.pruning.quantize import check_int8_available

        try:
            check_int8_available()  # before anything is trained
        except RuntimeError as err:
            raise ValueError(f"--int8-report: {err}") from None
    import lightning.pytorch as pl

    from lightning_topo.callbacks.pruning import SAVE_MARGIN, check_writable, weight_bytes
    from lightning_topo.models.datamodule import TextClassificationDataModule
    from lightning_topo.pruning.layout import check_supported
    from lightning_topo.pruning.structured import count_encoder_parameters

    pl.seed_everything(args.seed, workers=True, verbose=False)
    module = _load_module(source, args.learning_rate)
    check_supported(module.model)  # before reading any data
    # the dense weights bound the compressed folder's size: refuse a full disk before any training
    check_writable(output, weight_bytes(module.model) + SAVE_MARGIN, what="--output")
    try:
        dm = TextClassificationDataModule(**dm_kwargs)
        dm.setup("fit")
    except USER_ERRORS as err:
        if from_checkpoint:
            raise type(err)(f"{err} ({from_checkpoint})") from None
        raise
    before = count_encoder_parameters(module.model)
    if args.recover_epochs > 0:
        metrics, summary = _prune_and_recover(args, settings, module, dm, output)
    else:
        metrics, summary = _prune_only(args, settings, module, dm, output)
    after = count_encoder_parameters(module.model)
    acc = metrics[0].get("val/acc") if metrics else None
    acc_s = "n/a" if acc is None else f"{float(acc):.4f}"
    print(
        f"pruned {source.name} with {args.method}: encoder parameters {before} -> {after} "
        f"({after / before:.3f}); val/acc {acc_s} after {args.recover_epochs} recovery epoch(s); saved to {output}"
    )
    if args.int8_report:
        report = _int8_report(source, output, dm, summary)
        summary = report["prune_summary"]
    print(_summary_line(summary))
    return 0


# ---------------------------------------------------------------------- checks before any work


def _settings(args: argparse.Namespace) -> PruningConfig:
    """The pruning settings, checked by :class:`PruningConfig`; errors name the command-line option."""
    if args.recover_epochs < 0:
        raise ValueError(
            f"--recover-epochs must be >= 0 (0 = prune without recovery); got {args.recover_epochs}"
        )
    _check_distill(args)
    fields = {
        "method": args.method,
        "ratio": args.ratio,
        "units": tuple(args.units),
        "calibration_batches": args.calibration_batches,
        "max_positions": args.max_positions,
        "min_heads": args.min_heads,
        "min_ffn": args.min_ffn,
        "ffn_multiple": args.ffn_multiple,
        "stat": args.stat,
        "seed": args.seed,
    }
    try:
        return PruningConfig(**fields)
    except (TypeError, ValueError) as err:  # a command line has only values: both are usage errors
        message = str(err)
        name = message.split(" ", 1)[0]
        if name in {f.name for f in dataclasses.fields(PruningConfig)}:
            message = "--" + name.replace("_", "-") + message[len(name) :]
        raise ValueError(message) from None


def _check_distill(args: argparse.Namespace) -> None:
    """``--distill`` needs recovery epochs; ``--temperature``/``--alpha`` need ``--distill`` and valid values."""
    from lightning_topo.pruning.distill import DISTILL_DEFAULTS, check_distill_settings

    given = [f"--{n}" for n in ("temperature", "alpha") if getattr(args, n) is not None]
    if not args.distill:
        if given:
            raise ValueError(f"{given[0]} only applies with --distill; add --distill or drop {given[0]}")
        return
    if args.recover_epochs == 0:
        raise ValueError(
            "--distill needs --recover-epochs >= 1 (the pruned model learns from the unpruned one during "
            "recovery); got --recover-epochs 0"
        )
    for name, value in DISTILL_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        check_distill_settings(args.temperature, args.alpha)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--{err}") from None


def _check_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """``(source, output)``: the source exists, the output is not inside it and can be written."""
    from lightning_topo.pruning.export import check_output_path

    source = Path(args.checkpoint).resolve()
    output = Path(args.output)
    if not source.exists():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint} does not exist")
    if source.is_dir() and not (source / "config.json").is_file():
        raise FileNotFoundError(
            f"--checkpoint {args.checkpoint} is a folder without config.json: not a Hugging Face model folder"
        )
    if source.is_dir():
        _verify_source_folder(source, args.checkpoint)
    if output.resolve() == source or source in output.resolve().parents:
        raise ValueError(
            "--output must not be the source checkpoint or inside it (the source is never modified)"
        )
    try:
        check_output_path(output, overwrite=args.overwrite)
    except FileExistsError as err:
        if not args.overwrite:
            raise FileExistsError(
                f"--output {output} already exists; pass --overwrite to replace it or choose another folder"
            ) from None
        raise FileExistsError(f"--output: {err}") from None
    except (NotADirectoryError, PermissionError) as err:
        raise type(err)(f"--output: {err}") from None
    from lightning_topo.callbacks.pruning import check_writable

    check_writable(output, what="--output")  # really create and remove a file there
    return source, output


def _verify_source_folder(source: Path, given: str) -> None:
    """Refuse a source folder that runs code, is corrupted or is cut short, before anything reads it.

    A folder we wrote (a ``SHA256SUMS``, or a ``pruned_*`` model type) must match its manifest
    (:func:`~lightning_topo.pruning.export.verify_compressed`); any other Hugging Face folder gets the
    same structural checks (a known ``model_type``, no foreign ``auto_map``, complete ``.safetensors``).
    """
    from lightning_topo.loading import check_model_folder
    from lightning_topo.pruning.export import verify_compressed

    try:
        info = check_model_folder(source)
        verify_compressed(source, verify=info.written_by_us)
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        raise type(err)(f"--checkpoint {given} was refused before anything was done: {err}") from None


# ---------------------------------------------------------------------- loading


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint of a LightningModule, read with ``weights_only=True`` (no code runs)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        blocked = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" (it would call {blocked.group(1)})" if blocked else ""
        raise ValueError(
            f"--checkpoint {path} is not a loadable checkpoint: it holds Python objects other than tensors and "
            f"plain data{what}, or is not a torch file; it was not loaded. Pass a .ckpt written by Lightning's "
            "save_checkpoint or lightning-topo fit, or a Hugging Face model folder"
        ) from None
    except Exception as err:  # noqa: BLE001 - an unreadable file, whatever the parser trips on
        raise ValueError(
            f"--checkpoint {path} is not a loadable checkpoint (truncated or not a torch file: {type(err).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(
            f"--checkpoint {path} is not a Lightning checkpoint (no 'state_dict'); pass a .ckpt written by "
            "lightning-topo fit or a Hugging Face model folder"
        )
    if not isinstance(ckpt.get("hyper_parameters"), dict):
        raise ValueError(
            f"--checkpoint {path} has no hyper_parameters: it was not saved from a SequenceClassifier"
        )
    return ckpt


def _stored_settings(source: Path) -> dict[str, Any]:
    """Datamodule settings that come with the source: from a ``.ckpt`` (as ``fit`` used them) or a folder."""
    if source.is_dir():
        return {"tokenizer_name_or_path": str(source)}
    ckpt = _read_checkpoint(source)
    stored = dict(ckpt.get("datamodule_hyper_parameters") or {})
    if stored.get("tokenizer_name_or_path") is None:
        stored["tokenizer_name_or_path"] = ckpt["hyper_parameters"].get("model_name_or_path")
    return stored


def _load_module(checkpoint: Path, learning_rate: float | None) -> Any:
    """A SequenceClassifier for ``checkpoint`` (a ``.ckpt`` checked by :func:`_read_checkpoint`, or a folder)."""
    from lightning_topo.models.classifier import SequenceClassifier

    overrides = {} if learning_rate is None else {"learning_rate": learning_rate}
    if not checkpoint.is_dir():
        return SequenceClassifier.load_from_checkpoint(
            checkpoint, map_location="cpu", weights_only=True, **overrides
        )
    import lightning_topo.pruning.export  # noqa: F401  (registers the pruned config/model classes)
    from lightning_topo.loading import load_config

    config = load_config(checkpoint)  # trust_remote_code=False; the folder was verified in _check_paths
    return SequenceClassifier(
        model_name_or_path=str(checkpoint), num_labels=int(config.num_labels), **overrides
    )


def _datamodule_kwargs(
    args: argparse.Namespace, stored: dict[str, Any], source: Path
) -> tuple[dict[str, Any], str | None]:
    """Datamodule arguments: the source's stored settings, then the command-line overrides.

    Returns ``(kwargs, origin)``: ``origin`` says, for messages, which data files came from the
    ``.ckpt`` rather than the command line (``None`` when none did). Every data file is checked here
    (it exists, has the text/label columns), so a file the user never typed is named as such.
    """
    kwargs = {k: v for k, v in stored.items() if k in _DATAMODULE_KEYS}
    if args.data_file is not None:
        kwargs.pop("train_file", None)
        kwargs.pop("val_file", None)
    overrides = {
        "data_file": args.data_file,
        "text_column": args.text_column,
        "label_column": args.label_column,
        "split_column": args.split_column,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
    }
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    text, label = kwargs.get("text_column", "text"), kwargs.get("label_column", "label")
    inherited = {
        k: kwargs[k]
        for k in ("data_file", "train_file", "val_file")
        if args.data_file is None and kwargs.get(k)
    }
    origin = None
    if inherited:
        named = ", ".join(f"{k} {v}" for k, v in inherited.items())
        origin = (
            f"not given on the command line: it came from --checkpoint {source.name}, the datamodule settings "
            "lightning-topo fit saved; --data-file overrides it"
        )
        print(f"lightning-topo prune note: {named} ({origin})", file=sys.stderr)
    if args.data_file is not None:
        _check_columns(Path(args.data_file), text, label, "--data-file")
    for key, value in inherited.items():
        try:
            _check_columns(Path(value), text, label, key)
        except USER_ERRORS as err:
            raise type(err)(f"{err} ({origin})") from None
    if args.limit_train is not None:
        kwargs["limit"] = {"train": args.limit_train}
    return kwargs, origin


def _check_columns(data_file: Path, text_column: str, label_column: str, what: str = "--data-file") -> None:
    """Refuse a data file without the text/label columns, suggesting the options that name them."""
    from lightning_topo.data.files import read_table

    _, columns = read_table(data_file, what)
    missing = [c for c in (text_column, label_column) if c not in columns]
    if missing:
        raise ValueError(
            f"{what} {data_file} has no column {missing[0]!r} (text column {text_column!r}, label column "
            f"{label_column!r}); its columns are {columns}. Name them with --text-column and --label-column"
        )


# ---------------------------------------------------------------------- pruning


def _prune_and_recover(
    args: argparse.Namespace, settings: PruningConfig, module: Any, dm: Any, output: Path
) -> Any:
    """Prune at the start of a ``--recover-epochs`` fine-tune (``TopologicalPruning``), then validate."""
    import lightning.pytorch as pl

    from lightning_topo.callbacks.pruning import TopologicalPruning

    callback = TopologicalPruning(
        method=settings.method,
        ratio=settings.ratio,  # type: ignore[arg-type]
        prune_epoch=0,
        units=settings.units,
        calibration_batches=settings.calibration_batches,
        max_positions=settings.max_positions,
        output_dir=output,
        overwrite=args.overwrite,
        min_heads=settings.min_heads,
        min_ffn=settings.min_ffn,
        ffn_multiple=settings.ffn_multiple,
        stat=settings.stat,
        seed=settings.seed,
        **_distill_kwargs(args),
    )
    trainer = pl.Trainer(
        max_epochs=args.recover_epochs,
        accelerator=args.accelerator,
        devices=1,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=str(output.parent),
    )
    trainer.fit(module, datamodule=dm)
    return trainer.validate(module, datamodule=dm, verbose=False), callback.summary


def _distill_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``TopologicalPruning``'s distillation arguments from ``--distill`` (checked by :func:`_check_distill`)."""
    if not args.distill:
        return {}
    return {"distill": True, "temperature": args.temperature, "alpha": args.alpha}


def _prune_only(
    args: argparse.Namespace, settings: PruningConfig, module: Any, dm: Any, output: Path
) -> tuple[Any, dict[str, Any]]:
    """Validate, prune once on ``--calibration-batches`` training batches, validate, save (with
    ``pruning_history.json`` holding the same summary as the callback's)."""
    import lightning.pytorch as pl

    from lightning_topo.callbacks.pruning import model_sizes, save_or_rescue
    from lightning_topo.pruning.api import prune_model
    from lightning_topo.pruning.structured import layer_widths

    def validate() -> Any:
        trainer = pl.Trainer(accelerator=args.accelerator, devices=1, logger=False, enable_progress_bar=False)
        return trainer.validate(module, datamodule=dm, verbose=False)

    before = validate()
    dense = model_sizes(module.model)
    calibration = list(itertools.islice(dm.train_dataloader(), settings.calibration_batches))
    prune_model(module.model, calibration, **settings.prune_kwargs())
    metrics = validate()
    compressed = model_sizes(module.model)
    summary = {
        "dense": dense,
        "world_size": 1,
        "val_examples": len(dm.val_dataloader().dataset),
        "method": args.method,
        "scored_with": None,
        "val_acc": {
            "before_pruning": _metric(before, "val/acc"),
            "after_pruning": _metric(metrics, "val/acc"),
            "after_recovery": None,
        },
        "recovery_epochs": 0,
        "compressed": compressed,
        "encoder_ratio": compressed["encoder_params"] / dense["encoder_params"],
        "weight_bytes_ratio": compressed["weight_bytes"] / dense["weight_bytes"],
        "cpu_speedup": None,
    }
    history = {
        "method": args.method,
        "ratio": settings.ratio,
        "original_params": dense["encoder_params"],
        "history": [
            {"step": 1, "params": compressed["encoder_params"], "widths": layer_widths(module.model)}
        ],
        "summary": summary,
    }
    save_or_rescue(
        module.model.eval(),
        output,
        overwrite=args.overwrite,
        who="--output",
        tokenizer=dm.tokenizer,
        extra_files={"pruning_history.json": history},
    )
    return metrics, summary


def _metric(results: Any, key: str) -> float | None:
    value = results[0].get(key) if results else None
    return None if value is None else float(value)


def _summary_line(summary: dict[str, Any]) -> str:
    """One line of the summary: val acc before/after pruning/after recovery, weights and parameters."""
    acc = summary.get("val_acc") or {}

    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{float(value):.4f}"

    dense, compressed = summary.get("dense") or {}, summary.get("compressed") or {}
    speed = summary.get("cpu_speedup")
    speed_s = "" if not speed else "; CPU speed-up " + ", ".join(f"{k} {v:.2f}x" for k, v in speed.items())
    sizes = ""
    if dense and compressed:
        sizes = (
            f"; weights {dense['weight_bytes'] / 2**20:.2f} -> {compressed['weight_bytes'] / 2**20:.2f} MiB, "
            f"parameters {dense['params']} -> {compressed['params']}"
        )
    return (
        f"val acc: before pruning {fmt(acc.get('before_pruning'))}, after pruning {fmt(acc.get('after_pruning'))}, "
        f"after recovery {fmt(acc.get('after_recovery'))}{sizes}{speed_s}"
    )


# ---------------------------------------------------------------------- --int8-report


def _int8_report(source: Path, output: Path, dm: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """Dense (the source checkpoint's model) and pruned (the saved folder), fp32 and dynamic int8, on
    the validation split and timed on the CPU (:func:`~lightning_topo.pruning.report.compare_int8`);
    prints the table and writes ``output/int8_report.json`` atomically (not listed in ``SHA256SUMS``),
    with the prune ``summary`` under ``prune_summary``, its ``cpu_speedup`` now measured (throughput
    at 32 x 64 of each variant against dense fp32)."""
    import json

    from lightning_topo.data.files import write_text_atomic
    from lightning_topo.pruning.export import load_compressed
    from lightning_topo.pruning.report import compare_int8, format_table

    dense = _load_module(source, None).model.cpu().float().eval()
    pruned = load_compressed(output).eval()
    val = dm.val_dataloader()
    report = compare_int8(dense, pruned, val)
    report["settings"].update(
        dense=str(source), pruned=str(output), split="val", val_examples=len(val.dataset)
    )
    print(format_table(report))
    rows = report["rows"]
    reference = report["settings"]["reference"]
    report["prune_summary"] = {
        **summary,
        "cpu_speedup": {name: row["speedup"] for name, row in rows.items() if name != reference},
    }
    target = output / "int8_report.json"
    write_text_atomic(target, json.dumps(report, indent=1) + "\n", overwrite=True)
    print(f"int8 report: {target}")
    return report


if __name__ == "__main__":
    raise SystemExit(main())
