"""LightningCLI for ``lightning-topo fit|validate|test|predict``."""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from lightning_topo.cli.errors import USER_ERRORS
from lightning_topo.models.classifier import SequenceClassifier
from lightning_topo.models.datamodule import TextClassificationDataModule

__all__ = [
    "InputError",
    "TopoLightningCLI",
    "check_config_files",
    "check_run_folders",
    "check_trainer_values",
    "check_writable_folder",
    "run_lightning_cli",
]

#: Trainer defaults of the CLI (a config file overrides them): CSV logs under ``runs/``.
TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": "runs", "name": "lightning-topo"},
    },
}


class InputError(Exception):
    """A config or command-line value refused while the model, data and trainer were being built,
    before anything ran. ``lightning-topo`` prints it as one line and exits with status 2; the
    original exception (``ValueError``, ``TypeError``, ``FileNotFoundError``, ...) is its
    ``__cause__``."""


#: Trainer options that must be an int >= the given minimum (Lightning's own sentinels included:
#: -1 = no limit for ``max_epochs`` / ``max_steps``, -1 = all for ``num_sanity_val_steps``).
_TRAINER_MINIMUMS: dict[str, int] = {
    "max_epochs": -1,
    "min_epochs": 0,
    "max_steps": -1,
    "min_steps": 0,
    "accumulate_grad_batches": 1,
    "log_every_n_steps": 1,
    "check_val_every_n_epoch": 1,
    "num_sanity_val_steps": -1,
}


def check_trainer_values(trainer: Any) -> None:
    """Refuse trainer values that Lightning accepts when it is built but that fail (or silently
    misbehave) once training runs: a NaN or infinite number in any option (``gradient_clip_val:
    .nan`` fails at the first step), a negative ``gradient_clip_val``, and ints below their minimum
    (``max_epochs: -5``). ``trainer`` is the parsed ``trainer`` section (a mapping or namespace).

    Raises:
        ValueError: naming ``trainer.<option>``, the value and what is accepted.
    """
    items = dict(vars(trainer) if hasattr(trainer, "__dict__") else trainer or {})
    for name, value in items.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"trainer.{name} must be a finite number; got {value}")
    clip = items.get("gradient_clip_val")
    if clip is not None and not isinstance(clip, bool) and isinstance(clip, int | float) and clip < 0:
        raise ValueError(f"trainer.gradient_clip_val must be >= 0 (or null: no clipping); got {clip}")
    for name, minimum in _TRAINER_MINIMUMS.items():
        value = items.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value < minimum:
            accepted = " (-1: no limit)" if minimum == -1 and name.startswith("max") else ""
            raise ValueError(f"trainer.{name} must be an int >= {minimum}{accepted}; got {value}")


def check_config_files(args: Sequence[str]) -> None:
    """Refuse a ``--config FILE`` (``-c``, ``--config=FILE``) that is missing, not UTF-8 or not YAML,
    naming the file (jsonargparse's own error does not). Other arguments are left to the parser.

    Raises:
        FileNotFoundError / IsADirectoryError / ValueError: naming the file (and the byte or line).
    """
    import yaml

    files = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    for name in files:
        path = Path(name).expanduser()
        if path.is_dir():
            raise IsADirectoryError(f"--config {name!r} is a directory; pass a YAML file")
        if not path.is_file():
            raise FileNotFoundError(f"--config {name!r} does not exist")
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(
                f"--config {name!r} is not a YAML text file: byte 0x{data[err.start]:02x} at offset {err.start} "
                "is not UTF-8. Pass a YAML config (e.g. configs/quickstart.yaml)"
            ) from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ValueError(f"--config {name!r} is not valid YAML{where}: {problem}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(
                f"--config {name!r} must hold a YAML mapping (model:, data:, trainer:, ...); got a "
                f"{type(loaded).__name__}"
            )


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_writable_folder(folder: str | os.PathLike[str], argument: str) -> None:
    """Check for real that ``folder`` can be created and written: in its nearest existing ancestor
    a uniquely named file is created and removed again (permission bits lie for root, ``/proc``,
    read-only mounts and full quota). Nothing is left behind; ``folder`` itself is not created.

    Raises:
        NotADirectoryError: a part of the path is a file.
        PermissionError: the folder cannot be written (read-only disk, no permission, ...), naming
            ``argument``, the folder and the reason.
    """
    target = Path(folder).expanduser().absolute()
    base = _nearest_existing(target)
    if not base.is_dir():
        raise NotADirectoryError(f"{argument} {str(target)!r} cannot be created: {str(base)!r} is a file")
    probe = base / f".lightning-topo-write-check-{secrets.token_hex(6)}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        raise PermissionError(
            f"{argument} {str(target)!r} is not writable: creating a file in {str(base)!r} failed "
            f"({err.strerror or err}); choose a folder on a writable disk"
        ) from None


def check_run_folders(trainer: Any) -> None:
    """:func:`check_writable_folder` for every folder the run will write: each logger's
    ``save_dir``, every checkpoint callback's ``dirpath`` and, without a logger,
    ``trainer.default_root_dir``."""
    for logger in getattr(trainer, "loggers", None) or []:
        save_dir = getattr(logger, "save_dir", None)
        if save_dir:
            check_writable_folder(save_dir, f"trainer.logger ({type(logger).__name__}) save_dir")
    for callback in getattr(trainer, "checkpoint_callbacks", None) or []:
        dirpath = getattr(callback, "dirpath", None)
        if dirpath:
            check_writable_folder(dirpath, f"{type(callback).__name__} dirpath")
    root = getattr(trainer, "default_root_dir", None)
    if root and not getattr(trainer, "loggers", None):  # with a logger, nothing is written there
        check_writable_folder(root, "trainer.default_root_dir")


class _RunStarted(Callback):
    """Records that setup is over and the loop began (``on_*_start``), so that an error raised
    before it can be reported as a refused input."""

    def __init__(self) -> None:
        self.started = False

    def _start(self, *_: Any) -> None:
        self.started = True

    on_fit_start = on_validation_start = on_test_start = on_predict_start = override(_start)


class TopoLightningCLI(LightningCLI):
    """LightningCLI over :class:`SequenceClassifier` and :class:`TextClassificationDataModule`.

    Links (so a config never repeats itself):

    - ``model.model_name_or_path`` → ``data.tokenizer_name_or_path`` (at parse time: the
      tokenizer is always the model's);
    - ``data.num_classes`` → ``model.num_labels`` and ``data.id2label`` → ``model.id2label``
      (after the datamodule is built; it reads the labels of the data).

    After ``fit`` it prints a one-line summary with the final ``val/acc``, ``val/f1`` and
    ``val/loss``, the wall time and the best checkpoint.

    A bad value found while the classes are built (a missing data file, a missing column,
    ``torch_threads: 0``, ...) or refused by a callback's ``setup`` before the run starts (an
    unsupported model, an existing output folder, ...) raises :class:`InputError` naming it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.run_started = _RunStarted()  # before super().__init__, which runs the subcommand
        super().__init__(*args, **kwargs)

    def _watch(self) -> None:
        check_run_folders(self.trainer)
        self.trainer.callbacks.append(self.run_started)

    def before_validate(self) -> None:
        self._watch()

    def before_test(self) -> None:
        self._watch()

    def before_predict(self) -> None:
        self._watch()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--torch_threads",
            type=int | None,
            default=None,
            help="torch.set_num_threads before anything runs (default: null = torch's own setting, all "
            "cores). On a CPU machine shared with other jobs 1 thread can be several times faster than "
            "oversubscribed cores.",
        )
        parser.link_arguments("model.model_name_or_path", "data.tokenizer_name_or_path", apply_on="parse")
        parser.link_arguments("data.num_classes", "model.num_labels", apply_on="instantiate")
        parser.link_arguments("data.id2label", "model.id2label", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        try:
            check_trainer_values(self._get(self.config, "trainer"))
        except ValueError as err:
            raise InputError(f"ValueError: {err}") from err
        threads = self._get(self.config, "torch_threads")
        if threads is not None:
            if threads < 1:
                raise InputError(
                    f"torch_threads must be >= 1 (or null for torch's own setting); got {threads}"
                )
            import torch

            torch.set_num_threads(int(threads))

    def instantiate_classes(self) -> None:
        """Build model, datamodule and trainer; a refused value becomes :class:`InputError`."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, OSError, MisconfigurationException) as err:
            refusal = _unwrap_jsonargparse(err)
            raise InputError(" ".join(f"{type(refusal).__name__}: {refusal}".split())) from err

    def before_fit(self) -> None:
        self._watch()
        self._fit_started = time.perf_counter()

    def after_fit(self) -> None:
        elapsed = time.perf_counter() - getattr(self, "_fit_started", time.perf_counter())
        _print_rank_zero(summary_line(self.trainer, elapsed))


def _unwrap_jsonargparse(err: BaseException) -> BaseException:
    """The class's own error when jsonargparse wrapped it in a report of every union subtype it
    tried (e.g. a callback's ``ratio`` refusal inside "Does not validate against any of the Union
    subtypes ..."); any other error as it is."""
    while isinstance(err.__cause__, ValueError | TypeError | OSError):
        tb = err.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is None or "jsonargparse" not in tb.tb_frame.f_code.co_filename:
            break
        err = err.__cause__
    return err


@rank_zero_only
def _print_rank_zero(line: str) -> None:
    print(line, flush=True)


def summary_line(trainer: Any, elapsed_s: float | None = None) -> str:
    """``fit done: val/acc=0.8123 val/f1=... val/loss=... | 3 epochs, 500 steps, 95 s | best ckpt: ... | pruned model: ...``."""
    metrics = trainer.callback_metrics
    parts = [f"{k}={float(metrics[k]):.4f}" for k in ("val/acc", "val/f1", "val/loss") if k in metrics]
    run = f"{trainer.current_epoch} epochs, {trainer.global_step} steps"
    if elapsed_s is not None:
        run += f", {elapsed_s:.0f} s"
    line = f"fit done: {' '.join(parts) or '(no validation metrics)'} | {run}"
    ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
    if ckpt:
        line += f" | best ckpt: {ckpt}"
    from lightning_topo.callbacks.pruning import TopologicalPruning

    for callback in trainer.callbacks:
        if isinstance(callback, TopologicalPruning) and callback.saved_path is not None:
            line += f" | pruned model: {_shown(callback.saved_path)}"
    return line


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when it lies below it (as Lightning prints its own
    ``runs/...`` folders), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run_lightning_cli(args: Sequence[str] | None = None, run: bool = True) -> TopoLightningCLI:
    """Run the CLI with ``args`` (e.g. ``["fit", "--config", "configs/quickstart.yaml"]``).

    Args:
        args: command-line arguments without the program name; ``None`` reads ``sys.argv``.
        run: ``False`` only instantiates (no subcommand in ``args`` then).

    Returns:
        The CLI object (``.model``, ``.datamodule``, ``.trainer``).
    """
    # Lightning-internal deprecation noise on current torch; not actionable by users.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    try:
        check_config_files(list(args) if args is not None else sys.argv[1:])
    except (ValueError, OSError) as err:
        raise InputError(f"{type(err).__name__}: {err}") from err
    cli = TopoLightningCLI.__new__(TopoLightningCLI)  # kept when __init__ (which runs the command) raises
    try:
        cli.__init__(
            SequenceClassifier,
            TextClassificationDataModule,
            args=list(args) if args is not None else None,
            run=run,
            seed_everything_default=42,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "lightning-topo"} if run else None,
        )
    except (*USER_ERRORS, MisconfigurationException) as err:  # a callback's setup, before the run started
        if getattr(cli, "run_started", None) is None or cli.run_started.started:
            raise  # raised while running: a failure, not a refused input
        raise InputError(" ".join(f"{type(err).__name__}: {err}".split())) from err
    return cli
