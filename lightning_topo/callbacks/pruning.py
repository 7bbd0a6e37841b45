r"""
Topological pruning
===================

Structured pruning of FFN units and attention heads during ``fit``, followed by training as a
recovery fine-tune, and a compressed Hugging Face checkpoint at the end.

The callback only decides *when* to prune and *where* to log; the work is
:func:`lightning_topo.pruning.prune_model` (scores, budget, surgery) and
:func:`lightning_topo.pruning.save_compressed`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_topo.pruning.importance import UNIT_KINDS, resolve_method
from lightning_topo.pruning.structured import check_ffn_multiple, count_encoder_parameters, layer_widths

__all__ = ["TopologicalPruning"]


class TopologicalPruning(Callback):
    r"""Prune the model's encoder to a parameter budget during (or at the end of) training.

    At the start of epoch ``prune_epoch`` (after ``prune_epoch`` epochs of training) the callback
    scores every FFN unit and attention head on ``calibration_batches`` batches of the training
    dataloader (or ``dataloader``), removes the least important ones for real (smaller weight
    matrices), swaps ``pl_module.model`` for a model whose config describes the new shapes and
    rebuilds the optimizers (``trainer.strategy.setup_optimizers``), so the remaining epochs are the
    recovery fine-tune. With ``steps > 1`` it prunes at ``steps`` consecutive epochs, each to the
    geometric intermediate budget ``ratio ** (k / steps)`` of the original encoder parameters.
    With ``prune_epoch=None`` it prunes once at the end of ``fit`` (no recovery).

    Logged (``pl_module.log`` after each pruning step): ``prune/params`` (encoder parameters),
    ``prune/ratio`` (their fraction of the original encoder), ``prune/total_params``. On rank zero
    with a ``WandbLogger``: a ``wandb.Table`` ``prune/kept_units`` (step, layer, kind, kept, of) and a
    bar plot ``prune/kept_units_plot``. At the end of ``fit`` (rank zero) the compressed checkpoint
    is written to ``output_dir`` (with the tokenizer of ``trainer.datamodule.tokenizer`` when there
    is one), plus ``pruning_history.json`` and ``importance_step{k}.csv``.

    Resuming: a Lightning checkpoint saved after pruning holds the smaller shapes.
    :class:`~lightning_topo.models.SequenceClassifier` rebuilds its model from the config stored in
    the checkpoint (``hf_config``), so ``trainer.fit(ckpt_path=...)`` works with it; the callback's
    own state (which steps are done) is restored, so it does not prune twice. Other LightningModules
    must rebuild the pruned shapes in their ``on_load_checkpoint``; otherwise loading fails with a
    size mismatch (the callback warns about this at ``setup``). Pruning mid-training swaps modules,
    so it needs a single-device strategy (DDP wrappers hold the old modules); with DDP use
    ``prune_epoch=None``.

    Args:
        method: importance method, see :func:`lightning_topo.pruning.prune_model` (default
            ``"topological"``).
        ratio: fraction of the encoder's parameters kept at the end, in ``(0, 1]`` (default 0.6).
        prune_epoch: epoch at whose start the (first) pruning step happens; ``None`` = at fit end.
        steps: number of pruning steps (``>= 1``), at epochs ``prune_epoch, prune_epoch + 1, ...``.
        units: kinds to prune, subset of ``("ffn", "heads")``.
        calibration_batches: training batches used for calibration (default 16).
        max_positions: token positions sampled for calibration (default 2048).
        dataloader: calibration batches to use instead of the training dataloader.
        output_dir: where to save the compressed checkpoint at fit end (``None``: not saved).
        overwrite: replace an existing ``output_dir`` (default ``False``: raise at fit end).
        min_heads, min_ffn: floors per layer.
        ffn_multiple: pruned FFN widths are rounded down to a multiple of this (default 8, faster
            GEMMs; ``1`` keeps the exact budget).
        stat: reading B's summary (``"max"``/``"total"``).
        seed: calibration sampling and ``random`` scores.

    Example::

        trainer = Trainer(max_epochs=3, callbacks=[TopologicalPruning(ratio=0.6, prune_epoch=1,
                                                                       output_dir="outputs/pruned")])
        trainer.fit(SequenceClassifier(), datamodule=TextClassificationDataModule())
    """

    def __init__(
        self,
        method: str = "topological",
        ratio: float = 0.6,
        *,
        prune_epoch: int | None = 0,
        steps: int = 1,
        units: Sequence[str] = UNIT_KINDS,
        calibration_batches: int = 16,
        max_positions: int = 2048,
        dataloader: Iterable[Mapping[str, Any]] | None = None,
        output_dir: str | Path | None = None,
        overwrite: bool = False,
        min_heads: int = 1,
        min_ffn: int = 1,
        ffn_multiple: int = 8,
        stat: str = "max",
        seed: int = 0,
    ) -> None:
        super().__init__()
        resolve_method(method)
        if isinstance(ratio, bool) or not 0.0 < float(ratio) <= 1.0:
            raise ValueError(f"ratio (fraction of encoder parameters kept) must be in (0, 1]; got {ratio!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1; got {steps}")
        if prune_epoch is not None and prune_epoch < 0:
            raise ValueError(f"prune_epoch must be >= 0 or None (prune at fit end); got {prune_epoch}")
        if prune_epoch is None and steps != 1:
            raise ValueError("steps > 1 needs prune_epoch (pruning at fit end is a single step)")
        check_ffn_multiple(ffn_multiple)
        if calibration_batches < 1:
            raise ValueError(f"calibration_batches must be >= 1; got {calibration_batches}")
        self.method = method
        self.ratio = float(ratio)
        self.prune_epoch = prune_epoch
        self.steps = int(steps)
        self.units = tuple(units)
        self.calibration_batches = int(calibration_batches)
        self.max_positions = int(max_positions)
        self.dataloader = dataloader
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.overwrite = overwrite
        self.min_heads = min_heads
        self.min_ffn = min_ffn
        self.ffn_multiple = ffn_multiple
        self.stat = stat
        self.seed = seed
        #: encoder parameters before the first step (set at the first step; kept in state_dict).
        self.original_params: int | None = None
        #: one dict per pruning step: epoch, global_step, params, ratio, kept widths.
        self.history: list[dict[str, Any]] = []
        self._tables: list[Any] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, ratio=self.ratio, units=self.units)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _hf_model(pl_module: pl.LightningModule) -> nn.Module:
        model = getattr(pl_module, "model", None)
        return model if isinstance(model, nn.Module) else pl_module

    def _calibration(self, trainer: pl.Trainer) -> Iterable[Mapping[str, Any]]:
        if self.dataloader is not None:
            return self.dataloader
        loader = trainer.train_dataloader
        if loader is None:
            trainer.fit_loop.setup_data()
            loader = trainer.train_dataloader
        if loader is None:
            raise ValueError(
                "TopologicalPruning needs calibration data: pass dataloader=... or train with a dataloader"
            )
        return _take(loader, self.calibration_batches)

    def _prune_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, at_fit_end: bool) -> None:
        from lightning_topo.pruning.api import prune_model
        from lightning_topo.pruning.export import to_exportable

        model = self._hf_model(pl_module)
        current = count_encoder_parameters(model)
        if self.original_params is None:
            self.original_params = current
        k = len(self.history) + 1
        target = self.original_params * self.ratio ** (k / self.steps)
        step_ratio = min(1.0, target / current)
        trainable = {n: p.requires_grad for n, p in model.named_parameters()}
        _, info = prune_model(
            model,
            self._calibration(trainer),
            method=self.method,
            ratio=step_ratio,
            units=self.units,
            min_heads=self.min_heads,
            min_ffn=self.min_ffn,
            ffn_multiple=self.ffn_multiple,
            max_positions=self.max_positions,
            stat=self.stat,
            seed=self.seed + k,
            return_info=True,
        )
        new_model = to_exportable(model)
        for n, p in new_model.named_parameters():
            if n in trainable:
                p.requires_grad_(trainable[n])
        if new_model is not model:
            if model is pl_module:
                raise TypeError("per-layer widths need the HF model to live in pl_module.model to be swapped")
            pl_module.model = new_model
        params = count_encoder_parameters(new_model)
        record = {
            "step": k,
            "epoch": int(trainer.current_epoch),
            "global_step": int(trainer.global_step),
            "at_fit_end": at_fit_end,
            "params": params,
            "ratio": params / self.original_params,
            "total_params": sum(p.numel() for p in new_model.parameters()),
            "widths": layer_widths(new_model),
        }
        self.history.append(record)
        self._tables.append(info.table)
        rank_zero_info(
            f"TopologicalPruning step {k}/{self.steps}: encoder {current} -> {params} parameters "
            f"({record['ratio']:.3f} of the original); heads {record['widths']['heads']}, FFN {record['widths']['ffn']}"
        )
        if not at_fit_end:
            trainer.strategy.setup_optimizers(trainer)
            pl_module.log("prune/params", float(params), on_step=False, on_epoch=True, sync_dist=False)
            pl_module.log("prune/ratio", record["ratio"], on_step=False, on_epoch=True)
            pl_module.log("prune/total_params", float(record["total_params"]), on_step=False, on_epoch=True)
        else:
            for logger in trainer.loggers:
                logger.log_metrics(
                    {"prune/params": float(params), "prune/ratio": record["ratio"]}, step=trainer.global_step
                )
        self._log_wandb(trainer, record)

    @rank_zero_only
    def _log_wandb(self, trainer: pl.Trainer, record: Mapping[str, Any]) -> None:
        try:
            from lightning.pytorch.loggers import WandbLogger
        except ImportError:  # pragma: no cover
            return
        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            rows = [
                [record["step"], layer, kind, kept]
                for kind in ("heads", "ffn")
                for layer, kept in enumerate(record["widths"][kind])
            ]
            logger.log_table(key="prune/kept_units", columns=["step", "layer", "kind", "kept"], data=rows)
            try:
                import wandb

                fig = _kept_figure(self.history)
                logger.experiment.log({"prune/kept_units_plot": wandb.Image(fig)})
            except Exception as err:  # noqa: BLE001 - plots are best effort
                rank_zero_warn(f"TopologicalPruning could not log the kept-units plot: {err}")

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from lightning_topo.pruning.importance import encoder_layers

        encoder_layers(self._hf_model(pl_module))  # fail early on a non-BERT model
        if stage == "fit" and self.output_dir is not None and self.output_dir.exists() and not self.overwrite:
            # fail before training, not after it: the save at fit end would refuse this path
            raise FileExistsError(
                f"TopologicalPruning output_dir {str(self.output_dir)!r} already exists; choose another "
                "output_dir or pass overwrite=True to replace it at fit end"
            )
        if stage == "fit" and trainer.ckpt_path and not hasattr(pl_module, "_shapes_differ"):
            rank_zero_warn(
                "TopologicalPruning: resuming from a checkpoint saved after pruning needs the LightningModule "
                "to rebuild the pruned shapes in on_load_checkpoint (SequenceClassifier does); otherwise "
                "loading fails with a size mismatch"
            )

    def _due(self, epoch: int) -> bool:
        if self.prune_epoch is None or len(self.history) >= self.steps:
            return False
        return epoch >= self.prune_epoch + len(self.history)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._due(trainer.current_epoch):
            self._prune_step(trainer, pl_module, at_fit_end=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.prune_epoch is None and not self.history:
            self._prune_step(trainer, pl_module, at_fit_end=True)
        elif self.prune_epoch is not None and len(self.history) < self.steps:
            rank_zero_warn(
                f"TopologicalPruning ran {len(self.history)} of {self.steps} pruning steps: training ended at "
                f"epoch {trainer.current_epoch}; set max_epochs > prune_epoch + steps - 1 = "
                f"{self.prune_epoch + self.steps - 1} to reach ratio={self.ratio}"
            )
        self._save(trainer, pl_module)

    @rank_zero_only
    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.output_dir is None or not self.history:
            return
        from lightning_topo.pruning.export import save_compressed

        datamodule = getattr(trainer, "datamodule", None)
        tokenizer = None
        if datamodule is not None:
            try:
                tokenizer = datamodule.tokenizer
            except Exception:  # noqa: BLE001 - a datamodule without a tokenizer
                tokenizer = None
        model = self._hf_model(pl_module)
        was_training = model.training
        path = save_compressed(model.eval(), self.output_dir, tokenizer=tokenizer, overwrite=self.overwrite)
        model.train(was_training)
        (path / "pruning_history.json").write_text(json.dumps(self.state_dict(), indent=1, default=str))
        for k, table in enumerate(self._tables, start=1):
            table.to_csv(path / f"importance_step{k}.csv")
        rank_zero_info(f"TopologicalPruning saved the compressed checkpoint to {path}")

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "ratio": self.ratio,
            "steps": self.steps,
            "original_params": self.original_params,
            "history": self.history,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.original_params = state_dict.get("original_params")
        self.history = list(state_dict.get("history", []))


def _take(loader: Iterable[Any], n: int) -> list[Any]:
    out = []
    for i, batch in enumerate(loader):
        if i >= n:
            break
        out.append(batch)
    return out


def _kept_figure(history: Sequence[Mapping[str, Any]]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3), dpi=100)
    FigureCanvasAgg(fig)
    last = history[-1]["widths"]
    for ax_i, kind in enumerate(("heads", "ffn")):
        ax = fig.add_subplot(1, 2, ax_i + 1)
        vals = last[kind]
        ax.bar(range(len(vals)), vals)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"kept {kind}")
        ax.set_title(f"{kind} after step {history[-1]['step']} ({history[-1]['ratio']:.2f} of encoder)")
    fig.tight_layout()
    return fig
