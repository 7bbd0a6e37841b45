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

import contextlib
import copy
import csv
import dataclasses
import io
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, SingleDeviceStrategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from lightning_topo.callbacks.run_dir import record_settings, run_dir
from lightning_topo.plots.wandb import log_model_artifact
from lightning_topo.pruning.config import DEFAULTS, PruningConfig, resolve_stat
from lightning_topo.pruning.distill import DISTILL_DEFAULTS, check_distill_settings, distillation_loss
from lightning_topo.pruning.importance import resolve_method
from lightning_topo.pruning.structured import count_encoder_parameters, layer_widths
from lightning_topo.scores.checks import check_bool, check_int, check_text

__all__ = [
    "TopologicalPruning",
    "CompressedSaveError",
    "NotEnoughSpaceError",
    "SAVE_MARGIN",
    "check_writable",
    "model_sizes",
    "save_or_rescue",
    "weight_bytes",
]

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

    Where the compressed checkpoint goes (at the end of ``fit``, on rank zero): by default into
    ``pruned/`` of the run folder that every monitor of the run shares
    (:func:`lightning_topo.callbacks.run_dir.run_dir`: the first CSV/TensorBoard logger's
    ``log_dir`` whatever the logger order, e.g. ``runs/quickstart/version_3/pruned`` next to
    ``ModelCheckpoint``'s ``checkpoints/``; ``<save_dir>/<project>/<run id>`` with W&B alone;
    ``<default_root_dir>/lightning_topo_runs/version_N`` without a logger). Each run has its own
    folder, so the same command can run twice in a row; an existing ``pruned`` there is never
    replaced (the next free name ``pruned-v1``, ... is taken). An explicit ``output_dir`` is used
    as given and is never overwritten unless ``overwrite=True`` (checked at ``setup``, before any
    training). The settings are recorded with the run (``lightning_topo_settings.json`` and the W&B
    config) at ``on_fit_start`` when the run has a folder (a logger, or the default ``output_dir``);
    ``save=False`` writes no checkpoint, and without a logger nothing at all.
    The folder holds the Hugging Face model (with the tokenizer of ``trainer.datamodule.tokenizer``
    when there is one), ``pruning_history.json`` (this callback's :meth:`state_dict`) and
    ``importance_step{k}.csv``; :attr:`saved_path` tells where it went.

    Logged (``pl_module.log`` after each pruning step): ``prune/params`` (encoder parameters),
    ``prune/ratio`` (their fraction of the original encoder), ``prune/total_params``. With a
    ``WandbLogger``: a table ``prune/kept_units`` (step, layer, kind, kept) and the bar plot
    ``prune/kept_units_plot`` (:func:`lightning_topo.plots.plot_kept_units`).

    Which model: the Hugging Face model anywhere in ``pl_module`` (``self.model`` as in
    :class:`~lightning_topo.models.SequenceClassifier`, ``self.net``, an ``AutoModel`` encoder next to
    the user's own head, inside an ``nn.ModuleDict`` ...), found by
    :func:`lightning_topo.representations.modules.find_hf_model`; ``model_attr="path.to.model"``
    picks one when the module holds several. After each step that attribute (and every alias of
    it) points at the pruned model, so the user's own ``training_step`` and ``configure_optimizers``
    run the recovery unchanged.

    Checked at ``setup``, before anything is trained, changed or written: the module holds one Hugging
    Face model (or ``model_attr`` names it) whose pruned shapes can be exported
    (:func:`lightning_topo.pruning.layout.check_supported`), the output folder can be created, a file
    can really be created and removed there, and the disk has room for the dense model's weights (an
    upper bound of the compressed folder). The tokenizer saved with the checkpoint is found then too
    (``tokenizer=``, ``trainer.datamodule.tokenizer``, ``pl_module.tokenizer``, or the model's own
    ``name_or_path`` folder, loaded with ``trust_remote_code=False``); without one the callback
    warns that the folder will hold no tokenizer.

    Distributed training: single device and DDP (``strategy="ddp"``; one process per device, any
    number of nodes) are supported. Under DDP every rank draws ``calibration_batches`` batches of its
    own shard of the training data, the batches of all ranks are brought to rank 0
    (``trainer.strategy.broadcast``), rank 0 scores the units and plans the keep-masks once, the
    masks are broadcast, and every rank removes the same units from its (identical) replica; then
    the LightningModule is wrapped in a new ``DistributedDataParallel`` (``strategy.configure_ddp()``)
    and the optimizers are rebuilt, so the recovery epochs train the pruned model on every rank.
    Refused at ``setup``: ``ddp_spawn``/``ddp_fork`` (their launcher loads rank 0's pruned weights
    back into the main process's unpruned module, which cannot hold them), FSDP, DeepSpeed and any
    other strategy (they shard or wrap the modules that pruning replaces); the message names
    ``strategy="ddp"`` and ``lightning-topo prune``.

    Summary (``summary``, also in ``pruning_history.json`` under ``"summary"``): validation accuracy
    before pruning, right after it (before recovery) and at the end of ``fit`` (after recovery),
    measured by the callback on the validation dataloader (``evaluate=True``, the default; one pass
    each, summed over ranks; Hugging Face sequence classifiers only), parameter counts and weight
    bytes of the dense and the compressed model (``docs/pruning.md`` lists the keys).

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
        model_attr: dotted path of the Hugging Face model inside the LightningModule (``"net"``,
            ``"towers.text"``); ``None`` (default) = find the one Hugging Face model it holds.
        tokenizer: saved into the compressed folder: a tokenizer object (with ``save_pretrained``) or
            the path of a folder holding one; ``None`` (default) = found at ``setup`` (see above).
        evaluate: measure validation accuracy before pruning, after pruning and after recovery for
            the summary (default ``True``; needs a validation dataloader with ``labels`` and a
            ``*ForSequenceClassification`` model, else the figures are ``None``).

    Raises:
        TypeError: at construction, on an argument of the wrong type (naming it and what is accepted).
        ValueError: at construction, on an argument out of range or not one of the choices.

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
        model_attr: str | None = None,
        tokenizer: Any = None,
        evaluate: bool = True,
    ) -> None:
        super().__init__()
        if ratio is None:
            raise TypeError(
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
        self.prune_epoch = check_int(prune_epoch, "prune_epoch", minimum=0, allow_none=True, hint=" (None = at fit end)")
        self.steps = int(check_int(steps, "steps", minimum=1))  # type: ignore[arg-type]
        if self.prune_epoch is None and self.steps != 1:
            raise ValueError(
                f"steps must be 1 with prune_epoch=None (pruning at fit end is one step); got {steps}"
            )
        for name, flag in (
            ("save", save),
            ("overwrite", overwrite),
            ("distill", distill),
            ("evaluate", evaluate),
        ):
            check_bool(flag, name)
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
        self.model_attr = check_text(
            model_attr, "model_attr",
            "the dotted path of the Hugging Face model inside the LightningModule (e.g. 'net') or None (find it)",
            allow_none=True,
        )  # fmt: skip
        self.tokenizer = _check_tokenizer(tokenizer)
        self.evaluate = evaluate
        self._model_path: str | None = None
        self._tokenizer: Any = None
        #: what the pruning did, for reports: see ``docs/pruning.md`` ("Summary") for the keys.
        self.summary: dict[str, Any] = {}

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
        _check_strategy(trainer)
        model = self._find_model(pl_module)
        _check_supported(model)
        if self.distill and not callable(getattr(pl_module, "set_training_loss", None)):
            raise TypeError(
                f"TopologicalPruning(distill=True) swaps the training loss through pl_module.set_training_loss(fn) "
                f"(as SequenceClassifier has); {type(pl_module).__name__} has none. Add it or pass distill=False. "
                "Nothing was changed"
            )
        if self.distill and not _is_classifier(model):
            raise TypeError(
                f"TopologicalPruning(distill=True) distils the logits of a Hugging Face sequence classifier; "
                f"pl_module.{self._model_path} is a {type(model).__name__} (no logits). Pass distill=False. "
                "Nothing was changed"
            )
        if self.save:
            needed = weight_bytes(model) + SAVE_MARGIN
            if self.output_dir is None:
                run_dir(trainer)  # a collective on its first call: every rank, before rank zero alone
            self._target = _on_rank_zero(trainer, lambda: self._resolve_target(trainer, needed))
            self._tokenizer = self._resolve_tokenizer(trainer, pl_module, model)
            if not _is_classifier(model):
                rank_zero_warn(
                    f"TopologicalPruning: pl_module.{self._model_path} is a {type(model).__name__}, not a sequence "
                    f"classifier, so the compressed folder will hold the pruned encoder only; the rest of "
                    f"{type(pl_module).__name__} (your own head) is in its Lightning checkpoint, not in that folder"
                )
        if trainer.ckpt_path and getattr(pl_module, "restores_shapes_on_load", False) is not True:
            rank_zero_warn(
                "TopologicalPruning: resuming from a checkpoint saved after pruning needs the LightningModule "
                "to rebuild the pruned shapes in on_load_checkpoint and say so with restores_shapes_on_load = True "
                "(SequenceClassifier does); otherwise loading fails with a size mismatch"
            )

    def _find_model(self, pl_module: pl.LightningModule) -> nn.Module:
        """The Hugging Face model inside ``pl_module`` (remembered by its attribute path)."""
        from lightning_topo.representations.modules import find_hf_model

        try:
            self._model_path, model = find_hf_model(pl_module, self.model_attr)
        except (TypeError, ValueError) as err:
            raise type(err)(
                f"TopologicalPruning needs the Hugging Face model of the LightningModule (pl_module.model as "
                f"SequenceClassifier has, or any attribute; model_attr= names it): {err}. Nothing was changed"
            ) from None
        return model

    def _hf_model(self, pl_module: pl.LightningModule) -> nn.Module:
        if self._model_path is None:
            return self._find_model(pl_module)
        return pl_module.get_submodule(self._model_path)

    def _resolve_target(self, trainer: pl.Trainer, needed: int) -> Path:
        """The explicit ``output_dir`` (refused if it exists without overwrite) or a free versioned folder;
        a file is really created and removed there, and the disk must have ``needed`` bytes free."""
        if self.output_dir is not None:
            target = _check_output_path(self.output_dir, self.overwrite)
        else:
            base = run_dir(trainer)
            target, n = base / DEFAULT_FOLDER, 0
            while target.exists():
                n += 1
                target = base / f"{DEFAULT_FOLDER}-v{n}"
            target = _check_output_path(target, False)
        check_writable(target, needed, what="TopologicalPruning output_dir")
        return target

    def _resolve_tokenizer(self, trainer: pl.Trainer, pl_module: pl.LightningModule, model: nn.Module) -> Any:
        """The tokenizer to save with the checkpoint (see the class doc), or ``None`` after a warning."""
        vocab = _vocab_rows(model)
        if self.tokenizer is not None:
            tok = self.tokenizer
            if isinstance(tok, (str, os.PathLike)):
                tok = _load_tokenizer(Path(tok), "tokenizer")
            _check_tokenizer_fits(tok, vocab, "tokenizer")
            return tok
        datamodule = getattr(trainer, "datamodule", None)
        for where, tok in (
            ("trainer.datamodule.tokenizer", getattr(datamodule, "tokenizer", None)),
            ("pl_module.tokenizer", getattr(pl_module, "tokenizer", None)),
        ):
            if callable(getattr(tok, "save_pretrained", None)):
                rank_zero_info(f"TopologicalPruning: the compressed checkpoint gets the tokenizer of {where}")
                return tok
        name = str(getattr(model, "name_or_path", "") or "")
        problem = "the model has no name_or_path"
        if name:
            try:
                tok = _load_tokenizer(Path(name), "the model's name_or_path")
                _check_tokenizer_fits(tok, vocab, f"the tokenizer of {name}")
                rank_zero_info(f"TopologicalPruning: the compressed checkpoint gets the tokenizer of {name}")
                return tok
            except (OSError, ValueError, TypeError) as err:
                problem = str(err)
        rank_zero_warn(
            f"TopologicalPruning: NO TOKENIZER will be saved with the compressed checkpoint ({problem}); pass "
            "TopologicalPruning(tokenizer=your_tokenizer) or a tokenizer folder, or train with a datamodule that has "
            "a .tokenizer, so that the folder can be used on its own"
        )
        return None

    # ------------------------------------------------------------------ hooks
    def _due(self, epoch: int) -> bool:
        if self.prune_epoch is None or len(self.history) >= self.steps:
            return False
        return epoch >= self.prune_epoch + len(self.history)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # only into a folder the run has anyway: a logger's, or the one the checkpoint goes to
        if trainer.loggers or (self.save and self.output_dir is None):
            record_settings(trainer, f"{type(self).__name__}/{self.method_name}", self._settings())

    def _settings(self) -> dict[str, Any]:
        """Every setting of this callback (recorded with the run; JSON-compatible)."""
        config = dataclasses.asdict(self.config)
        config["method"] = self.method_name
        return {
            **config,
            "prune_epoch": self.prune_epoch,
            "steps": self.steps,
            "save": self.save,
            "output_dir": None if self.output_dir is None else str(self.output_dir),
            "overwrite": self.overwrite,
            "distill": self.distill,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "model_attr": self.model_attr,
            "evaluate": self.evaluate,
        }

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
        self._finish_summary(trainer, self._hf_model(pl_module))
        self._save(trainer, pl_module)

    # ------------------------------------------------------------------ pruning
    def _calibration(self, trainer: pl.Trainer) -> list[Any]:
        """``calibration_batches`` batches of ``dataloader``, else of the training dataloader.

        Under DDP the training dataloader is this rank's shard: every rank draws its batches and
        rank 0 receives all of them, in rank order (other ranks get ``[]``; only rank 0 scores).
        ``dataloader=`` is the same on every rank, so rank 0 draws from it alone.
        """
        source = self.dataloader
        if source is None:
            source = trainer.train_dataloader
        if source is None and trainer.datamodule is not None:
            source = trainer.datamodule.train_dataloader()
        if source is None:
            raise ValueError(
                "TopologicalPruning needs calibration data: pass dataloader=... or train with a dataloader"
            )
        if _world_size(trainer) == 1:
            batches = _take(source, self.config.calibration_batches)
        elif self.dataloader is not None:
            batches = _take(source, self.config.calibration_batches) if trainer.is_global_zero else []
        else:
            local = [_to_cpu(b) for b in _take(source, self.config.calibration_batches)]
            batches = []
            for rank in range(_world_size(trainer)):
                received = trainer.strategy.broadcast(
                    local if trainer.global_rank == rank else None, src=rank
                )
                if trainer.is_global_zero:
                    batches += received
        return batches

    def _plan(self, model: nn.Module, batches: list[Any], settings: PruningConfig) -> tuple[Any, Any]:
        """Scores and keep-masks (rank 0 only under DDP): what :func:`prune_model` does before the surgery."""
        from lightning_topo.pruning.importance import compute_importance
        from lightning_topo.pruning.structured import KeepMasks, plan_keep_masks

        if not batches:  # raised on rank 0 inside run_on_rank_zero_and_broadcast: every rank sees it
            raise ValueError("TopologicalPruning: the calibration dataloader yielded no batch")
        table = compute_importance(model, batches, **settings.importance_kwargs())
        masks = plan_keep_masks(model, table, **settings.plan_kwargs())
        cpu = KeepMasks(
            ffn=None if masks.ffn is None else [m.cpu() for m in masks.ffn],
            heads=None if masks.heads is None else [m.cpu() for m in masks.heads],
        )
        return table, cpu

    def _prune_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, at_fit_end: bool) -> None:
        from lightning_topo.pruning.export import to_exportable
        from lightning_topo.pruning.structured import apply_keep_masks
        from lightning_topo.representations.hidden import run_on_rank_zero_and_broadcast
        from lightning_topo.representations.modules import replace_submodule

        model = self._hf_model(pl_module)
        if self.distill and self._teacher is None and not at_fit_end:
            self._start_distillation(pl_module, model)
        current = count_encoder_parameters(model)
        if self.original_params is None:
            self.original_params = current
            self.summary = self._dense_summary(model, trainer)
        k = len(self.history) + 1
        target = self.original_params * self.ratio ** (k / self.steps)
        settings = self.config.replace(ratio=min(1.0, target / current), seed=self.config.seed + k)
        trainable = {n: p.requires_grad for n, p in model.named_parameters()}
        acc_before = self._accuracy(trainer, model)
        batches = self._calibration(trainer)
        tables: list[Any] = []  # the scores stay on rank 0; only the keep-masks travel

        def plan() -> Any:
            table, masks = self._plan(model, batches, settings)
            tables.append(table)
            return masks

        masks = run_on_rank_zero_and_broadcast(
            plan, is_global_zero=_is_global_zero(trainer), broadcast=lambda obj: _broadcast(trainer, obj)
        )
        apply_keep_masks(model, masks)
        new_model = to_exportable(model)  # same device and dtype as model
        for n, p in new_model.named_parameters():
            if n in trainable:
                p.requires_grad_(trainable[n])
        if new_model is not model:
            replace_submodule(pl_module, self._model_path, new_model)  # type: ignore[arg-type]
        acc_after = self._accuracy(trainer, new_model)
        record = self._record(trainer, new_model, k, at_fit_end)
        record["val_acc_before"], record["val_acc_after"] = acc_before, acc_after
        self.history.append(record)
        self._tables += tables
        rank_zero_info(
            f"TopologicalPruning step {k}/{self.steps}: encoder {current} -> {record['params']} parameters "
            f"({record['ratio']:.3f} of the original); heads {record['widths']['heads']}, FFN {record['widths']['ffn']}"
        )
        if not at_fit_end:
            _rewrap_distributed(trainer)
            trainer.strategy.setup_optimizers(trainer)
        self._log_step(trainer, pl_module, record, at_fit_end)

    # ------------------------------------------------------------------ summary
    def _accuracy(self, trainer: pl.Trainer, model: nn.Module) -> float | None:
        """Validation accuracy of the Hugging Face classifier ``model`` (``None`` if not measurable).

        One pass over this rank's validation dataloader; correct and total are summed over ranks.
        """
        if not self.evaluate or not _is_classifier(model):
            return None
        loader, sharded = _val_dataloader(trainer)
        if loader is None:
            return None
        from lightning_topo.encoding import model_inputs

        device = next(model.parameters()).device
        counts = torch.zeros(2, dtype=torch.float64, device=device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for batch in loader:
                    if not isinstance(batch, Mapping) or batch.get("labels") is None:
                        return None
                    inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
                    logits = model(**inputs, return_dict=True).logits
                    labels = batch["labels"].to(device)
                    counts[0] += (logits.argmax(-1) == labels).sum()
                    counts[1] += labels.numel()
        finally:
            model.train(was_training)
        if sharded and _world_size(trainer) > 1:
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
        if float(counts[1]) == 0:
            return None
        self.summary.setdefault("val_examples", int(counts[1]))
        return float(counts[0] / counts[1])

    def _dense_summary(self, model: nn.Module, trainer: pl.Trainer) -> dict[str, Any]:
        return {"dense": model_sizes(model), "world_size": _world_size(trainer)}

    def _finish_summary(self, trainer: pl.Trainer, model: nn.Module) -> None:
        """Fill :attr:`summary` at the end of ``fit`` (keys: ``docs/pruning.md``, "Summary")."""
        if not self.history:
            return
        first, last = self.history[0], self.history[-1]
        recovered = not last.get("at_fit_end", False)
        after_recovery = self._accuracy(trainer, model) if recovered else None
        dense = self.summary.get("dense", {})
        compressed = model_sizes(model)
        self.summary.update(
            method=self.method_name,
            scored_with=self._scored_with(),
            val_acc={
                "before_pruning": first.get("val_acc_before"),
                "after_pruning": last.get("val_acc_after"),
                "after_recovery": after_recovery,
            },
            recovery_epochs=max(0, int(trainer.current_epoch) - int(last["epoch"])) if recovered else 0,
            compressed=compressed,
            encoder_ratio=compressed["encoder_params"] / dense["encoder_params"] if dense else None,
            weight_bytes_ratio=compressed["weight_bytes"] / dense["weight_bytes"] if dense else None,
            cpu_speedup=None,
        )
        self.summary.setdefault("val_examples", None)

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

        extra_files: dict[str, str | dict] = {"pruning_history.json": self.state_dict()}
        for k, table in enumerate(self._tables, start=1):
            extra_files[f"importance_step{k}.csv"] = _csv(table.rows())
        model = self._hf_model(pl_module)
        was_training = model.training
        try:
            path = save_or_rescue(
                model.eval(),
                self._target,
                overwrite=self.overwrite,
                tokenizer=self._tokenizer,
                extra_files=extra_files,
                who="TopologicalPruning",
            )
        finally:
            model.train(was_training)
        self.saved_path = path
        rank_zero_info(f"TopologicalPruning saved the compressed checkpoint to {path}")
        if trainer.is_global_zero:  # Lightning's log_model convention: a W&B artifact of type "model"
            log_model_artifact(trainer.loggers, path, metadata=self.summary)

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
            "model_attr": self._model_path,
            "summary": self.summary,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.original_params = state_dict.get("original_params")
        self.history = list(state_dict.get("history", []))
        self.summary = dict(state_dict.get("summary") or {})


# ---------------------------------------------------------------------- checks (module level)


def _check_output_dir(output_dir: object, save: bool) -> Path | None:
    if output_dir is None:
        return None
    if not save:
        raise ValueError(
            f"output_dir={str(output_dir)!r} is given but save=False writes nothing; drop one of the two"
        )
    what = "a folder path (str or Path) or None (the run's versioned folder)"
    return Path(check_text(output_dir, "output_dir", what, path=True))


def _check_dataloader(dataloader: object) -> Iterable[Mapping[str, Any]] | None:
    if dataloader is None:
        return None
    if isinstance(dataloader, (str, bytes, Mapping)) or not isinstance(dataloader, Iterable):
        raise TypeError(
            "dataloader must be an iterable of tokenised batches (e.g. a DataLoader or a list of dicts with "
            f"input_ids/attention_mask) or None (the training dataloader); got {type(dataloader).__name__}"
        )
    return dataloader  # type: ignore[return-value]


def _world_size(trainer: pl.Trainer) -> int:
    return int(getattr(trainer, "world_size", 1) or 1)


def _is_global_zero(trainer: pl.Trainer) -> bool:
    return bool(getattr(trainer, "is_global_zero", True))


def _broadcast(trainer: pl.Trainer, obj: Any) -> Any:
    """``obj`` of rank 0 on every rank (``trainer.strategy.broadcast``); itself in one process."""
    return trainer.strategy.broadcast(obj, src=0) if _world_size(trainer) > 1 else obj


def _on_rank_zero(trainer: pl.Trainer, fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0 only (e.g. file-system checks of the folder rank 0 writes); its result or its
    exception on every rank, so no rank waits for one that failed."""
    from lightning_topo.representations.hidden import run_on_rank_zero_and_broadcast

    return run_on_rank_zero_and_broadcast(
        fn, is_global_zero=_is_global_zero(trainer), broadcast=lambda obj: _broadcast(trainer, obj)
    )


def _to_cpu(batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return batch.detach().cpu()
    if isinstance(batch, Mapping):
        return {k: _to_cpu(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_cpu(v) for v in batch)
    return batch


_SUPPORTED_STRATEGIES = (
    'a single device or strategy="ddp" (one process per device, launched by Lightning or torchrun); or prune '
    "on one device with `lightning-topo prune`, then fine-tune the compressed folder with any strategy"
)


def _check_strategy(trainer: pl.Trainer) -> None:
    """Refuse the strategies under which the modules pruning replaces are sharded, wrapped or sent back.

    Supported: one device, and ``DDPStrategy`` launched as subprocesses (``strategy="ddp"``,
    torchrun, SLURM). Refused: FSDP, DeepSpeed (a ``DDPStrategy`` subclass), ``ddp_spawn``/``ddp_fork``
    and any other multi-process strategy.
    """

    strategy = getattr(trainer, "strategy", None)
    name = type(strategy).__name__
    world_size = _world_size(trainer)
    if isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy)):
        why = "it shards the parameters that pruning shrinks and replaces"
    elif isinstance(strategy, DDPStrategy) and isinstance(strategy.launcher, _MultiProcessingLauncher):
        why = (
            "its launcher loads rank 0's weights back into the main process's module, which still has the "
            "unpruned shapes"
        )
    elif world_size == 1 or isinstance(strategy, DDPStrategy):
        return
    elif isinstance(strategy, SingleDeviceStrategy):
        return
    else:
        why = "pruning replaces modules that this strategy wraps"
    raise ValueError(
        f"TopologicalPruning does not run under {name} (world_size={world_size}): {why}. Supported: "
        f"{_SUPPORTED_STRATEGIES}. Nothing was changed"
    )


def _rewrap_distributed(trainer: pl.Trainer) -> None:
    """After the surgery under DDP: wrap the LightningModule in a new ``DistributedDataParallel``.

    The old wrapper's reducer holds the replaced parameters; ``strategy.configure_ddp()`` builds a new
    one over the current modules (its constructor also broadcasts rank 0's weights, which every rank
    already has).
    """
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel):
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()


def _is_classifier(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForSequenceClassification")


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights and buffers (its ``state_dict``; shared tensors once; no optimizer state)."""
    seen: dict[tuple[int, int], int] = {}
    for t in model.state_dict().values():
        seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
    return sum(seen.values())


#: Room needed besides the weights: config, tokenizer files, history and importance tables.
SAVE_MARGIN = 64 * 2**20


def check_writable(path: str | Path, needed: int = 0, *, what: str = "output") -> None:
    """Prove that a folder can be written at ``path`` before any work, and that ``needed`` bytes fit.

    ``os.access`` is not enough (as root it says yes under ``/proc`` or on a read-only mount), so a
    file is created in the nearest existing folder above ``path`` (where the staged sibling folder
    of :func:`~lightning_topo.pruning.export.save_compressed` will go) and removed again. Nothing is
    left behind and no folder is created.

    Args:
        path: the folder to be written (need not exist).
        needed: bytes the write will take (0: only the probe).
        what: how the messages name ``path`` (e.g. ``"--output"``).

    Raises:
        PermissionError: the file cannot be created (names the folder and the OS error).
        NotEnoughSpaceError: (an ``OSError``) fewer than ``needed`` bytes are free there (names both
            figures).
    """
    ancestor = Path(path).parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    probe = ancestor / f".lightning-topo-write-probe-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
    except OSError as err:
        raise PermissionError(
            f"{what} {path}: cannot create a file in {ancestor} ({err.strerror or type(err).__name__}); choose a "
            "writable folder"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    if needed > 0:
        free = shutil.disk_usage(ancestor).free
        if free < needed:
            raise NotEnoughSpaceError(
                f"{what} {path}: {ancestor} has {free / 2**20:.1f} MiB free, the compressed checkpoint needs up to "
                f"{needed / 2**20:.1f} MiB; free some space or choose another folder. Nothing was trained"
            )


class NotEnoughSpaceError(OSError, ValueError):
    """Refused before any training: the disk cannot hold the compressed checkpoint (:func:`check_writable`).

    An ``OSError`` (what it is) and a ``ValueError`` (so every command line reports it as a refused
    input: one line, exit status 2, like the other setup refusals)."""


class CompressedSaveError(OSError):
    """The compressed checkpoint could not be written at the end of ``fit`` (after the training).

    Attributes:
        target: where it should have gone.
        rescued: where the complete compressed folder was kept instead, or ``None``.
    """

    def __init__(self, message: str, *, target: Path | None, rescued: Path | None) -> None:
        super().__init__(message)
        self.target, self.rescued = target, rescued


def save_or_rescue(model: nn.Module, target: Path, *, overwrite: bool, who: str, **kwargs: Any) -> Path:
    """:func:`~lightning_topo.pruning.export.save_compressed` to ``target``; if that write fails (a full
    disk, a vanished mount), the same complete folder goes to the first place that takes it (the temp
    dir, the working folder, home) and :class:`CompressedSaveError` names it in one line.

    Args:
        model: the (trained, pruned) Hugging Face model.
        target: the folder that was checked at setup.
        overwrite: passed on.
        who: how the message starts (``"TopologicalPruning"``, ``"--output"``).
        kwargs: ``tokenizer``, ``extra_files`` (passed on).
    """
    from lightning_topo.pruning.export import save_compressed

    try:
        return save_compressed(model, target, overwrite=overwrite, **kwargs)
    except Exception as err:  # noqa: BLE001 - any failed write: keep the trained model, then say where
        first = err
    name = f"lightning-topo-rescued-{target.name}-{os.getpid()}-{os.urandom(3).hex()}"
    rescued = None
    for base in (Path(tempfile.gettempdir()), Path.cwd(), Path.home()):
        try:
            rescued = save_compressed(model, base / name, **kwargs)
            break
        except Exception:  # noqa: BLE001, S112 - try the next place
            shutil.rmtree(base / name, ignore_errors=True)
    kept = (
        f"the pruned model was kept at {rescued} (a complete compressed folder: move it into place)"
        if rescued is not None
        else "no other folder (temp dir, working folder, home) could hold the pruned model either"
    )
    raise CompressedSaveError(
        f"{who} could not write the compressed checkpoint to {target} ({type(first).__name__}: "
        f"{' '.join(str(first).split())}); {kept}",
        target=target,
        rescued=rescued,
    ) from first


def model_sizes(model: nn.Module) -> dict[str, int]:
    """``{"params", "encoder_params", "weight_bytes"}`` of a Hugging Face model (for the summary)."""
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "encoder_params": count_encoder_parameters(model),
        "weight_bytes": weight_bytes(model),
    }


def _check_tokenizer(tokenizer: object) -> Any:
    if callable(getattr(tokenizer, "save_pretrained", None)):
        return tokenizer
    what = "a tokenizer (with save_pretrained), the path of a folder holding one, or None (found at setup)"
    check_text(tokenizer, "tokenizer", what, allow_none=True, path=True)
    return tokenizer


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model")


def _load_tokenizer(path: Path, what: str) -> Any:
    """The tokenizer in the local folder ``path`` (or a locally cached Hub id), through
    :func:`lightning_topo.loading.load_tokenizer` (``trust_remote_code=False``; a folder with code of
    its own is refused)."""
    from lightning_topo.loading import load_tokenizer

    if path.is_dir():
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise OSError(f"{what} {path} holds no tokenizer files")
    elif path.exists():
        raise OSError(f"{what} {path} is a file, not a tokenizer folder")
    try:
        return load_tokenizer(path, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - whatever transformers raises: one line
        raise OSError(
            f"{what} {path} could not be loaded as a tokenizer ({' '.join(str(err).split())})"
        ) from None


def _vocab_rows(model: nn.Module) -> int | None:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    return int(emb.weight.shape[0]) if isinstance(emb, nn.Embedding) else None


def _check_tokenizer_fits(tokenizer: Any, vocab: int | None, what: str) -> None:
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    if vocab is not None and size is not None and size > vocab:
        raise ValueError(
            f"{what} has {size} tokens but the model's embedding has {vocab} rows: it is not this model's "
            "tokenizer; pass the one the model was trained with"
        )


def _val_dataloader(trainer: pl.Trainer) -> tuple[Any, bool]:
    """``(loader, sharded)``: the fit's (first) validation dataloader once Lightning has set it up (the
    sanity check or a first validation did; under DDP it is this rank's shard), else the datamodule's
    ``val_dataloader()`` (the whole split on every rank), else ``(None, False)``."""
    loaders, sharded = getattr(trainer, "val_dataloaders", None), True
    if loaders is None:
        datamodule = getattr(trainer, "datamodule", None)
        make = getattr(datamodule, "val_dataloader", None)
        if make is None or not is_overridden("val_dataloader", datamodule, pl.LightningDataModule):
            return None, False
        loaders, sharded = make(), False
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    return loaders, sharded


def _check_supported(model: nn.Module) -> None:
    """Refuse, before it is changed, a model whose pruned form cannot be exported
    (:func:`lightning_topo.pruning.layout.check_supported`)."""
    from lightning_topo.pruning.layout import check_supported

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


def _take(loader: Iterable[Any], n: int) -> list[Any]:
    """The first ``n`` batches of ``loader`` (no batch beyond them is drawn)."""
    return list(itertools.islice(loader, n))
