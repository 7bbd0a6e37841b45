"""``lightning-topo prune``: prune a trained checkpoint, optionally recover, write a compressed folder.

    lightning-topo prune --checkpoint runs/.../epoch=2.ckpt --method topological --ratio 0.6 \\
        --recover-epochs 1 --output outputs/pruned

``--checkpoint`` is a Lightning ``.ckpt`` of :class:`~lightning_topo.models.SequenceClassifier` or a
Hugging Face folder (e.g. one written by ``save_compressed``). Calibration and recovery data come
from :class:`~lightning_topo.models.TextClassificationDataModule`: by default the embedded dataset
(or the datamodule settings stored in the ``.ckpt`` by ``lightning-topo fit``), overridable with
``--data-file`` etc. The source checkpoint is only read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_topo.pruning.importance import METHODS

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning-topo prune",
        description="Topology-guided structured pruning of a trained checkpoint (docs/pruning.md).",
    )
    p.add_argument("--checkpoint", required=True, help="Lightning .ckpt or Hugging Face model folder")
    p.add_argument("--output", required=True, help="folder for the compressed checkpoint")
    p.add_argument("--method", default="topological", choices=METHODS)
    p.add_argument("--ratio", type=float, default=0.6, help="fraction of encoder parameters kept, in (0, 1]")
    p.add_argument("--units", nargs="+", default=["ffn", "heads"], choices=["ffn", "heads"])
    p.add_argument(
        "--recover-epochs", type=int, default=1, help="recovery fine-tune epochs after pruning (0: none)"
    )
    p.add_argument("--calibration-batches", type=int, default=16)
    p.add_argument("--max-positions", type=int, default=2048)
    p.add_argument("--min-heads", type=int, default=1)
    p.add_argument("--min-ffn", type=int, default=1)
    p.add_argument(
        "--ffn-multiple",
        type=int,
        default=8,
        help="round pruned FFN widths down to a multiple of this (default 8, faster GEMMs; 1 = exact budget)",
    )
    p.add_argument(
        "--learning-rate", type=float, default=None, help="recovery learning rate (default: checkpoint's)"
    )
    p.add_argument("--data-file", default=None, help="data file (default: the embedded dataset)")
    p.add_argument("--split-column", default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--limit-train", type=int, default=None, help="use a seeded subset of the training split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    p.add_argument("--accelerator", default="auto")
    return p


def _load_module(checkpoint: Path, learning_rate: float | None) -> tuple[Any, dict[str, Any]]:
    """A SequenceClassifier for ``checkpoint`` and the datamodule settings stored with it."""
    import torch

    from lightning_topo.models.classifier import SequenceClassifier

    if checkpoint.is_dir():
        if not (checkpoint / "config.json").exists():
            raise FileNotFoundError(
                f"--checkpoint {checkpoint} is a folder without config.json (not a HF model)"
            )
        from transformers import AutoConfig

        import lightning_topo  # noqa: F401  (Auto-class registration of pruned_bert)

        config = AutoConfig.from_pretrained(checkpoint)
        kwargs: dict[str, Any] = {"model_name_or_path": str(checkpoint), "num_labels": int(config.num_labels)}
        if learning_rate is not None:
            kwargs["learning_rate"] = learning_rate
        return SequenceClassifier(**kwargs), {"tokenizer_name_or_path": str(checkpoint)}
    if not checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist")
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    dm_hparams = dict(ckpt.get("datamodule_hyper_parameters") or {})
    overrides = {} if learning_rate is None else {"learning_rate": learning_rate}
    module = SequenceClassifier.load_from_checkpoint(checkpoint, map_location="cpu", **overrides)
    return module, dm_hparams


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as err:
        print(f"lightning-topo prune: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import lightning.pytorch as pl

    from lightning_topo.models.datamodule import TextClassificationDataModule
    from lightning_topo.pruning.export import save_compressed
    from lightning_topo.pruning.structured import count_encoder_parameters

    if not 0.0 < args.ratio <= 1.0:
        raise ValueError(f"--ratio (fraction of encoder parameters kept) must be in (0, 1]; got {args.ratio}")
    if args.recover_epochs < 0:
        raise ValueError(f"--recover-epochs must be >= 0; got {args.recover_epochs}")
    output = Path(args.output)
    source = Path(args.checkpoint).resolve()
    if output.resolve() == source or source in output.resolve().parents:
        raise ValueError(
            "--output must not be the source checkpoint or inside it (the source is never modified)"
        )
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"--output {output} exists; pass --overwrite to replace it")
    pl.seed_everything(args.seed, workers=True, verbose=False)
    module, dm_hparams = _load_module(source, args.learning_rate)
    model = module.model
    from lightning_topo.pruning.importance import encoder_layers

    encoder_layers(model)  # clear error for a non-BERT model before reading any data
    dm_kwargs: dict[str, Any] = {
        k: v
        for k, v in dm_hparams.items()
        if k
        in (
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
            "seed",
        )
    }
    if dm_kwargs.get("tokenizer_name_or_path") is None:
        dm_kwargs["tokenizer_name_or_path"] = module.hparams.get("model_name_or_path")
    for key, value in (
        ("data_file", args.data_file),
        ("split_column", args.split_column),
        ("max_length", args.max_length),
        ("batch_size", args.batch_size),
    ):
        if value is not None:
            dm_kwargs[key] = value
    if args.data_file is not None:
        dm_kwargs.pop("train_file", None)
        dm_kwargs.pop("val_file", None)
    if args.limit_train is not None:
        dm_kwargs["limit"] = {"train": args.limit_train}
    dm = TextClassificationDataModule(**dm_kwargs)
    dm.setup("fit")
    before = count_encoder_parameters(model)

    if args.recover_epochs > 0:
        from lightning_topo.callbacks.pruning import TopologicalPruning

        callback = TopologicalPruning(
            method=args.method,
            ratio=args.ratio,
            prune_epoch=0,
            units=args.units,
            calibration_batches=args.calibration_batches,
            max_positions=args.max_positions,
            output_dir=output,
            overwrite=args.overwrite,
            min_heads=args.min_heads,
            min_ffn=args.min_ffn,
            ffn_multiple=args.ffn_multiple,
            seed=args.seed,
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
        metrics = trainer.validate(module, datamodule=dm, verbose=False)
        model = module.model
    else:
        from lightning_topo.pruning.api import prune_model

        calib = []
        for i, batch in enumerate(dm.train_dataloader()):
            if i >= args.calibration_batches:
                break
            calib.append(batch)
        prune_model(
            model,
            calib,
            method=args.method,
            ratio=args.ratio,
            units=args.units,
            min_heads=args.min_heads,
            min_ffn=args.min_ffn,
            ffn_multiple=args.ffn_multiple,
            max_positions=args.max_positions,
            seed=args.seed,
        )
        save_compressed(model.eval(), output, tokenizer=dm.tokenizer, overwrite=args.overwrite)
        metrics = pl.Trainer(
            accelerator=args.accelerator, devices=1, logger=False, enable_progress_bar=False
        ).validate(module, datamodule=dm, verbose=False)
    after = count_encoder_parameters(model)
    acc = metrics[0].get("val/acc") if metrics else None
    acc_s = "n/a" if acc is None else f"{float(acc):.4f}"
    print(
        f"pruned {source.name} with {args.method}: encoder parameters {before} -> {after} "
        f"({after / before:.3f}); val/acc {acc_s} after {args.recover_epochs} recovery epoch(s); saved to {output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
