"""Loading Hugging Face folders without ever running code from them.

A model folder is data the user hands us. transformers runs Python from such a folder when its
``config.json`` (or ``tokenizer_config.json``) has an ``auto_map`` and ``trust_remote_code`` is
true, and on a terminal it *asks* ("Do you wish to run the custom code? [y/N]") when
``trust_remote_code`` is left at ``None``. lightning-topo never lets it get there:

* :func:`check_model_folder` reads the folder's ``config.json`` and ``tokenizer_config.json`` as
  JSON (nothing is imported) and refuses, with one line naming the file and the key, a
  ``model_type`` that transformers does not know natively or an ``auto_map`` that is not the one
  lightning-topo's own compressed checkpoints carry (:data:`OWN_MODEL_TYPES`).
* :func:`load_config`, :func:`load_model` and :func:`load_tokenizer` run that check and then call
  ``from_pretrained`` with ``trust_remote_code=False`` literally; passing ``trust_remote_code``
  to them is refused.

A compressed checkpoint (``model_type`` ``pruned_bert`` / ``pruned_roberta``, written by
:func:`lightning_topo.pruning.save_compressed`) is accepted by the check: its classes are
lightning-topo's own, registered with transformers' Auto classes when
:mod:`lightning_topo.pruning.export` is imported, so ``trust_remote_code=False`` loads them from
our package and the copy of ``pruned_bert.py`` in the folder is never imported. Read such a
folder with :func:`lightning_topo.pruning.load_compressed`, which also checks its ``SHA256SUMS``;
:func:`load_model` refuses it while those classes are not registered instead of guessing.

Library layer: standard library and transformers only (imported when a function runs, so that
``import lightning_topo.loading`` stays light).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MANIFEST_NAME",
    "OWN_AUTO_MAP",
    "OWN_MODEL_TYPES",
    "ModelFolder",
    "check_model_folder",
    "load_config",
    "load_model",
    "load_tokenizer",
]

#: ``model_type`` of lightning-topo's compressed checkpoints with per-layer widths (the classes
#: of :mod:`lightning_topo.pruning.remote_code.pruned_bert`, one per supported family).
OWN_MODEL_TYPES: frozenset[str] = frozenset(
    {"pruned_bert", "pruned_roberta", "pruned_electra", "pruned_distilbert", "pruned_deberta-v2"}
)
#: The ``auto_map`` values such a folder may carry: a ``Pruned*`` class of its ``pruned_bert``
#: module. They are never resolved from the folder (our registered classes are used), but any
#: other value marks the folder as foreign.
OWN_AUTO_MAP = re.compile(r"pruned_bert\.Pruned[A-Za-z0-9]+")

#: Checksum manifest that every folder written by ``save_compressed`` holds.
MANIFEST_NAME = "SHA256SUMS"


@dataclass(frozen=True)
class ModelFolder:
    """What :func:`check_model_folder` found.

    Attributes:
        path: the path as given (a string).
        local: ``True`` when ``path`` is an existing local folder (a Hub id is not checked here:
            nothing is downloaded, and ``trust_remote_code=False`` still applies to it).
        model_type: ``config.json``'s ``model_type`` (``None`` without a config).
        own: the folder is one of lightning-topo's compressed checkpoints with per-layer widths
            (``model_type`` in :data:`OWN_MODEL_TYPES`).
        written_by_us: ``own``, or the folder has a ``SHA256SUMS`` manifest (a compressed
            checkpoint of uniform widths uses the stock config): read it with
            :func:`lightning_topo.pruning.load_compressed`, which verifies the manifest.
        config: ``config.json`` as read (``{}`` without one), for callers that need e.g. the
            saved head's ``id2label`` without loading anything.
    """

    path: str
    local: bool
    model_type: str | None
    own: bool
    written_by_us: bool
    config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _read_json(file: Path) -> dict[str, Any] | None:
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"model folder file {str(file)!r} is not valid UTF-8 JSON ({err}); it was not loaded"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"model folder file {str(file)!r} holds a JSON {type(data).__name__}, not an object")
    return data


def _auto_map_values(auto_map: Any) -> list[str]:
    """Every class reference of an ``auto_map`` (values are ``"module.Class"`` or lists of them)."""
    if not isinstance(auto_map, dict):
        return [repr(auto_map)]
    out: list[str] = []
    for value in auto_map.values():
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None:
                out.append(item if isinstance(item, str) else repr(item))
    return out


def _native_model_types() -> frozenset[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return frozenset(CONFIG_MAPPING_NAMES)


def check_model_folder(path: str | os.PathLike[str]) -> ModelFolder:
    """Refuse a local model folder that would make transformers run code from it.

    Reads ``config.json`` and ``tokenizer_config.json`` as plain JSON (nothing is imported or
    run). Accepted: a ``model_type`` transformers knows natively (``bert``, ``roberta``, ...)
    without an ``auto_map``, and lightning-topo's own compressed checkpoints (a model type of
    :data:`OWN_MODEL_TYPES` whose ``auto_map`` names only our classes, :data:`OWN_AUTO_MAP`). A path that is not a local
    folder (a Hub id) is returned unchecked (``local=False``).

    Args:
        path: a local folder or a Hub id.

    Returns:
        :class:`ModelFolder`.

    Raises:
        ValueError: one line naming the file and what is refused: an unknown ``model_type``, an
            ``auto_map`` that is not ours (in ``config.json`` or ``tokenizer_config.json``), or a
            config file that is not JSON.
    """
    text = os.fspath(path)
    folder = Path(text).expanduser()
    if not folder.is_dir():
        return ModelFolder(text, False, None, False, False)
    config = _read_json(folder / "config.json") or {}
    model_type = config.get("model_type")
    config_file = str(folder / "config.json")
    if model_type is not None and not isinstance(model_type, str):
        raise ValueError(
            f"{config_file!r}: model_type must be a string; got {model_type!r}; the folder was not loaded"
        )
    own = model_type in OWN_MODEL_TYPES
    if model_type is not None and not own and model_type not in _native_model_types():
        raise ValueError(
            f"{config_file!r} has model_type {model_type!r}, which transformers does not know and "
            "lightning-topo does not write; lightning-topo never runs code from a model folder "
            "(trust_remote_code=False), so it refuses this folder. Use a BERT-family model "
            "(model_type 'bert', 'roberta', ...) or a checkpoint written by lightning-topo"
        )
    if "auto_map" in config:
        foreign = [v for v in _auto_map_values(config["auto_map"]) if not (own and OWN_AUTO_MAP.fullmatch(v))]
        if foreign:
            raise ValueError(
                f"{config_file!r} has an auto_map naming code in the folder ({foreign[0]!r}) that is not "
                "lightning-topo's; lightning-topo never runs code from a model folder "
                "(trust_remote_code=False), so it refuses this folder. Remove auto_map from config.json "
                "if the model is a standard transformers architecture"
            )
    tokenizer_config = _read_json(folder / "tokenizer_config.json") or {}
    if tokenizer_config.get("auto_map"):
        found = _auto_map_values(tokenizer_config["auto_map"])
        raise ValueError(
            f"{str(folder / 'tokenizer_config.json')!r} has an auto_map naming tokenizer code in the folder "
            f"({found[0] if found else tokenizer_config['auto_map']!r}); lightning-topo never runs code from a "
            "model folder (trust_remote_code=False), so it refuses this folder. Save the tokenizer with a "
            "standard tokenizer class"
        )
    written_by_us = own or (folder / MANIFEST_NAME).is_file()
    return ModelFolder(text, True, model_type, own, written_by_us, config)


def _safe_kwargs(what: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    if "trust_remote_code" in kwargs:
        raise TypeError(
            f"{what}: trust_remote_code cannot be passed; lightning-topo always loads with "
            "trust_remote_code=False and never runs code from a model folder"
        )
    return kwargs


def _check_registered(info: ModelFolder) -> None:
    if not info.own:
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if info.model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"{info.path!r} is a lightning-topo compressed checkpoint (model_type {info.model_type!r}); "
            "read it with lightning_topo.pruning.load_compressed(path), which registers its classes and "
            "checks its SHA256SUMS (its pruned_bert.py is never run)"
        )


def load_config(path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """``AutoConfig.from_pretrained(path, trust_remote_code=False, **kwargs)`` after
    :func:`check_model_folder`.

    Raises:
        ValueError: the folder is refused (see :func:`check_model_folder`), or it is one of our
            compressed checkpoints while their classes are not registered.
        TypeError: ``trust_remote_code`` was passed.
    """
    from transformers import AutoConfig

    kwargs = _safe_kwargs("load_config", kwargs)
    info = check_model_folder(path)
    _check_registered(info)
    return AutoConfig.from_pretrained(os.fspath(path), trust_remote_code=False, **kwargs)


def load_model(auto_class: Any, path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """``auto_class.from_pretrained(path, trust_remote_code=False, **kwargs)`` after
    :func:`check_model_folder`.

    Args:
        auto_class: a transformers class with ``from_pretrained``, e.g.
            ``AutoModelForSequenceClassification``.
        path: a local folder or a Hub id.
        kwargs: passed on (``num_labels``, ``ignore_mismatched_sizes``, ...).

    Raises:
        ValueError: the folder is refused, or it is one of our compressed checkpoints while their
            classes are not registered (use :func:`lightning_topo.pruning.load_compressed`).
        TypeError: ``trust_remote_code`` was passed.
    """
    kwargs = _safe_kwargs("load_model", kwargs)
    info = check_model_folder(path)
    _check_registered(info)
    return auto_class.from_pretrained(os.fspath(path), trust_remote_code=False, **kwargs)


def load_tokenizer(path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained(path, trust_remote_code=False, **kwargs)`` after
    :func:`check_model_folder`. A compressed checkpoint's tokenizer loads whether or not its model
    classes are registered (the tokenizer is a stock one).

    Raises:
        ValueError: the folder is refused (see :func:`check_model_folder`).
        TypeError: ``trust_remote_code`` was passed.
    """
    from transformers import AutoTokenizer

    kwargs = _safe_kwargs("load_tokenizer", kwargs)
    check_model_folder(path)
    return AutoTokenizer.from_pretrained(os.fspath(path), trust_remote_code=False, **kwargs)
