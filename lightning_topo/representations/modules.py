"""Finding the Hugging Face model inside a user's own ``nn.Module`` / LightningModule, and swapping it.

A lens or the pruning callback needs "the" Hugging Face model of a LightningModule. Users keep it
wherever they like: ``self.model`` (as :class:`~lightning_topo.models.SequenceClassifier`),
``self.net``, ``self.backbone`` next to their own head, inside an ``nn.ModuleDict`` or
``nn.ModuleList``. :func:`find_hf_model` looks through every registered submodule (any depth) for
instances of transformers' ``PreTrainedModel`` and returns the outermost one, or asks for
``model_attr`` when there are several. :func:`replace_submodule` puts a new model (e.g. a pruned one)
in its place, under every name that refers to it.

Only registered submodules are seen (what ``module.named_modules()`` lists): a model kept in a plain
Python list or dict is invisible to PyTorch (no ``.to(device)``, no ``state_dict``) and to this
search alike.

transformers is not imported here: a ``PreTrainedModel`` instance can only exist once
``transformers.modeling_utils`` has been imported, so the class is taken from ``sys.modules`` (this
keeps ``import lightning_topo.callbacks`` light).
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

from lightning_topo.scores.checks import check_text

__all__ = ["find_hf_model", "hf_model_paths", "replace_submodule"]


def _pretrained_model_class() -> type | None:
    """transformers' ``PreTrainedModel`` if transformers is loaded, else ``None`` (then no instance exists)."""
    modeling_utils = sys.modules.get("transformers.modeling_utils")
    return getattr(modeling_utils, "PreTrainedModel", None)


def _is_hf_model(module: object) -> bool:
    cls = _pretrained_model_class()
    return cls is not None and isinstance(module, cls)


def hf_model_paths(module: nn.Module) -> dict[str, list[str]]:
    """The outermost Hugging Face models registered under ``module``, with every path to each.

    Args:
        module: any ``nn.Module`` (typically a LightningModule). ``module`` itself is not a candidate.

    Returns:
        ``{first path: [all paths]}`` in registration order, one entry per distinct model object;
        "outermost" = not a submodule of another Hugging Face model found here (so
        ``BertForSequenceClassification.bert`` is not listed next to its classifier, even when the
        user also keeps a second reference to it as ``self.encoder``). Paths are dotted, as
        ``module.get_submodule`` takes them (``"net"``, ``"towers.text"``, ``"layers.0"``).
    """
    found: dict[int, list[str]] = {}
    objects: dict[int, nn.Module] = {}
    for path, sub in module.named_modules(remove_duplicate=False):
        if path and _is_hf_model(sub):
            found.setdefault(id(sub), []).append(path)
            objects[id(sub)] = sub
    inner: set[int] = set()
    for obj in objects.values():
        for _, sub in obj.named_modules(remove_duplicate=False):
            if sub is not obj and id(sub) in objects:
                inner.add(id(sub))
    return {paths[0]: paths for key, paths in found.items() if key not in inner}


def find_hf_model(module: nn.Module, model_attr: str | None = None) -> tuple[str, Any]:
    """Find the Hugging Face model (a transformers ``PreTrainedModel``) inside ``module``.

    Args:
        module: the user's LightningModule (or any ``nn.Module``).
        model_attr: dotted path of the model inside ``module`` (``"net"``, ``"towers.text"``,
            ``"layers.0"``), for modules that hold several Hugging Face models; ``None`` (default)
            = search every registered submodule at any depth.

    Returns:
        ``(path, model)``: the dotted attribute path (``module.get_submodule(path) is model``) and the
        ``PreTrainedModel``. With ``model_attr=None`` the model is the single outermost one (a
        ``BertForSequenceClassification``, not its inner ``.bert``; a bare ``AutoModel`` encoder
        when the user adds their own head).

    Raises:
        TypeError: no Hugging Face model is registered under ``module`` (the message says what was
            looked for and suggests ``model_attr``), or ``model_attr`` names something that is not one.
        ValueError: several are found (the message lists their paths and asks for ``model_attr``),
            or ``model_attr`` is blank or names no submodule.
    """
    owner = type(module).__name__
    if model_attr is not None:
        what = f"the dotted path of the Hugging Face model inside {owner} (e.g. 'net' or 'towers.text') or None (search)"
        check_text(model_attr, "model_attr", what)
        try:
            target = module.get_submodule(model_attr)
        except AttributeError:
            candidates = list(hf_model_paths(module))
            raise ValueError(
                f"model_attr={model_attr!r}: {owner} has no submodule at that path; Hugging Face models found: "
                f"{candidates or 'none'}"
            ) from None
        if not _is_hf_model(target):
            raise TypeError(
                f"model_attr={model_attr!r} is a {type(target).__name__}, not a Hugging Face model (a transformers "
                f"PreTrainedModel such as BertForSequenceClassification or an AutoModel encoder)"
            )
        return model_attr, target
    candidates = hf_model_paths(module)
    if not candidates:
        raise TypeError(
            f"no Hugging Face model found in {owner}: looked for a transformers PreTrainedModel (e.g. "
            f"BertForSequenceClassification or an AutoModel encoder) among all its registered submodules, at any "
            f"depth; keep the model as an attribute of the module (self.net = AutoModel.from_pretrained(...)), "
            f"not in a plain list or dict, and pass model_attr='path.to.model' if it is wrapped"
        )
    if len(candidates) > 1:
        listed = ", ".join(f"{first} ({type(module.get_submodule(first)).__name__})" for first in candidates)
        raise ValueError(
            f"{owner} holds {len(candidates)} Hugging Face models: {listed}; say which one with "
            f"model_attr= (e.g. model_attr={next(iter(candidates))!r})"
        )
    path = next(iter(candidates))
    return path, module.get_submodule(path)


def replace_submodule(module: nn.Module, path: str, new: nn.Module) -> list[str]:
    """Put ``new`` where ``module.get_submodule(path)`` is, under every name that refers to it.

    Every other registered name of the old submodule (an alias such as ``self.backbone = self.net``)
    is pointed at ``new`` as well, and names of the old submodule's own children (``self.encoder =
    self.net.bert``) at the child with the same relative path in ``new`` (when ``new`` has one), so
    no attribute keeps the replaced weights.

    Args:
        module: the root (e.g. the LightningModule).
        path: dotted path of the submodule to replace (as :func:`find_hf_model` returns it).
        new: the replacement.

    Returns:
        The paths that now refer to ``new`` or to one of its children, sorted.

    Raises:
        ValueError: ``path`` is empty or names no submodule.
    """
    if not path:
        raise ValueError("replace_submodule needs the dotted path of a submodule; got '' (the root itself)")
    try:
        old = module.get_submodule(path)
    except AttributeError:
        raise ValueError(f"{type(module).__name__} has no submodule {path!r}") from None
    if old is new:
        return sorted(p for p, m in module.named_modules(remove_duplicate=False) if m is new)
    relative: dict[int, str] = {}
    for rel, sub in old.named_modules(remove_duplicate=False):
        relative.setdefault(id(sub), rel)
    new_subs = dict(new.named_modules(remove_duplicate=False))
    targets: list[tuple[str, nn.Module]] = []
    for name, sub in module.named_modules(remove_duplicate=False):
        rel = relative.get(id(sub))
        if not name or rel is None:
            continue
        parent = name.rpartition(".")[0]
        if parent and id(module.get_submodule(parent)) in relative:
            continue  # inside the old model itself: goes with it
        replacement = new if rel == "" else new_subs.get(rel)
        if replacement is not None:
            targets.append((name, replacement))
    for name, replacement in targets:
        parent, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, attr, replacement)
    return sorted(name for name, _ in targets)
