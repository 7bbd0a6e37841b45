"""Compressed checkpoints: a standard Hugging Face folder that reloads with or without lightning-topo.

* Uniform widths (one FFN width for all layers, every head kept) -> a stock ``BertConfig`` with the
  new ``intermediate_size``; plain ``transformers`` loads it.
* Per-layer widths or removed heads -> :class:`~lightning_topo.pruning.remote_code.pruned_bert.PrunedBertConfig`
  / ``PrunedBertForSequenceClassification``: registered with the Auto classes on
  ``import lightning_topo``, and the folder carries ``pruned_bert.py`` plus an ``auto_map`` so that
  ``from_pretrained(path, trust_remote_code=True)`` works where lightning-topo is not installed.

Writes go to a temporary sibling folder that is renamed into place; an existing ``path`` is only
replaced with ``overwrite=True``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from lightning_topo.pruning.importance import encoder_layers
from lightning_topo.pruning.structured import layer_widths

__all__ = ["register_auto_classes", "to_exportable", "save_compressed", "load_compressed"]

_REGISTERED: set[str] = set()


def register_auto_classes(*, config_only: bool = False) -> None:
    """Register ``pruned_bert`` with ``AutoConfig``/``AutoModel``/``AutoModelForSequenceClassification``.

    Idempotent. ``import lightning_topo`` arranges for this to run as soon as transformers' Auto
    classes are imported (see :mod:`lightning_topo.pruning._register`).
    """
    if "models" in _REGISTERED or (config_only and "config" in _REGISTERED):
        return
    from transformers.models.auto.configuration_auto import AutoConfig

    from lightning_topo.pruning.remote_code.pruned_bert import (
        PrunedBertConfig,
        PrunedBertForSequenceClassification,
        PrunedBertModel,
    )

    if "config" not in _REGISTERED:
        AutoConfig.register("pruned_bert", PrunedBertConfig, exist_ok=True)
        _REGISTERED.add("config")
    if config_only:
        return
    from transformers.models.auto.modeling_auto import AutoModel, AutoModelForSequenceClassification

    AutoModel.register(PrunedBertConfig, PrunedBertModel, exist_ok=True)
    AutoModelForSequenceClassification.register(
        PrunedBertConfig, PrunedBertForSequenceClassification, exist_ok=True
    )
    _REGISTERED.add("models")


def _is_uniform(model: nn.Module) -> bool:
    widths = layer_widths(model)
    full_heads = all(
        layer.attention.self.num_attention_heads * layer.attention.self.attention_head_size
        == layer.attention.self.query.in_features
        for layer in encoder_layers(model)
    )
    return len(set(widths["ffn"])) == 1 and full_heads


def to_exportable(model: nn.Module) -> nn.Module:
    """A model whose config describes its real shapes, ready for ``save_pretrained``.

    Uniform widths: ``model`` itself with ``config.intermediate_size`` set (extra per-layer keys
    dropped from the config). Otherwise a ``PrunedBertForSequenceClassification`` /
    ``PrunedBertModel`` holding ``model``'s weights.

    Raises:
        TypeError: not a BERT-family model, or per-layer widths on a model that is not BERT
            (``model_type`` other than ``bert``/``pruned_bert``) or not a sequence classifier / bare encoder.
    """
    layers = encoder_layers(model)
    config = model.config
    widths = layer_widths(model)
    if _is_uniform(model):
        for key in ("intermediate_sizes", "num_heads_per_layer"):
            if key in config.__dict__ and getattr(config, "model_type", "") != "pruned_bert":
                delattr(config, key)
        config.intermediate_size = widths["ffn"][0]
        return model
    model_type = getattr(config, "model_type", None)
    if model_type not in ("bert", "pruned_bert"):
        raise TypeError(
            f"per-layer widths can only be exported for BERT models (model_type 'bert'); got {model_type!r}. "
            "Prune to uniform widths (FFN only, the same width in every layer) to keep the stock config."
        )
    from transformers import BertForSequenceClassification, BertModel

    from lightning_topo.pruning.remote_code.pruned_bert import (
        PrunedBertConfig,
        PrunedBertForSequenceClassification,
        PrunedBertModel,
    )

    register_auto_classes()
    if isinstance(model, BertForSequenceClassification):
        cls: Any = PrunedBertForSequenceClassification
    elif isinstance(model, BertModel):
        cls = PrunedBertModel
    else:
        raise TypeError(
            f"per-layer widths can be exported for BertForSequenceClassification or BertModel; got {type(model).__name__}"
        )
    cfg = config.to_dict()
    for key in (
        "model_type",
        "architectures",
        "auto_map",
        "transformers_version",
        "intermediate_sizes",
        "num_heads_per_layer",
    ):
        cfg.pop(key, None)
    head_size = layers[0].attention.self.attention_head_size
    cfg["num_attention_heads"] = layers[0].attention.self.query.in_features // head_size
    new_config = PrunedBertConfig(
        **cfg, intermediate_sizes=widths["ffn"], num_heads_per_layer=widths["heads"]
    )
    new = cls(new_config)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    real_missing = [k for k in missing if not k.endswith("position_ids") and not k.endswith("token_type_ids")]
    if real_missing or unexpected:
        raise RuntimeError(
            f"could not move weights into {cls.__name__}: missing {real_missing}, unexpected {unexpected}"
        )
    cls.register_for_auto_class(
        "AutoModelForSequenceClassification" if cls is PrunedBertForSequenceClassification else "AutoModel"
    )
    PrunedBertConfig.register_for_auto_class()
    return new.to(next(model.parameters()).device).train(model.training)


def save_compressed(
    model: nn.Module,
    path: str | Path,
    *,
    tokenizer: Any = None,
    overwrite: bool = False,
) -> Path:
    """Save a pruned model as a Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer).

    Args:
        model: a (pruned) BERT-family Hugging Face model; not modified except that its config's
            ``intermediate_size`` is synchronised when widths are uniform.
        path: target folder.
        tokenizer: saved alongside when given.
        overwrite: replace an existing ``path`` (default ``False``: raise ``FileExistsError``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    export = to_exportable(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        export.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            old.rmdir()
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_compressed(path: str | Path, **kwargs: Any) -> nn.Module:
    """Load a folder written by :func:`save_compressed` (either flavour) as a sequence classifier.

    ``kwargs`` go to ``AutoModelForSequenceClassification.from_pretrained``.
    """
    register_auto_classes()
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
