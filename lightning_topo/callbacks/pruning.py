r"""
Topological pruning
===================

Structured pruning of FFN units and attention heads during ``fit``, followed by training as a
recovery fine-tune (optionally distilled from the unpruned model), and a compressed Hugging Face
checkpoint at the end.

The callback only decides *when* to prune and *where* to write and log; the work is
:func:`lightning_topo.pruning.prune_model` (scores, budget, surgery) and
:func:`lightning_topo.pruning.save_compressed`.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_topo.pruning.config import DEFAULTS, PruningConfig, check_int, resolve_stat
from lightning_topo.pruning.distill import DISTILL_DEFAULTS, check_distill_settings, distillation_loss
from lightning_topo.pruning.importance import resolve_method
from lightning_topo.pruning.structured import count_encoder_parameters, layer_widths

__all__ = ["TopologicalPruning"]

#: Name of the folder, inside the run's versioned log folder, that receives the compressed checkpoint.
DEFAULT_FOLDER = "pruned"


class TopologicalPruning(Callback):
    r"""Prune the model's encoder to a parameter budget during (or at the end of) training.

    At the start of epoch ``prune_epoch`` (after ``prune_epoch`` epochs of training) the callback
    scores every FFN unit and attention head on ``calibration_batches`` batches of the training
    dataloader (or of ``dataloader``), removes the least important ones for real (smaller weight
    matrices), swaps ``pl_module.model`` for a model whose config describes the new shapes and
    rebuilds the optimizers (``trainer.strategy.setup_optimizers``), so the remaining epochs are the
    recovery fine-tune. With ``steps > 1`` it prunes at ``steps`` consecutive epochs, step ``k`` to
    the geometric intermediate budget ``ratio ** (k / steps)`` of the original encoder parameters.
    With ``prune_epoch=None`` it prunes once at the end of ``fit`` (no recovery).

    Where the compressed checkpoint goes (at the end of ``fit``, on rank zero): by default into the
    run's own versioned folder, ``<save_dir>/<name>/<version>/pruned`` of the first logger (e.g.
    ``runs/quickstart/version_3/pruned``, next to ``ModelCheckpoint``'s ``checkpoints/``), or
    ``<default_root_dir>/pruned`` without a logger; an existing folder there is never replaced, the
    next free name ``pruned-v1``, ``pruned-v2``, ... is taken instead, so the same command can run
    twice in a row. An explicit ``output_dir`` is used as given and is never overwritten unless
    ``overwrite=True`` (checked at ``setup``, before any training). ``save=False`` writes nothing.
    The folder holds the Hugging Face model (with the tokenizer of ``trainer.datamodule.tokenizer``
    when there is one), ``pruning_history.json`` (this callback's :meth:`state_dict`) and
    ``importance_step{k}.csv``; :attr:`saved_path` tells where it went.

    Logged (``pl_module.log`` after each pruning step): ``prune/params`` (encoder parameters),
    ``prune/ratio`` (their fraction of the original encoder), ``prune/total_params``. With a
    ``WandbLogger``: a table ``prune/kept_units`` (step, layer, kind, kept) and the bar plot
    ``prune/kept_units_plot`` (:func:`lightning_topo.plots.plot_kept_units`).

    Checked at ``setup``, before anything is trained, changed or written: ``pl_module.model`` is a
    model whose pruned shapes can be exported (BERT or RoBERTa family, sequence classifier or bare
    encoder: :func:`lightning_topo.pruning.layout.check_supported`; e.g. ELECTRA is refused), the
    output folder can be created, and training runs in one process.
    Distributed training (``trainer.world_size > 1``) is refused: pruning mid-training replaces the
    modules that DDP wraps. Prune on one device with ``lightning-topo prune``, then fine-tune the
    pruned checkpoint with DDP.

    Resuming: a Lightning checkpoint saved after pruning holds the smaller shapes.
    :class:`~lightning_topo.models.SequenceClassifier` rebuilds its model in ``on_load_checkpoint``
    from the config stored in the checkpoint, so ``trainer.fit(ckpt_path=...)`` works; the
    callback's own state (which steps are done) is restored, so it does not prune twice. Other
    LightningModules must rebuild the pruned shapes in their ``on_load_checkpoint`` and declare it
    with the class attribute ``restores_shapes_on_load = True`` (the callback warns at ``setup`` when
    resuming a module without it).

    Distillation (``distill=True``): just before the first pruning step the callback keeps a frozen
    copy of the unpruned Hugging Face model (``copy.deepcopy``: same device and dtype, eval mode,
    ``requires_grad=False``) as the teacher, and for every training batch of the recovery epochs
    the loss becomes :func:`lightning_topo.pruning.distill.distillation_loss` of the pruned model's
    logits against the teacher's on the same batch (``(1 - alpha) * CE + alpha * T^2 * KL``;
    ``alpha=0`` is exactly plain recovery). It plugs in through the LightningModule's
    ``set_training_loss(fn)`` (:meth:`SequenceClassifier.set_training_loss
    <lightning_topo.models.SequenceClassifier.set_training_loss>`), checked at ``setup``. Why not a
    forward hook on the HF model that rewrites ``outputs.loss``: ``SequenceClassifier`` never
    passes labels to the HF model, it computes the cross-entropy from the logits, so only the
    module can swap the loss it optimises; the documented hook keeps validation and test on plain
    cross-entropy and needs no private Lightning API. Logged during recovery: ``prune/distill_loss``
    (the optimised loss) and ``prune/distill_kl`` (the ``T^2``-scaled soft term alone). The teacher
    is held by the callback only (never in ``pl_module``, so never in its ``state_dict`` or in
    checkpoints) and is dropped at the end of ``fit`` (or on an exception); it costs one more
    forward per batch and the unpruned model's memory. Resuming with ``distill=True`` from a
    checkpoint saved after pruning is refused at ``on_train_start`` (``ValueError``): the teacher
    cannot be rebuilt from the pruned weights; resume with ``distill=False`` or restart from the
    unpruned checkpoint.

    Args:
        method: importance method, a name from :data:`lightning_topo.pruning.config.METHODS` or a
            callable (see :func:`lightning_topo.pruning.prune_model`). Default ``"topological"``.
        ratio: fraction of the encoder's parameters kept at the end, in ``(0, 1]`` (default 0.6).
        prune_epoch: epoch at whose start the (first) pruning step happens (``>= 0``, default 0);
            ``None`` = once at the end of ``fit``.
        steps: number of pruning steps (``>= 1``, default 1), at epochs ``prune_epoch``,
            ``prune_epoch + 1``, ...
        units: kinds to prune: ``"ffn"``, ``"heads"`` or both (default ``("ffn", "heads")``).
        calibration_batches: batches drawn for calibration (``>= 1``, default 16).
        max_positions: token positions sampled for calibration (default 2048).
        dataloader: calibration batches to draw from instead of the training dataloader.
        output_dir: folder for the compressed checkpoint; ``None`` (default) = the run's versioned
            folder described above.
        save: write the compressed checkpoint at the end of ``fit`` (default ``True``).
        overwrite: replace an existing explicit ``output_dir`` (default ``False``: refused at ``setup``).
        min_heads, min_ffn: units each layer keeps at least (``>= 1``).
        ffn_multiple: pruned FFN widths are rounded down to a multiple of this (default 8, faster
            GEMMs; ``1`` keeps the exact budget).
        stat: summary of a unit's H0 diagram, ``"max"`` or ``"total"``; ``None`` (default) = the
            method's own (:data:`~lightning_topo.pruning.config.METHOD_STATS`).
        seed: calibration sampling and ``random`` scores; step ``k`` uses ``seed + k``.
        distill: distil the recovery epochs from the unpruned model (default ``False``); needs
            ``prune_epoch`` set (recovery epochs to distil into).
        temperature: softmax temperature ``T > 0`` of the soft targets (default 2.0).
        alpha: weight of the soft term in ``[0, 1]`` (default 0.5). ``temperature`` and ``alpha``
            are checked even with ``distill=False``, where they are unused.

    Raises:
        ValueError: at construction, on any invalid argument (naming it and what is accepted).

    Example::

        trainer = Trainer(max_epochs=3, callbacks=[TopologicalPruning(ratio=0.6, prune_epoch=1)])
        trainer.fit(SequenceClassifier(), datamodule=TextClassificationDataModule())
        # distilled recovery: TopologicalPruning(ratio=0.4, prune_epoch=1, distill=True)
    """

    def __init__(
        self,
        method: str | Callable[..., Any] = DEFAULTS.method,
        ratio: float = DEFAULTS.ratio,  # type: ignore[assignment]
        *,
        prune_epoch: int | None = 0,
        steps: int = 1,
        units: str | Sequence[str] = DEFAULTS.units,
        calibration_batches: int = DEFAULTS.calibration_batches,
        max_positions: int = DEFAULTS.max_positions,
        dataloader: Iterable[Mapping[str, Any]] | None = None,
        output_dir: str | Path | None = None,
        save: bool = True,
        overwrite: bool = False,
        min_heads: int = DEFAULTS.min_heads,
        min_ffn: int = DEFAULTS.min_ffn,
        ffn_multiple: int = DEFAULTS.ffn_multiple,
        stat: str | None = DEFAULTS.stat,
        seed: int = DEFAULTS.seed,
        distill: bool = False,
        temperature: float = DISTILL_DEFAULTS["temperature"],
        alpha: float = DISTILL_DEFAULTS["alpha"],
    ) -> None:
        super().__init__()
        if ratio is None:
            raise ValueError(
                "ratio (fraction of encoder parameters kept) must be a number in (0, 1], e.g. 0.6; got None "
                "(TopologicalPruning prunes to a parameter budget)"
            )
        #: The validated pruning settings (method, ratio, units, floors, calibration size, seed).
        self.config = PruningConfig(
            method=method,
            ratio=ratio,
            units=units,  # type: ignore[arg-type]
            min_heads=min_heads,
            min_ffn=min_ffn,
            ffn_multiple=ffn_multiple,
            max_positions=max_positions,
            calibration_batches=calibration_batches,
            stat=stat,
            seed=seed,
        )
        self.prune_epoch = check_int(
            "prune_epoch", prune_epoch, 0, allow_none=True, hint=" (None = at fit end)"
        )
        self.steps = int(check_int("steps", steps, 1))  # type: ignore[arg-type]
        if self.prune_epoch is None and self.steps != 1:
            raise ValueError(
                f"steps must be 1 with prune_epoch=None (pruning at fit end is one step); got {steps}"
            )
        for name, flag in (("save", save), ("overwrite", overwrite), ("distill", distill)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False; got {flag!r}")
        check_distill_settings(temperature, alpha)
        if distill and self.prune_epoch is None:
            raise ValueError(
                "distill=True needs recovery epochs after pruning to distil into; prune_epoch=None prunes at "
                "fit end. Set prune_epoch (e.g. 0) or distill=False"
            )
        self.distill = distill
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self._teacher: nn.Module | None = None
        self._student_module: pl.LightningModule | None = None
        self.save = save
        self.overwrite = overwrite
        self.output_dir = _check_output_dir(output_dir, save)
        self.dataloader = _check_dataloader(dataloader)
        #: encoder parameters before the first step (set at the first step; kept in state_dict).
        self.original_params: int | None = None
        #: one dict per pruning step: step, epoch, global_step, params, ratio, kept widths.
        self.history: list[dict[str, Any]] = []
        #: where the compressed checkpoint was written (``None`` until then).
        self.saved_path: Path | None = None
        self._target: Path | None = None
        self._tables: list[Any] = []

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen unpruned model during a distilled recovery (``distill=True``), else ``None``."""
        return self._teacher

    @property
    def ratio(self) -> float:
        """Fraction of the original encoder parameters kept after the last step."""
        return float(self.config.ratio)  # type: ignore[arg-type]

    def _scored_with(self) -> dict[str, Any] | None:
        """The built-in method and H0 summary that ``method``/``stat`` resolved to (aliases and
        ``stat=None`` resolved), so the history stays exact if a default changes; ``None`` for a callable."""
        if not isinstance(self.config.method, str):
            return None
        name = resolve_method(self.config.method)
        return {"method": name, "stat": resolve_stat(name, self.config.stat)}

    @property
    def method_name(self) -> str:
        """``method`` as a string (a callable's qualified name), for state keys and the history file."""
        method = self.config.method
        return method if isinstance(method, str) else getattr(method, "__qualname__", repr(method))

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method_name, ratio=self.ratio, units=self.config.units)

    # ------------------------------------------------------------------ setup checks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse, before anything is trained or changed, what would fail later (see the class doc)."""
        if stage != "fit":
            return
        _refuse_distributed(trainer)
        _check_supported(pl_module)
        if self.distill and not callable(getattr(pl_module, "set_training_loss", None)):
            raise TypeError(
                f"TopologicalPruning(distill=True) swaps the training loss through pl_module.set_training_loss(fn) "
                f"(as SequenceClassifier has); {type(pl_module).__name__} has none. Add it or pass distill=False. "
                "Nothing was changed"
            )
        if self.save:
            self._target = self._resolve_target(trainer)
        if trainer.ckpt_path and getattr(pl_module, "restores_shapes_on_load", False) is not True:
            rank_zero_warn(
                "TopologicalPruning: resuming from a checkpoint saved after pruning needs the LightningModule "
                "to rebuild the pruned shapes in on_load_checkpoint and say so with restores_shapes_on_load = True "
                "(SequenceClassifier does); otherwise loading fails with a size mismatch"
            )

    def _resolve_target(self, trainer: pl.Trainer) -> Path:
        """The explicit ``output_dir`` (refused if it exists without overwrite) or a free versioned folder."""
        if self.output_dir is not None:
            return _check_output_path(self.output_dir, self.overwrite)
        base = _run_folder(trainer)
        target, n = base / DEFAULT_FOLDER, 0
        while target.exists():
            n += 1
            target = base / f"{DEFAULT_FOLDER}-v{n}"
        return _check_output_path(target, False)

    # ------------------------------------------------------------------ hooks
    def _due(self, epoch: int) -> bool:
        if self.prune_epoch is None or len(self.history) >= self.steps:
            return False
        return epoch >= self.prune_epoch + len(self.history)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.distill and self.history and self._teacher is None:
            raise ValueError(
                f"TopologicalPruning(distill=True) cannot continue a recovery that started before this fit (resumed "
                f"from a checkpoint saved after pruning step {len(self.history)}, or a second fit): the teacher is "
                "the unpruned model, which the pruned weights cannot rebuild. Resume with distill=False (plain "
                "recovery) or start again from the unpruned checkpoint. Nothing was trained"
            )

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._due(trainer.current_epoch):
            self._prune_step(trainer, pl_module, at_fit_end=False)

    @override
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

    # ------------------------------------------------------------------ pruning
    def _calibration(self, trainer: pl.Trainer) -> list[Any]:
        """``calibration_batches`` batches of ``dataloader``, else of the training dataloader."""
        source = self.dataloader
        if source is None:
            source = trainer.train_dataloader
        if source is None and trainer.datamodule is not None:
            source = trainer.datamodule.train_dataloader()
        if source is None:
            raise ValueError(
                "TopologicalPruning needs calibration data: pass dataloader=... or train with a dataloader"
            )
        batches = _take(source, self.config.calibration_batches)
        if not batches:
            raise ValueError("TopologicalPruning: the calibration dataloader yielded no batch")
        return batches

    def _prune_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, at_fit_end: bool) -> None:
        from lightning_topo.pruning.api import prune_model
        from lightning_topo.pruning.export import to_exportable

        model = _hf_model(pl_module)
        if self.distill and self._teacher is None and not at_fit_end:
            self._start_distillation(pl_module, model)
        current = count_encoder_parameters(model)
        if self.original_params is None:
            self.original_params = current
        k = len(self.history) + 1
        target = self.original_params * self.ratio ** (k / self.steps)
        settings = self.config.replace(ratio=min(1.0, target / current), seed=self.config.seed + k)
        trainable = {n: p.requires_grad for n, p in model.named_parameters()}
        _, info = prune_model(model, self._calibration(trainer), return_info=True, **settings.prune_kwargs())
        new_model = to_exportable(model)  # same device and dtype as model
        for n, p in new_model.named_parameters():
            if n in trainable:
                p.requires_grad_(trainable[n])
        if new_model is not model:
            pl_module.model = new_model  # setup made sure the HF model lives there
        record = self._record(trainer, new_model, k, at_fit_end)
        self.history.append(record)
        self._tables.append(info.table)
        rank_zero_info(
            f"TopologicalPruning step {k}/{self.steps}: encoder {current} -> {record['params']} parameters "
            f"({record['ratio']:.3f} of the original); heads {record['widths']['heads']}, FFN {record['widths']['ffn']}"
        )
        if not at_fit_end:
            trainer.strategy.setup_optimizers(trainer)
        self._log_step(trainer, pl_module, record, at_fit_end)

    # ------------------------------------------------------------------ distillation
    def _start_distillation(self, pl_module: pl.LightningModule, model: nn.Module) -> None:
        """Freeze a copy of the unpruned ``model`` as the teacher and swap the module's training loss."""
        teacher = copy.deepcopy(model).eval()
        teacher.requires_grad_(False)
        self._teacher, self._student_module = teacher, pl_module
        pl_module.set_training_loss(self._distillation_loss)  # type: ignore[operator]
        rank_zero_info(
            f"TopologicalPruning: recovery distilled from the unpruned model (temperature={self.temperature}, "
            f"alpha={self.alpha})"
        )

    def _distillation_loss(self, logits: Tensor, labels: Tensor, batch: Mapping[str, Any]) -> Tensor:
        """The loss ``training_step`` optimises during recovery: student ``logits`` vs the teacher's."""
        from lightning_topo.encoding import model_inputs

        teacher, module = self._teacher, self._student_module
        assert teacher is not None and module is not None  # set together in _start_distillation
        inputs = {k: v.to(logits.device) for k, v in model_inputs(batch).items()}
        if "attention_mask" not in inputs:
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        with torch.no_grad():
            teacher_logits = teacher(**inputs, return_dict=True).logits
        kwargs = {"temperature": self.temperature, "alpha": self.alpha}
        loss = distillation_loss(logits, teacher_logits, labels, **kwargs)
        with torch.no_grad():
            soft = distillation_loss(logits, teacher_logits, None, temperature=self.temperature, alpha=1.0)
        n = labels.numel()
        module.log("prune/distill_loss", loss.detach(), on_step=True, on_epoch=True, batch_size=n)
        module.log("prune/distill_kl", soft, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def _stop_distillation(self) -> None:
        """Drop the teacher and give the module its own training loss back (fit end or an exception)."""
        if self._student_module is not None:
            self._student_module.set_training_loss(None)  # type: ignore[operator]
        self._teacher, self._student_module = None, None

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._stop_distillation()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._stop_distillation()

    def _record(self, trainer: pl.Trainer, model: nn.Module, k: int, at_fit_end: bool) -> dict[str, Any]:
        params = count_encoder_parameters(model)
        return {
            "step": k,
            "epoch": int(trainer.current_epoch),
            "global_step": int(trainer.global_step),
            "at_fit_end": at_fit_end,
            "params": params,
            "ratio": params / self.original_params,  # type: ignore[operator]
            "total_params": sum(p.numel() for p in model.parameters()),
            "widths": layer_widths(model),
        }

    def _log_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: Mapping[str, Any], at_fit_end: bool
    ) -> None:
        metrics = {
            "prune/params": float(record["params"]),
            "prune/ratio": float(record["ratio"]),
            "prune/total_params": float(record["total_params"]),
        }
        if at_fit_end:  # self.log is not allowed in on_train_end
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        else:
            for key, value in metrics.items():
                pl_module.log(key, value, on_step=False, on_epoch=True)
        self._log_wandb(trainer, record)

    @rank_zero_only
    def _log_wandb(self, trainer: pl.Trainer, record: Mapping[str, Any]) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        from lightning_topo.plots import plot_kept_units

        rows = [
            [record["step"], layer, kind, kept]
            for kind in ("heads", "ffn")
            for layer, kept in enumerate(record["widths"][kind])
        ]
        with tempfile.TemporaryDirectory(prefix="lt-prune-") as tmp:
            image = plot_kept_units(self.history, Path(tmp) / "kept_units.png")
            for logger in loggers:
                logger.log_table(key="prune/kept_units", columns=["step", "layer", "kind", "kept"], data=rows)
                logger.log_image(key="prune/kept_units_plot", images=[str(image)])

    # ------------------------------------------------------------------ saving
    @rank_zero_only
    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.save or self._target is None:
            return
        if not self.history:
            rank_zero_warn(
                "TopologicalPruning did not prune (no step ran), so no compressed checkpoint was written"
            )
            return
        from lightning_topo.pruning.export import save_compressed

        tokenizer = getattr(trainer.datamodule, "tokenizer", None) if trainer.datamodule is not None else None
        extra_files: dict[str, str | dict] = {"pruning_history.json": self.state_dict()}
        for k, table in enumerate(self._tables, start=1):
            extra_files[f"importance_step{k}.csv"] = _csv(table.rows())
        model = _hf_model(pl_module)
        was_training = model.training
        try:
            path = save_compressed(
                model.eval(),
                self._target,
                tokenizer=tokenizer,
                overwrite=self.overwrite,
                extra_files=extra_files,
            )
        finally:
            model.train(was_training)
        self.saved_path = path
        rank_zero_info(f"TopologicalPruning saved the compressed checkpoint to {path}")

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.method_name,
            "scored_with": self._scored_with(),
            "ratio": self.ratio,
            "steps": self.steps,
            "original_params": self.original_params,
            "history": self.history,
            "distill": {"temperature": self.temperature, "alpha": self.alpha} if self.distill else None,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.original_params = state_dict.get("original_params")
        self.history = list(state_dict.get("history", []))


# ---------------------------------------------------------------------- checks (module level)


def _hf_model(pl_module: pl.LightningModule) -> nn.Module:
    """The Hugging Face model: ``pl_module.model`` when it is a module, else ``pl_module`` itself."""
    model = getattr(pl_module, "model", None)
    return model if isinstance(model, nn.Module) else pl_module


def _check_output_dir(output_dir: object, save: bool) -> Path | None:
    if output_dir is None:
        return None
    if not save:
        raise ValueError(
            f"output_dir={str(output_dir)!r} is given but save=False writes nothing; drop one of the two"
        )
    if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir).strip():
        raise ValueError(
            f"output_dir must be a folder path (str or Path) or None (the run's versioned folder); got {output_dir!r}"
        )
    return Path(output_dir)


def _check_dataloader(dataloader: object) -> Iterable[Mapping[str, Any]] | None:
    if dataloader is None:
        return None
    if isinstance(dataloader, (str, bytes, Mapping)) or not isinstance(dataloader, Iterable):
        raise ValueError(
            "dataloader must be an iterable of tokenised batches (e.g. a DataLoader or a list of dicts with "
            f"input_ids/attention_mask) or None (the training dataloader); got {type(dataloader).__name__}"
        )
    return dataloader  # type: ignore[return-value]


def _refuse_distributed(trainer: pl.Trainer) -> None:
    """Refuse more than one process: DDP wraps the modules that pruning replaces."""
    world_size = int(getattr(trainer, "world_size", 1) or 1)
    if world_size > 1:
        strategy = type(getattr(trainer, "strategy", None)).__name__
        raise ValueError(
            f"TopologicalPruning runs in a single process; this Trainer has world_size={world_size} "
            f"({strategy}). Prune on one device with `lightning-topo prune` (or Trainer(devices=1)), "
            "then fine-tune the pruned checkpoint with DDP"
        )


def _check_supported(pl_module: pl.LightningModule) -> None:
    """Refuse, before it is changed, a model that cannot be pruned, swapped in and exported.

    Pruning replaces ``pl_module.model`` by a model whose config describes the new shapes, so the
    Hugging Face model must live there; :func:`lightning_topo.pruning.layout.check_supported` says
    which model classes can be exported (BERT and RoBERTa families).
    """
    from lightning_topo.pruning.layout import check_supported

    model = _hf_model(pl_module)
    if model is pl_module:
        raise TypeError(
            f"TopologicalPruning needs the Hugging Face model in pl_module.model (as SequenceClassifier has); "
            f"{type(pl_module).__name__} has no nn.Module attribute 'model'. Nothing was changed"
        )
    try:
        check_supported(model)
    except TypeError as err:
        raise TypeError(f"TopologicalPruning: {err} Nothing was changed") from None


def _check_output_path(path: Path, overwrite: bool) -> Path:
    """:func:`~lightning_topo.pruning.export.check_output_path` with errors naming ``output_dir``."""
    from lightning_topo.pruning.export import check_output_path

    try:
        return check_output_path(path, overwrite=overwrite)
    except FileExistsError as err:
        if overwrite:
            raise FileExistsError(f"TopologicalPruning output_dir: {err}") from None
        raise FileExistsError(
            f"TopologicalPruning output_dir {str(path)!r} already exists; choose another output_dir, leave "
            "output_dir unset (the run's versioned folder) or pass overwrite=True"
        ) from None
    except (NotADirectoryError, PermissionError) as err:
        raise type(err)(f"TopologicalPruning output_dir: {err}") from None


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """``rows`` (dicts with the same keys) as CSV text with a header."""
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _run_folder(trainer: pl.Trainer) -> Path:
    """The run's versioned folder: ``<save_dir>/<name>/<version>`` of the first logger, else ``default_root_dir``."""
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
    version = logger.version
    version = version if isinstance(version, str) else f"version_{version}"
    return Path(save_dir) / str(logger.name or "") / version


def _take(loader: Iterable[Any], n: int) -> list[Any]:
    """The first ``n`` batches of ``loader`` (no batch beyond them is drawn)."""
    return list(itertools.islice(loader, n))
