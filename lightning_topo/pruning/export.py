"""Compressed checkpoints: a standard Hugging Face folder that reloads with or without lightning-topo.

* Uniform widths (one FFN width for all layers, every head kept) -> the model's own stock config
  (e.g. ``BertConfig``, ``DistilBertConfig``) with the new FFN width; plain ``transformers`` loads it.
* Per-layer widths or removed heads (BERT, RoBERTa, ELECTRA, DistilBERT, DeBERTa-v2/v3) ->
  ``Pruned<Family>Config`` and its models (:mod:`lightning_topo.pruning.remote_code.pruned_bert`):
  the stock config and architecture plus ``intermediate_sizes``, ``num_heads_per_layer`` and the
  family's layout spec (``pruned_layout``, from :mod:`~lightning_topo.pruning.layout`). Importing
  this module registers them with transformers' public ``AutoConfig.register`` /
  ``AutoModel.register`` / ``AutoModelForSequenceClassification.register``, so our process loads
  such a folder with ``trust_remote_code=False`` and never imports the folder's code. The folder
  also carries ``pruned_bert.py`` and an ``auto_map``, so a process without lightning-topo loads it
  with ``from_pretrained(path, trust_remote_code=True)`` (only for folders one trusts: that runs
  the folder's ``pruned_bert.py``).

Every folder holds ``SHA256SUMS`` (the SHA-256 of every other file, ``sha256sum -c`` format).
:func:`verify_compressed` is the one check every reader runs (``load_compressed``, the prune CLI,
``SequenceClassifier``): manifest present, not empty, covering every weight/config/code file and
matching; config ours; weights files complete. Writes go to a hidden sibling folder that replaces
``path`` in one atomic exchange, so a valid checkpoint is at ``path`` at every instant (see
:func:`save_compressed`).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from lightning_topo.pruning import layout
from lightning_topo.pruning.layout import layer_widths
from lightning_topo.pruning.quantize import QUANTIZE_CHOICES, check_int8_available, quantize_int8
from lightning_topo.pruning.remote_code import pruned_bert as _code

__all__ = [
    "MANIFEST",
    "OWN_AUTO_MAPS",
    "verify_compressed",
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
    "bert": (_code.PrunedBertConfig, _code.PrunedBertModel, _code.PrunedBertForSequenceClassification),
    "roberta": (
        _code.PrunedRobertaConfig,
        _code.PrunedRobertaModel,
        _code.PrunedRobertaForSequenceClassification,
    ),
    "electra": (
        _code.PrunedElectraConfig,
        _code.PrunedElectraModel,
        _code.PrunedElectraForSequenceClassification,
    ),
    "distilbert": (
        _code.PrunedDistilBertConfig,
        _code.PrunedDistilBertModel,
        _code.PrunedDistilBertForSequenceClassification,
    ),
    "deberta-v2": (
        _code.PrunedDebertaV2Config,
        _code.PrunedDebertaV2Model,
        _code.PrunedDebertaV2ForSequenceClassification,
    ),
}
#: The module name of the model code copied into a per-layer checkpoint (``pruned_bert.py``).
_CODE_MODULE = _code.__name__.rpartition(".")[2]
#: ``model_type`` of our per-layer checkpoints -> the ``auto_map`` values such a folder may carry
#: (``pruned_bert.<our class>``); any other value is foreign and refused by :func:`verify_compressed`.
OWN_AUTO_MAPS: dict[str, frozenset[str]] = {
    classes[0].model_type: frozenset(f"{_CODE_MODULE}.{cls.__name__}" for cls in classes)
    for classes in _PRUNED_CLASSES.values()
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


def _pruned_config(model: nn.Module, family: layout.Family, config_cls: type) -> Any:
    """The pruned config: the stock config (with the original head count, so the head size stays
    defined), the per-layer widths and the family's layout spec."""
    widths = layer_widths(model)
    cfg = model.config.to_dict()
    for key in (
        "model_type",
        "architectures",
        "auto_map",
        "transformers_version",
        "intermediate_sizes",
        "num_heads_per_layer",
        "pruned_layout",
    ):
        cfg.pop(key, None)
    first = layout.encoder_layers(model)[0]
    cfg[family.config_heads] = layout.hidden_size(first) // layout.head_size(first)
    return config_cls(
        **cfg,
        intermediate_sizes=widths["ffn"],
        num_heads_per_layer=widths["heads"],
        pruned_layout=family.spec(),
    )


def to_exportable(model: nn.Module) -> nn.Module:
    """A model whose config describes its real shapes, ready for ``save_pretrained``.

    Uniform widths: ``model`` itself with the family's FFN width key (``intermediate_size``,
    DistilBERT's ``hidden_dim``) set and per-layer keys dropped from a stock config. Otherwise a
    new ``Pruned*`` model of the family (:mod:`lightning_topo.pruning.remote_code.pruned_bert`)
    holding ``model``'s weights on its device and in its dtype (``model`` is left as is).

    Raises:
        TypeError: not a BERT-family model, or per-layer widths on a model that
            :func:`~lightning_topo.pruning.layout.check_supported` refuses (one line naming the
            supported families).
    """
    layout.encoder_layers(model)
    config = model.config
    if _is_uniform(model):
        for key in ("intermediate_sizes", "num_heads_per_layer"):
            if key in config.__dict__ and not str(getattr(config, "model_type", "")).startswith("pruned_"):
                delattr(config, key)
        family = layout.family_of(model)
        key = family.config_ffn if family is not None else "intermediate_size"
        setattr(config, key, layer_widths(model)["ffn"][0])
        return model
    family = layout.family_by_name(layout.check_supported(model))
    config_cls, bare_cls, classifier_cls = _PRUNED_CLASSES[family.name]
    is_classifier = type(model).__name__.endswith("ForSequenceClassification")
    cls = classifier_cls if is_classifier else bare_cls
    new = cls(_pruned_config(model, family, config_cls))
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


#: Files a checkpoint folder may hold outside ``SHA256SUMS``: reports written after the checkpoint
#: (``lightning-topo prune --int8-report``).
UNLISTED_REPORTS = frozenset({"int8_report.json"})
#: Suffixes of the files transformers reads from a model folder (weights, configs, tokenizer files,
#: model code): each such file must be listed in ``SHA256SUMS``.
_COVERED_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf",
    ".json", ".py", ".txt", ".model", ".tiktoken", ".vocab", ".merges",
)  # fmt: skip


def _read_manifest(folder: Path) -> dict[str, str]:
    """``{relative name: sha256}`` of ``folder/SHA256SUMS`` after checking its format."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{folder} has no {MANIFEST}; every folder save_compressed writes has one, so this one was not "
            "written by lightning-topo or was changed: save it again (load_compressed(..., verify=False) "
            "skips the check for a folder you trust)"
        )
    try:
        text = manifest.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{manifest} is not UTF-8 text; it is corrupt: save the checkpoint again") from None
    listed: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line.partition("  ")
        bad_digest = len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)
        if not sep or bad_digest or not name or ".." in Path(name).parts or Path(name).is_absolute():
            raise ValueError(f"{manifest}: line {n} is not '<sha256>  <file>': {line!r}")
        if name in listed:
            raise ValueError(f"{manifest}: line {n} lists {name!r} a second time")
        listed[name] = digest
    if not listed:
        raise ValueError(f"{manifest} is empty; it must list every file of the checkpoint: save it again")
    return listed


def verify_manifest(path: str | Path) -> None:
    """Check ``path/SHA256SUMS``: well formed, not empty, listing every weight, config, tokenizer and
    code file of the folder (all files but the manifest and :data:`UNLISTED_REPORTS`, by the
    suffixes transformers reads), and every listed file present with that SHA-256.

    Raises:
        FileNotFoundError: the manifest, or a file it lists, is missing (named).
        ValueError: a file's content does not match (named), a file left out of the manifest
            (named: ``config.json`` and ``model.safetensors`` included), or a malformed or empty
            manifest.
    """
    folder = Path(path)
    listed = _read_manifest(folder)
    present = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
    uncovered = [
        name
        for name in present
        if name != MANIFEST
        and name not in UNLISTED_REPORTS
        and name not in listed
        and (name.endswith(_COVERED_SUFFIXES) or name == "config.json")
    ]
    for required in ("config.json", "model.safetensors"):
        if required not in listed and (folder / required).exists():
            uncovered.insert(0, required)
    if uncovered:
        raise ValueError(
            f"{folder / MANIFEST} does not list {uncovered[0]}"
            + (f" (and {len(uncovered) - 1} more files)" if len(uncovered) > 1 else "")
            + "; a checkpoint's manifest covers every weight, config and code file: save the checkpoint again"
        )
    for name, digest in listed.items():
        file = folder / name
        if not file.is_file():
            raise FileNotFoundError(f"checkpoint file {file} listed in {MANIFEST} is missing")
        if _sha256(file) != digest:
            raise ValueError(
                f"checkpoint file {file} does not match its SHA-256 in {MANIFEST}: it was changed or is "
                "corrupt; restore it or save the checkpoint again"
            )


def _check_safetensors(file: Path) -> None:
    """Refuse an empty, truncated or malformed ``.safetensors`` file (header length, header JSON,
    tensor offsets against the file size), naming the file."""
    size = file.stat().st_size
    problem = None
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            problem = f"it has {size} bytes"
        else:
            (n,) = struct.unpack("<Q", head)
            header: Any = None
            if 8 + n <= size:
                try:
                    header = json.loads(fh.read(n))
                except ValueError:
                    header = None
            ends = []
            if isinstance(header, dict):
                for key, entry in header.items():
                    if key == "__metadata__":
                        continue
                    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
                    if not (
                        isinstance(offsets, list)
                        and len(offsets) == 2
                        and all(isinstance(o, int) for o in offsets)
                    ):
                        header = None
                        break
                    ends.append(offsets[1])
            if not isinstance(header, dict) or 8 + n + max(ends, default=0) > size:
                problem = "its header or tensor data is cut short or unreadable"
    if problem is not None:
        raise ValueError(f"weights file {file} is empty or truncated ({problem}); save the checkpoint again")


def _read_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    if not file.is_file():
        raise ValueError(f"{path} is not a compressed checkpoint: it has no config.json")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(
            f"{file} is not valid JSON ({err}); it is corrupt: save the checkpoint again"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(
            f"{file} holds a JSON {type(config).__name__}, not an object; save the checkpoint again"
        )
    return config


def _check_config(path: Path, config: dict[str, Any]) -> None:
    """Refuse a config that would load code or classes that are not ours: a ``model_type`` that is
    neither one of our per-layer types nor one transformers knows natively, an ``auto_map`` other
    than ours, or a per-layer checkpoint whose ``pruned_layout`` is not its family's."""
    file = path / "config.json"
    model_type = config.get("model_type")
    own = isinstance(model_type, str) and model_type in OWN_AUTO_MAPS
    if not own and not (isinstance(model_type, str) and model_type in CONFIG_MAPPING_NAMES):
        raise ValueError(
            f"{file} has model_type {model_type!r}, which neither transformers nor save_compressed knows; "
            f"its code is never run. {layout.supported_families_line()}"
        )
    auto_map = config.get("auto_map")
    if auto_map is not None:
        allowed = OWN_AUTO_MAPS.get(model_type, frozenset()) if own else frozenset()
        values = list(auto_map.values()) if isinstance(auto_map, dict) else [auto_map]
        foreign = [v for v in values if not (isinstance(v, str) and v in allowed)]
        if foreign:
            raise ValueError(
                f"{file} has an auto_map entry {foreign[0]!r} that is not lightning-topo's; code from a "
                "folder is never run: save the checkpoint again"
            )
    if own:
        family_name = layout.EXPORT_FAMILIES[model_type]
        spec = config.get("pruned_layout")
        legacy = spec is None and model_type in ("pruned_bert", "pruned_roberta")
        if not legacy and spec != layout.family_by_name(family_name).spec():
            raise ValueError(
                f"{file}: pruned_layout {spec!r} is not the {family_name} layout lightning-topo writes; "
                "save the checkpoint again"
            )


def verify_compressed(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Check a folder written by :func:`save_compressed` before anything reads its weights.

    Every reader of such a folder calls this (``load_compressed``, ``prune --checkpoint``,
    ``SequenceClassifier``): the path is a folder (a save killed half-way is repaired first); its
    ``SHA256SUMS`` is present, not empty, lists every weight/config/tokenizer/code file
    (:func:`verify_manifest`) and every listed file matches; ``config.json`` is a JSON object with
    a ``model_type`` that ``save_compressed`` writes, and for a per-layer checkpoint an
    ``auto_map`` naming only our classes and the family's layout spec; every ``.safetensors`` file
    is complete (header and tensor offsets within the file). Nothing is imported or run.

    Args:
        path: the checkpoint folder.
        verify: ``False`` skips the ``SHA256SUMS`` check only (for a folder one trusts that lacks
            one); the structural checks still run.

    Returns:
        ``config.json`` as a dict.

    Raises:
        FileNotFoundError: ``path`` does not exist, it has no ``SHA256SUMS``, or a listed file is
            missing (named).
        NotADirectoryError: ``path`` is a file.
        ValueError: one line naming the file: a checksum mismatch, a file left out of the
            manifest, an empty or malformed manifest, a config that is not ours, a missing,
            empty or truncated weights file.
    """
    path = Path(path)
    if not path.exists():
        _recover(path)
    if not path.exists():
        raise FileNotFoundError(f"no compressed checkpoint at {path}: the path does not exist")
    if not path.is_dir():
        raise NotADirectoryError(
            f"{path} is a file; a compressed checkpoint is a folder written by save_compressed"
        )
    config = _read_config(path)
    if verify:
        verify_manifest(path)
    _check_config(path, config)
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ValueError(f"{path} is not a compressed checkpoint: it has no .safetensors weights file")
    for file in weights:
        _check_safetensors(file)
    return config


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


def _check_quantize(quantize: Any, kwargs: Mapping[str, Any]) -> None:
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

    The folder is checked first (:func:`verify_compressed`), then loaded with
    ``trust_remote_code=False`` through the classes this module registers: the copy of
    ``pruned_bert.py`` in the folder is never imported, and no prompt to run it can appear.

    Args:
        path: the checkpoint folder.
        verify: check every file against ``SHA256SUMS`` (``None`` or ``True``, default: required;
            ``False``: skip the checksums of a folder you trust, the structural checks still run).
        quantize: ``None`` (default): the float model as saved. ``"int8"``: after loading, apply
            PyTorch dynamic int8 quantisation to every ``nn.Linear``
            (:func:`~lightning_topo.pruning.quantize.quantize_int8`) for CPU inference; the
            checkpoint on disk stays float and is not changed.
        kwargs: passed to ``AutoModelForSequenceClassification.from_pretrained`` (``local_files_only``
            defaults to ``True``: a path is never looked up on the Hub). ``trust_remote_code`` may
            only be ``False``.

    Raises:
        FileNotFoundError: ``path`` does not exist, it has no ``SHA256SUMS``, or a file listed in it
            is missing.
        NotADirectoryError: ``path`` is a file.
        ValueError: every refusal of :func:`verify_compressed` (each names the file), weights that
            transformers cannot read, ``trust_remote_code=True``, a ``quantize`` other than
            ``None``/``"int8"``, or ``quantize="int8"`` with a non-CPU ``device_map`` (checked
            before anything is read).
        RuntimeError: ``quantize="int8"`` on a PyTorch build without a quantised CPU engine.
    """
    path = Path(path)
    if kwargs.pop("trust_remote_code", False) is not False:
        raise ValueError(
            "load_compressed loads with lightning-topo's own classes; trust_remote_code must be False "
            "(code from a checkpoint folder is never run)"
        )
    _check_quantize(quantize, kwargs)
    verify_compressed(path, verify=verify is not False)
    kwargs.setdefault("local_files_only", True)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), trust_remote_code=False, **kwargs
        )
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"could not load the compressed checkpoint {path}: {first}") from None
    if quantize == "int8":
        model = quantize_int8(model.float(), inplace=True)
    return model
