"""Compressed checkpoints: a standard Hugging Face folder that reloads with or without lightning-topo.

* Uniform widths (one FFN width for all layers, every head kept) -> the model's own stock config
  (e.g. ``BertConfig``) with the new ``intermediate_size``; plain ``transformers`` loads it.
* Per-layer widths or removed heads (BERT or RoBERTa family) -> ``PrunedBertConfig`` /
  ``PrunedRobertaConfig`` and their models (:mod:`lightning_topo.pruning.remote_code.pruned_bert`).
  Importing this module registers them with transformers' public ``AutoConfig.register`` /
  ``AutoModel.register`` / ``AutoModelForSequenceClassification.register``; the folder also carries
  ``pruned_bert.py`` and an ``auto_map``, so a process without lightning-topo loads it with
  ``from_pretrained(path, trust_remote_code=True)`` (only for folders one trusts: that runs the
  folder's ``pruned_bert.py``).

Every folder holds ``SHA256SUMS`` (the SHA-256 of every other file, ``sha256sum -c`` format), which
:func:`load_compressed` verifies. Writes go to a hidden sibling folder that replaces ``path`` in one
atomic exchange, so a valid checkpoint is at ``path`` at every instant (see :func:`save_compressed`).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from lightning_topo.pruning import layout
from lightning_topo.pruning.layout import layer_widths
from lightning_topo.pruning.remote_code.pruned_bert import (
    PrunedBertConfig,
    PrunedBertForSequenceClassification,
    PrunedBertModel,
    PrunedRobertaConfig,
    PrunedRobertaForSequenceClassification,
    PrunedRobertaModel,
)

__all__ = [
    "MANIFEST",
    "register_auto_classes",
    "to_exportable",
    "check_output_path",
    "save_compressed",
    "load_compressed",
    "verify_manifest",
]

#: Name of the checksum file written into every compressed checkpoint.
MANIFEST = "SHA256SUMS"
#: family -> (config class, bare model class, sequence classifier class)
_PRUNED_CLASSES: dict[str, tuple[type, type, type]] = {
    "bert": (PrunedBertConfig, PrunedBertModel, PrunedBertForSequenceClassification),
    "roberta": (PrunedRobertaConfig, PrunedRobertaModel, PrunedRobertaForSequenceClassification),
}


def register_auto_classes() -> None:
    """Register the pruned config/model classes with transformers' Auto classes (idempotent).

    Runs when this module is imported, through transformers' public ``register`` methods only.
    """
    for config_cls, bare_cls, classifier_cls in _PRUNED_CLASSES.values():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModel.register(config_cls, bare_cls, exist_ok=True)
        AutoModelForSequenceClassification.register(config_cls, classifier_cls, exist_ok=True)


register_auto_classes()


# ----------------------------------------------------------------------------- model -> exportable


def _is_uniform(model: nn.Module) -> bool:
    full_heads = all(
        layout.num_heads(layer) * layout.head_size(layer) == layout.hidden_size(layer)
        for layer in layout.encoder_layers(model)
    )
    return len(set(layer_widths(model)["ffn"])) == 1 and full_heads


def _pruned_config(model: nn.Module, config_cls: type) -> Any:
    widths = layer_widths(model)
    cfg = model.config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "transformers_version"):
        cfg.pop(key, None)
    cfg.pop("intermediate_sizes", None)
    cfg.pop("num_heads_per_layer", None)
    first = layout.encoder_layers(model)[0]
    cfg["num_attention_heads"] = layout.hidden_size(first) // layout.head_size(first)
    return config_cls(**cfg, intermediate_sizes=widths["ffn"], num_heads_per_layer=widths["heads"])


def to_exportable(model: nn.Module) -> nn.Module:
    """A model whose config describes its real shapes, ready for ``save_pretrained``.

    Uniform widths: ``model`` itself with ``config.intermediate_size`` set (per-layer keys dropped
    from a stock config). Otherwise a new ``PrunedBert*`` / ``PrunedRoberta*`` model holding
    ``model``'s weights on its device and in its dtype (``model`` is left as is).

    Raises:
        TypeError: not a BERT-family model, or per-layer widths on a model that
            :func:`~lightning_topo.pruning.layout.check_supported` refuses.
    """
    layout.encoder_layers(model)
    config = model.config
    if _is_uniform(model):
        for key in ("intermediate_sizes", "num_heads_per_layer"):
            if key in config.__dict__ and not str(getattr(config, "model_type", "")).startswith("pruned_"):
                delattr(config, key)
        config.intermediate_size = layer_widths(model)["ffn"][0]
        return model
    family = layout.check_supported(model)
    config_cls, bare_cls, classifier_cls = _PRUNED_CLASSES[family]
    is_classifier = type(model).__name__.endswith("ForSequenceClassification")
    cls = classifier_cls if is_classifier else bare_cls
    new = cls(_pruned_config(model, config_cls))
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    real_missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if real_missing or unexpected:
        raise RuntimeError(
            f"could not move weights into {cls.__name__}: missing {real_missing}, unexpected {unexpected}"
        )
    cls.register_for_auto_class("AutoModelForSequenceClassification" if is_classifier else "AutoModel")
    config_cls.register_for_auto_class()
    first = next(model.parameters())
    return new.to(device=first.device, dtype=first.dtype).train(model.training)


# ----------------------------------------------------------------------------- manifest


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    lines = [f"{_sha256(p)}  {p.relative_to(folder).as_posix()}\n" for p in files]
    (folder / MANIFEST).write_text("".join(lines))


def verify_manifest(path: str | Path) -> None:
    """Check every file listed in ``path/SHA256SUMS`` against its SHA-256.

    Raises:
        FileNotFoundError: the manifest, or a file it lists, is missing (named).
        ValueError: a file's content does not match (named), or the manifest is malformed.
    """
    folder = Path(path)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{folder} has no {MANIFEST}; it was not written by save_compressed")
    for n, line in enumerate(manifest.read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or ".." in Path(name).parts:
            raise ValueError(f"{manifest}: line {n} is not '<sha256>  <file>': {line!r}")
        file = folder / name
        if not file.is_file():
            raise FileNotFoundError(f"checkpoint file {file} listed in {MANIFEST} is missing")
        if _sha256(file) != digest:
            raise ValueError(
                f"checkpoint file {file} does not match its SHA-256 in {MANIFEST}: it was changed or is "
                "corrupt; restore it or save the checkpoint again"
            )


def _check_safetensors(file: Path) -> None:
    """Refuse an empty or truncated ``.safetensors`` file (header length, header JSON, data size)."""
    size = file.stat().st_size
    problem = None
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            problem = f"it has {size} bytes"
        else:
            (n,) = struct.unpack("<Q", head)
            try:
                header = json.loads(fh.read(n)) if 8 + n <= size else None
            except ValueError:
                header = None
            ends = [t["data_offsets"][1] for k, t in (header or {}).items() if k != "__metadata__"]
            if header is None or 8 + n + max(ends, default=0) > size:
                problem = "its header or tensor data is cut short"
    if problem is not None:
        raise ValueError(f"weights file {file} is empty or truncated ({problem}); save the checkpoint again")


# ----------------------------------------------------------------------------- atomic folder replace


def _siblings(path: Path, kind: str) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.{kind}-*")) if path.parent.is_dir() else []


def _sibling(path: Path, kind: str, *, create: bool = True) -> Path:
    """A new hidden name next to ``path`` (``.NAME.KIND-PID-RANDOM``); with ``create``, a folder with
    normal permissions (``0o777`` minus the umask, unlike ``mkdtemp``'s ``0o700``)."""
    while True:
        candidate = path.parent / f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"
        if not create:
            if not candidate.exists():
                return candidate
            continue
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


def _owner_alive(leftover: Path) -> bool:
    try:
        pid = int(leftover.name.rsplit("-", 2)[-2])
    except (ValueError, IndexError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover(path: Path) -> None:
    """Repair what a killed save left: if ``path`` is missing, move back the complete new folder (its
    ``SHA256SUMS`` is written last) or else the old one; delete the other leftovers of dead writers
    (leftovers of writers still running are left alone)."""
    stale = {kind: [p for p in _siblings(path, kind) if not _owner_alive(p)] for kind in ("tmp", "old")}
    if not path.exists():
        marker = {"tmp": MANIFEST, "old": "config.json"}
        done = False
        for kind in ("tmp", "old"):
            for candidate in list(stale[kind]):
                if not done and (candidate / marker[kind]).is_file():
                    os.rename(candidate, path)
                    stale[kind].remove(candidate)
                    done = True
    for leftover in stale["tmp"] + stale["old"]:
        shutil.rmtree(leftover, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two folders (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` if unsupported."""
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _move_into_place(staged: Path, path: Path) -> None:
    """Put the complete folder ``staged`` at ``path``; ``path`` always holds a complete checkpoint."""
    if not path.exists():
        os.rename(staged, path)
    elif _exchange(staged, path):
        shutil.rmtree(staged, ignore_errors=True)  # now holds the old checkpoint
    else:  # two renames; a kill in between is repaired by _recover at the next call
        old = _sibling(path, "old", create=False)
        os.rename(path, old)
        try:
            os.rename(staged, path)
        except BaseException:
            os.rename(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- save / load


def check_output_path(path: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse, before any work, a checkpoint path that :func:`save_compressed` could not write.

    Also finishes or cleans up a save to ``path`` that a killed run left behind.

    Raises:
        FileExistsError: ``path`` exists (an empty folder does not count) and ``overwrite`` is false,
            or it is a file or a non-empty folder that is not a checkpoint (never replaced, even with
            ``overwrite=True``).
        NotADirectoryError: a parent of ``path`` is a file.
        PermissionError: the folder that would hold ``path`` is not writable.
    """
    path = Path(path)
    _recover(path)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):  # an empty folder holds nothing
        if not overwrite:
            raise FileExistsError(
                f"{path} already exists; pass overwrite=True to replace it, or choose another path"
            )
        if not path.is_dir() or not (path / "config.json").is_file():
            raise FileExistsError(
                f"{path} exists and is not a compressed checkpoint (no config.json); it is never replaced, "
                "even with overwrite=True: choose another path or remove it yourself"
            )
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"cannot create {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: no write permission in {ancestor}")
    return path


def _check_extra_files(extra_files: Mapping[str, bytes | str | dict] | None) -> dict[str, bytes]:
    """``extra_files`` as ``{relative name: bytes}`` after checking names and types."""
    out: dict[str, bytes] = {}
    reserved = {MANIFEST, "config.json", "model.safetensors"}
    for name, content in (extra_files or {}).items():
        rel = Path(name) if isinstance(name, str) else None
        if (
            rel is None
            or not name
            or rel.is_absolute()
            or ".." in rel.parts
            or "\n" in name
            or name in reserved
        ):
            raise ValueError(
                f"extra_files names must be relative file names inside the checkpoint, without '..' and not "
                f"one of {sorted(reserved)}; got {name!r}"
            )
        if isinstance(content, bytes):
            out[rel.as_posix()] = content
        elif isinstance(content, str):
            out[rel.as_posix()] = content.encode()
        elif isinstance(content, Mapping):
            out[rel.as_posix()] = (json.dumps(content, indent=1) + "\n").encode()
        else:
            raise ValueError(
                f"extra_files[{name!r}] must be bytes, str or a JSON dict; got {type(content).__name__}"
            )
    return out


def save_compressed(
    model: nn.Module,
    path: str | Path,
    *,
    tokenizer: Any = None,
    overwrite: bool = False,
    extra_files: Mapping[str, bytes | str | dict] | None = None,
) -> Path:
    """Save a pruned model as a Hugging Face folder, replacing ``path`` atomically.

    The folder holds ``config.json``, ``model.safetensors``, the tokenizer when given, ``extra_files``
    and ``SHA256SUMS``. Everything is written to a hidden sibling folder first and then swapped in
    (one atomic ``renameat2`` exchange on Linux; elsewhere two renames, and a save killed between
    them is repaired by the next :func:`save_compressed`, :func:`check_output_path` or
    :func:`load_compressed` of the same path). Leftovers of killed saves are deleted.

    Args:
        model: a (pruned) BERT-family Hugging Face model; not modified except that its config's
            ``intermediate_size`` is synchronised when widths are uniform.
        path: target folder.
        tokenizer: saved alongside when given.
        overwrite: replace an existing checkpoint at ``path`` (default ``False``: ``FileExistsError``).
        extra_files: more files to put in the folder before it is moved into place, e.g.
            ``{"pruning_history.json": {...}}``; values are ``bytes``, ``str`` or a dict (written as JSON).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError, NotADirectoryError, PermissionError: see :func:`check_output_path`.
        ValueError: a bad ``extra_files`` entry. Nothing is written when an error is raised.
    """
    path = Path(path)
    files = _check_extra_files(extra_files)
    check_output_path(path, overwrite=overwrite)
    export = to_exportable(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = _sibling(path, "tmp")
    try:
        export.save_pretrained(staged, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staged)
        for name, content in files.items():
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            (staged / name).write_bytes(content)
        _write_manifest(staged)
        _move_into_place(staged, path)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return path


def _check_checkpoint_folder(path: Path, verify: bool | None) -> None:
    if not path.exists():
        _recover(path)
    if not path.exists():
        raise FileNotFoundError(f"no compressed checkpoint at {path}: the path does not exist")
    if not path.is_dir():
        raise NotADirectoryError(
            f"{path} is a file; a compressed checkpoint is a folder written by save_compressed"
        )
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a compressed checkpoint: it has no config.json")
    if (path / MANIFEST).is_file() and verify is not False:
        verify_manifest(path)
    elif verify:
        raise FileNotFoundError(f"{path} has no {MANIFEST}; pass verify=False to load it unchecked")
    elif verify is None:
        warnings.warn(f"{path} has no {MANIFEST}; loading it without checking its files", stacklevel=3)
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ValueError(f"{path} is not a compressed checkpoint: it has no .safetensors weights file")
    for file in weights:
        _check_safetensors(file)


def _check_quantize(quantize: Any, kwargs: Mapping[str, Any]) -> None:
    from lightning_topo.pruning.quantize import QUANTIZE_CHOICES, check_int8_available

    if quantize not in QUANTIZE_CHOICES or isinstance(quantize, bool):
        raise ValueError(
            f"quantize must be one of {list(QUANTIZE_CHOICES)} (None: float model; 'int8': dynamic int8 "
            f"quantisation of the Linear layers for CPU inference); got {quantize!r}"
        )
    if quantize is None:
        return
    if kwargs.get("device_map") not in (None, "cpu"):
        raise ValueError(
            f"quantize='int8' runs on the CPU only; got device_map={kwargs['device_map']!r}: leave it out"
        )
    check_int8_available()


def load_compressed(
    path: str | Path, *, verify: bool | None = None, quantize: str | None = None, **kwargs: Any
) -> nn.Module:
    """Load a folder written by :func:`save_compressed` (either flavour) as a sequence classifier.

    Args:
        path: the checkpoint folder.
        verify: check every file against ``SHA256SUMS`` (``None``, default: when the folder has one,
            else warn; ``True``: require it; ``False``: skip).
        quantize: ``None`` (default): the float model as saved. ``"int8"``: after loading, apply
            PyTorch dynamic int8 quantisation to every ``nn.Linear``
            (:func:`~lightning_topo.pruning.quantize.quantize_int8`) for CPU inference; the
            checkpoint on disk stays float and is not changed.
        kwargs: passed to ``AutoModelForSequenceClassification.from_pretrained`` (``local_files_only``
            defaults to ``True``: a path is never looked up on the Hub).

    Raises:
        FileNotFoundError: ``path`` does not exist, or a file listed in ``SHA256SUMS`` is missing.
        NotADirectoryError: ``path`` is a file.
        ValueError: not a checkpoint (no ``config.json`` or weights), a file that does not match its
            checksum, or an empty or truncated weights file; each message names the file. Also a
            ``quantize`` other than ``None``/``"int8"``, or ``quantize="int8"`` with a non-CPU
            ``device_map`` (checked before anything is read).
        RuntimeError: ``quantize="int8"`` on a PyTorch build without a quantised CPU engine.
    """
    path = Path(path)
    _check_quantize(quantize, kwargs)
    _check_checkpoint_folder(path, verify)
    kwargs.setdefault("local_files_only", True)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"could not load the compressed checkpoint {path}: {err}") from err
    if quantize == "int8":
        from lightning_topo.pruning.quantize import quantize_int8

        model = quantize_int8(model.float(), inplace=True)
    return model
