"""``lightning-topo analyze``: per-layer scores of one or two saved models, without training.

    lightning-topo analyze --model outputs/pruned --data embedded --split val \\
        --scores psf,geometry --layers all --output outputs/analysis

``--model`` is a Hugging Face model folder (``config.json`` + ``*.safetensors``), e.g. a
compressed checkpoint written by ``lightning-topo prune`` / ``TopologicalPruning`` (loaded with
:func:`~lightning_topo.pruning.load_compressed`, checked against its ``SHA256SUMS``), or a Lightning
``.ckpt`` written while fitting :class:`~lightning_topo.models.SequenceClassifier` (``lightning-topo
fit``; read with ``weights_only=True``; its tokenizer is the base model's). Give it twice to compare
two models (pre-trained vs fine-tuned, dense vs pruned). Sentence pairs: ``--text-pair-column``
tokenises both segments together, and every lens reads both. The data come from
:class:`~lightning_topo.models.TextClassificationDataModule` (the embedded dataset, or a CSV / TSV
/ JSONL file), tokenised with each model's own tokenizer (or ``--tokenizer``). The numbers come
from :func:`lightning_topo.analyze`, i.e. from the monitors' own functions.

Writes into ``--output``:

* ``layers.csv`` -- one row per layer (``layer`` = hidden-state index, 0 = embeddings), one column
  per score (``topo/psf``, ``topo/h0/total_persistence``, ``geometry/cone``, ...). With two models
  the table is side by side: every score column appears once per model, suffixed ``@<label>``
  (``topo/psf@finetuned``, ``topo/psf@pruned``); labels are the folder names (``_2`` appended
  when both are equal).
* ``summary.json`` -- per model its path, the settings, every metric under the monitors' names
  and the per-layer records.
* PNG figures -- each headline score per layer (both models in one figure) and the per-class
  persistence diagrams of ``--diagram-layer`` (default: the deepest measured layer) per model.

Every argument, model folder, data file and the output folder are checked before any model is
loaded; a bad input prints one line (``lightning-topo analyze: error: ...``), exits with status 2
and writes nothing.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_topo.analysis import (
    SCORE_FAMILIES,
    AnalysisResult,
    analyze,
    check_score_families,
    plot_results,
    records_to_csv,
)
from lightning_topo.cli.errors import USER_ERRORS, report_refusal
from lightning_topo.data.files import write_text_atomic
from lightning_topo.encoding import max_sequence_length
from lightning_topo.representations import resolve_layers

__all__ = ["build_parser", "main"]

SPLITS = ("train", "val", "test")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
_ACCEPTED_MODEL = (
    "a Hugging Face model folder (config.json and *.safetensors weights), e.g. a compressed checkpoint "
    "written by lightning-topo prune or TopologicalPruning, or a Lightning .ckpt of lightning-topo fit"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-topo analyze``."""
    p = argparse.ArgumentParser(
        prog="lightning-topo analyze",
        description="Per-layer PSF / persistence / geometry scores of saved models (docs/analyze.md).",
    )
    p.add_argument("--model", action="append", required=True, help="model folder; give twice to compare")
    p.add_argument("--data", default="embedded", help="'embedded' (default) or a CSV/TSV/JSONL file")
    p.add_argument("--split", default="val", help=f"one of {', '.join(SPLITS)} (default val)")
    p.add_argument("--scores", default="psf", help=f"comma-separated subset of {', '.join(SCORE_FAMILIES)}")
    p.add_argument(
        "--layers", default="all", help="'all' or comma-separated hidden-state indices (0 = embeddings)"
    )
    p.add_argument("--output", required=True, help="folder for layers.csv, summary.json and figures")
    p.add_argument("--overwrite", action="store_true", help="replace those files in an existing --output")
    p.add_argument(
        "--max-points-per-class", type=int, default=None, help="sampling cap per class (default 512)"
    )
    p.add_argument("--max-samples", type=int, default=None, help="read at most this many examples")
    p.add_argument("--pooling", default=None, help="cls (default) or mean")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--resamples", type=int, default=5, help="PSF as the mean of this many per-class re-draws (default 5)"
    )
    p.add_argument(
        "--diagram-layer", type=int, default=None, help="layer of the diagram figure (default: deepest)"
    )
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: each model's folder)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--text-pair-column", default=None, help="second text column of sentence pairs (e.g. NLI)")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-topo analyze``; 0 on success, 2 for bad input (one line on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except USER_ERRORS as err:
        return report_refusal("analyze", err)


def _run(args: argparse.Namespace) -> int:
    _read_ckpt.cache_clear()  # a .ckpt is read afresh by every command (it may have been rewritten)
    try:
        return _run_checked(args)
    finally:
        _read_ckpt.cache_clear()


def _run_checked(args: argparse.Namespace) -> int:
    families = _check_options(args)
    models = [_check_model(Path(m)) for m in args.model]
    layers = _check_layers(args.layers, models, args.diagram_layer, args.max_length)
    tokenizers = [_check_tokenizer(m, args.tokenizer) for m in models]
    _check_data(args)
    output = _check_output(Path(args.output), args.overwrite)
    labels = _labels(models)
    results = {
        label: _analyze_one(args, model, tok, families, layers)
        for label, model, tok in zip(labels, models, tokenizers, strict=True)
    }
    _write(output, results, models, args)
    print(f"analysed {', '.join(labels)}: {len(next(iter(results.values())).layers)} layers; wrote {output}")
    return 0


# ---------------------------------------------------------------------- checks before any work


def _check_options(args: argparse.Namespace) -> tuple[str, ...]:
    if len(args.model) > 2:
        raise ValueError(f"--model can be given once or twice (to compare two models); got {len(args.model)}")
    try:
        families = check_score_families(args.scores)
    except ValueError as err:
        raise ValueError(f"--{err}") from None
    if args.split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}; got {args.split!r}")
    if args.pooling is not None and args.pooling not in ("cls", "mean"):
        raise ValueError(f"--pooling must be cls or mean; got {args.pooling!r}")
    for name, value, minimum in (
        ("--max-points-per-class", args.max_points_per_class, 2),
        ("--max-samples", args.max_samples, 1),
        ("--max-length", args.max_length, 2),
        ("--batch-size", args.batch_size, 1),
        ("--seed", args.seed, 0),
        ("--resamples", args.resamples, 1),
    ):
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return families


@functools.lru_cache(maxsize=2)
def _read_ckpt(path: Path) -> dict[str, Any]:
    """A Lightning ``.ckpt`` of ``SequenceClassifier``, read with ``weights_only=True`` and checked:
    its ``state_dict`` and its hyper-parameters (``model_name_or_path``: the base model, ``None`` for
    the embedded MiniLM). Cached while the options are checked (read once, not once per check);
    :func:`_load_ckpt` empties the cache. Do not modify the returned dict."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file: one line naming it
        raise ValueError(f"--model {path} is not a readable Lightning checkpoint ({type(err).__name__}: {err})") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "state_dict" not in ckpt or "model_name_or_path" not in hparams:
        raise ValueError(
            f"--model {path} is a .ckpt without lightning-topo SequenceClassifier hyper-parameters "
            "(model_name_or_path); for your own LightningModule call lightning_topo.analyze(module, loader) in Python"
        )
    return ckpt


def _ckpt_hparams(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``SequenceClassifier`` arguments (LightningCLI's ``_instantiator`` and other
    entries that are not arguments left out)."""
    import inspect

    from lightning_topo.models.classifier import SequenceClassifier

    accepted = inspect.signature(SequenceClassifier).parameters
    return {k: v for k, v in ckpt["hyper_parameters"].items() if k in accepted}


def _model_folder(path: Path) -> Path:
    """The folder holding the model's config and tokenizer (a ``.ckpt``'s base model folder)."""
    if path.suffix == ".ckpt":
        from lightning_topo.models.embedded import resolve_model_path

        base = _read_ckpt(path)["hyper_parameters"]["model_name_or_path"]
        try:
            folder = Path(resolve_model_path(base))
        except (FileNotFoundError, ImportError) as err:
            raise FileNotFoundError(f"--model {path}: its base model (model_name_or_path) is missing: {err}") from None
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"--model {path}: its base model folder {folder} (model_name_or_path) is missing")
        return folder
    return path


def _model_config(path: Path) -> dict[str, Any]:
    """The model's Hugging Face config: a ``.ckpt``'s own (``hf_config``, the shapes it was saved
    with) where it has one, else its folder's ``config.json``."""
    if path.suffix == ".ckpt":
        config = _read_ckpt(path).get("hf_config")
        if isinstance(config, dict):
            return config
    try:
        return json.loads((_model_folder(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"--model {path}: config.json is not readable JSON ({err})") from None


def _check_model(path: Path) -> Path:
    """A folder that :func:`~lightning_topo.pruning.load_compressed` can read, or a ``.ckpt``; else one line."""
    if not path.exists():
        raise FileNotFoundError(f"--model {path} does not exist; accepted: {_ACCEPTED_MODEL}")
    if path.is_file() and path.suffix == ".ckpt":
        _model_folder(path)
        return path
    if not path.is_dir():
        raise NotADirectoryError(
            f"--model {path} is a file, not a checkpoint folder; accepted: {_ACCEPTED_MODEL}"
        )
    missing = [
        w
        for w, ok in (
            ("config.json", (path / "config.json").is_file()),
            ("*.safetensors", any(path.glob("*.safetensors"))),
        )
        if not ok
    ]
    if missing:
        raise ValueError(
            f"--model {path} is not a checkpoint (no {' and no '.join(missing)}); accepted: {_ACCEPTED_MODEL}"
        )
    return path


def _check_layers(
    spec: str, models: list[Path], diagram_layer: int | None, max_length: int | None = None
) -> int | list[int] | str:
    """``--layers`` parsed and checked against every model's depth, and ``--max-length`` against its
    position embeddings (both read from its config)."""
    if spec.strip() == "all":
        layers: int | list[int] | str = "all"
    else:
        try:
            layers = [int(x) for x in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"--layers must be 'all' or comma-separated integers such as 0,6,12; got {spec!r}"
            ) from None
    for model in models:
        config = _model_config(model)
        longest = max_sequence_length(config)
        if max_length is not None and longest is not None and max_length > longest:
            raise ValueError(
                f"--max-length {max_length} is longer than --model {model} accepts ({longest} positions); "
                f"pass --max-length {longest} or less"
            )
        depth = config.get("num_hidden_layers", config.get("n_layers"))
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(
                f"--model {model}: config.json has no num_hidden_layers; accepted: {_ACCEPTED_MODEL}"
            )
        try:
            selected = resolve_layers(layers, depth)
        except ValueError as err:
            raise ValueError(f"--{err} ({model})") from None
        if diagram_layer is not None and diagram_layer not in selected:
            raise ValueError(
                f"--diagram-layer {diagram_layer} is not among the measured layers {selected} ({model})"
            )
    return layers


def _check_tokenizer(model: Path, tokenizer: str | None) -> str:
    if tokenizer is not None:
        if not Path(tokenizer).is_dir():
            raise FileNotFoundError(
                f"--tokenizer {tokenizer} is not a folder; pass a folder saved with tokenizer.save_pretrained"
            )
        return tokenizer
    model = _model_folder(model)
    if not any((model / name).is_file() for name in _TOKENIZER_FILES):
        raise ValueError(
            f"--model {model} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); pass --tokenizer FOLDER"
        )
    return str(model)


def _check_data(args: argparse.Namespace) -> None:
    if args.data == "embedded":
        return
    from lightning_topo.data.files import read_table

    path = Path(args.data)
    if not path.is_file():
        raise FileNotFoundError(
            f"--data {args.data} is not a file; accepted: 'embedded' or a CSV/TSV/JSONL file"
        )
    _, columns = read_table(path, "--data")
    missing = [c for c in (args.text_column, args.label_column, args.text_pair_column) if c and c not in columns]
    if missing:
        raise ValueError(
            f"--data {path} has no column {missing[0]!r}; its columns are {columns}. "
            "Name them with --text-column, --label-column and --text-pair-column"
        )


def _check_output(output: Path, overwrite: bool) -> Path:
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output} is a file; pass a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--output {output} already exists and is not empty; pass --overwrite or choose another folder"
        )
    return output


def _labels(models: list[Path]) -> list[str]:
    labels = [m.resolve().name or "model" for m in models]
    if len(labels) == 2 and labels[0] == labels[1]:
        labels[1] += "_2"
    return labels


# ---------------------------------------------------------------------- work


def _analyze_one(
    args: argparse.Namespace, model_path: Path, tokenizer: str, families: tuple[str, ...], layers: Any
) -> AnalysisResult:
    """Load one model and its data split, and measure it."""
    from lightning_topo.models.datamodule import TextClassificationDataModule
    from lightning_topo.pruning.export import MANIFEST, load_compressed

    if model_path.suffix == ".ckpt":
        model = _load_ckpt(model_path)
    else:
        model = load_compressed(model_path, verify=(model_path / MANIFEST).is_file()).eval()
    dm = TextClassificationDataModule(
        data_file=None if args.data == "embedded" else args.data,
        text_column=args.text_column,
        text_pair_column=args.text_pair_column,
        label_column=args.label_column,
        tokenizer_name_or_path=tokenizer,
        max_length=args.max_length,
        batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        seed=args.seed,
    )
    dm.setup({"train": "fit", "val": "validate", "test": "test"}[args.split])
    return analyze(
        model,
        dm.dataloader(args.split),
        scores=families,
        layers=layers,
        pooling=args.pooling,
        max_points_per_class=args.max_points_per_class,
        max_samples=args.max_samples,
        seed=args.seed,
        resamples=args.resamples,
        tokenizer=tokenizer,
        progress=not args.no_progress,
    )


def _load_ckpt(path: Path) -> Any:
    """A ``SequenceClassifier`` rebuilt from its hyper-parameters, with the checkpoint's weights (a
    pruned model's shapes come from the checkpoint's own config, as when Lightning resumes it)."""
    from lightning_topo.models.classifier import SequenceClassifier

    ckpt = _read_ckpt(path)
    _read_ckpt.cache_clear()
    module = SequenceClassifier(**_ckpt_hparams(ckpt))
    state = dict(ckpt["state_dict"])  # on_load_checkpoint drops unregistered auxiliary weights from it
    try:
        module.on_load_checkpoint({**ckpt, "state_dict": state})
        module.load_state_dict(state)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"--model {path}: its weights do not fit its own model ({str(err).splitlines()[0]})") from None
    return module.eval()


def _write(
    output: Path, results: dict[str, AnalysisResult], models: list[Path], args: argparse.Namespace
) -> None:
    """``layers.csv``, ``summary.json`` and the figures, each written atomically."""
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output / "layers.csv", records_to_csv(side_by_side(results)), overwrite=True)
    summary = {
        "command": "lightning-topo analyze",
        "data": args.data,
        "split": args.split,
        "table": "layers.csv: one row per layer; with two models every score column is suffixed @<label>",
        "models": {
            label: {"path": str(path.resolve()), **result.to_dict()}
            for (label, result), path in zip(results.items(), models, strict=True)
        },
    }
    write_text_atomic(output / "summary.json", json.dumps(summary, indent=2) + "\n", overwrite=True)
    plot_results(
        results if len(results) > 1 else {"": next(iter(results.values()))},
        output,
        layer=args.diagram_layer,
        overwrite=True,
    )


def side_by_side(results: dict[str, AnalysisResult]) -> list[dict[str, Any]]:
    """One record per layer; one model: its columns; two: every column suffixed ``@<label>``."""
    if len(results) == 1:
        return next(iter(results.values())).to_records()
    layers = sorted({i for r in results.values() for i in r.layers})
    columns = list(dict.fromkeys(c for r in results.values() for c in r.columns))
    return [
        {
            "layer": i,
            **{
                f"{c}@{label}": r.rows.get(i, {}).get(c, float("nan"))
                for c in columns
                for label, r in results.items()
            },
        }
        for i in layers
    ]


if __name__ == "__main__":
    raise SystemExit(main())
