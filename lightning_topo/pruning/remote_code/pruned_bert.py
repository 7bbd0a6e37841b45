"""BERT-family encoders (BERT, RoBERTa, ELECTRA, DistilBERT, DeBERTa-v2/v3) with per-layer FFN widths
and per-layer attention-head counts.

This file is self-contained (it imports only ``torch``, ``transformers`` and ``huggingface_hub``,
which ships with ``transformers``): :func:`lightning_topo.pruning.save_compressed` copies it into
every checkpoint whose layers differ in width or lost heads, so the folder loads with

    AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)

where lightning-topo is not installed. With lightning-topo imported, the same classes are
registered with the Auto classes and the folder's copy of this file is never imported.

Each class is the stock architecture of its family, built from the stock config (the original head
count, so the head size stays defined), then shrunk: layer ``i`` gets ``intermediate_sizes[i]`` FFN
units and ``num_heads_per_layer[i]`` heads. Which modules to shrink is read from the config's
``pruned_layout`` (dotted paths written by ``lightning_topo.pruning.layout``); this file knows no
module names except the BERT/RoBERTa layout of checkpoints written before ``pruned_layout`` existed.
"""

from __future__ import annotations

import re

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import BertConfig, DebertaV2Config, DistilBertConfig, ElectraConfig, RobertaConfig
from transformers.models.bert.modeling_bert import BertForSequenceClassification, BertModel
from transformers.models.deberta_v2.modeling_deberta_v2 import (
    DebertaV2ForSequenceClassification,
    DebertaV2Model,
)
from transformers.models.distilbert.modeling_distilbert import (
    DistilBertForSequenceClassification,
    DistilBertModel,
)
from transformers.models.electra.modeling_electra import ElectraForSequenceClassification, ElectraModel
from transformers.models.roberta.modeling_roberta import RobertaForSequenceClassification, RobertaModel

__all__ = [
    "LEGACY_BERT_LAYOUT",
    "PrunedBertConfig",
    "PrunedBertModel",
    "PrunedBertForSequenceClassification",
    "PrunedRobertaConfig",
    "PrunedRobertaModel",
    "PrunedRobertaForSequenceClassification",
    "PrunedElectraConfig",
    "PrunedElectraModel",
    "PrunedElectraForSequenceClassification",
    "PrunedDistilBertConfig",
    "PrunedDistilBertModel",
    "PrunedDistilBertForSequenceClassification",
    "PrunedDebertaV2Config",
    "PrunedDebertaV2Model",
    "PrunedDebertaV2ForSequenceClassification",
]

#: The layout of ``pruned_bert``/``pruned_roberta`` checkpoints whose config has no ``pruned_layout``.
LEGACY_BERT_LAYOUT = {
    "layers": "encoder.layer",
    "head_rows": ["attention.self.query", "attention.self.key", "attention.self.value"],
    "head_cols": ["attention.output.dense"],
    "ffn_rows": ["intermediate.dense"],
    "ffn_cols": ["output.dense"],
    "head_count": ["attention.self.num_attention_heads"],
    "head_total": ["attention.self.all_head_size"],
    "config_ffn": "intermediate_size",
    "config_heads": "num_attention_heads",
}
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_LIST_KEYS = ("head_rows", "head_cols", "ffn_rows", "ffn_cols", "head_count", "head_total")


def _layout(config) -> dict:
    """The config's ``pruned_layout`` after checking its keys and that every entry is a dotted name."""
    spec = config.pruned_layout
    if spec is None:
        if config.model_type in ("pruned_bert", "pruned_roberta"):
            return LEGACY_BERT_LAYOUT
        raise ValueError(f"a {config.model_type} config needs pruned_layout (written by save_compressed)")
    if not isinstance(spec, dict) or set(spec) != set(LEGACY_BERT_LAYOUT):
        raise ValueError(f"pruned_layout must have the keys {sorted(LEGACY_BERT_LAYOUT)}; got {spec!r}")
    names = [spec["layers"], spec["config_ffn"], spec["config_heads"]]
    for key in _LIST_KEYS:
        if not isinstance(spec[key], list):
            raise ValueError(f"pruned_layout[{key!r}] must be a list of dotted names; got {spec[key]!r}")
        names += spec[key]
    if not spec["head_rows"] or not spec["head_count"]:
        raise ValueError("pruned_layout needs head_rows and head_count entries")
    bad = [n for n in names if not isinstance(n, str) or not _PATH.fullmatch(n)]
    if bad:
        raise ValueError(f"pruned_layout entries must be dotted Python names; got {bad}")
    return spec


def _fill_and_check_widths(config) -> None:
    """Default per-layer widths to the uniform ones and check there is one positive width per layer."""
    spec = _layout(config)
    n = config.num_hidden_layers
    if config.intermediate_sizes is None:
        config.intermediate_sizes = [getattr(config, spec["config_ffn"])] * n
    if config.num_heads_per_layer is None:
        config.num_heads_per_layer = [getattr(config, spec["config_heads"])] * n
    config.intermediate_sizes = [int(v) for v in config.intermediate_sizes]
    config.num_heads_per_layer = [int(v) for v in config.num_heads_per_layer]
    if len(config.intermediate_sizes) != n or len(config.num_heads_per_layer) != n:
        raise ValueError(
            f"intermediate_sizes and num_heads_per_layer need num_hidden_layers={n} entries; got "
            f"{len(config.intermediate_sizes)} and {len(config.num_heads_per_layer)}"
        )
    if min(config.intermediate_sizes) < 1 or min(config.num_heads_per_layer) < 1:
        raise ValueError("every layer needs at least 1 FFN unit and 1 attention head")


def _get(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _find(root, path: str):
    try:
        return _get(root, path)
    except AttributeError:
        return None


def _set(root, path: str, value) -> None:
    owner, _, name = path.rpartition(".")
    setattr(_get(root, owner) if owner else root, name, value)


def _resized(old: nn.Linear, *, rows: int | None = None, cols: int | None = None) -> nn.Linear:
    return nn.Linear(
        old.in_features if cols is None else cols,
        old.out_features if rows is None else rows,
        bias=old.bias is not None,
    )


def _shrink_encoder(model: nn.Module, config) -> None:
    """Give every encoder layer of ``model`` the widths in ``config`` (weights are loaded afterwards)."""
    spec = _layout(config)
    layers = _get(model.base_model, spec["layers"])
    for layer, width, heads in zip(
        layers, config.intermediate_sizes, config.num_heads_per_layer, strict=True
    ):
        if width != _get(layer, spec["ffn_rows"][0]).out_features:
            for path in spec["ffn_rows"]:
                _set(layer, path, _resized(_get(layer, path), rows=width))
            for path in spec["ffn_cols"]:
                _set(layer, path, _resized(_get(layer, path), cols=width))
        old_heads = int(_get(layer, spec["head_count"][0]))
        if heads != old_heads:
            size = heads * (_get(layer, spec["head_rows"][0]).out_features // old_heads)
            for path in spec["head_rows"]:
                if isinstance(
                    old := _find(layer, path), nn.Linear
                ):  # e.g. DeBERTa's pos_key_proj, when present
                    _set(layer, path, _resized(old, rows=size))
            for path in spec["head_cols"]:
                _set(layer, path, _resized(_get(layer, path), cols=size))
            for path in spec["head_count"]:
                _set(layer, path, heads)
            for path in spec["head_total"]:
                _set(layer, path, size)


@strict
class PrunedBertConfig(BertConfig):
    """A :class:`~transformers.BertConfig` with per-layer widths.

    Args (in addition to BertConfig's):
        intermediate_sizes: ``num_hidden_layers`` FFN widths; default ``intermediate_size`` each.
        num_heads_per_layer: ``num_hidden_layers`` head counts (each ``>= 1``); default
            ``num_attention_heads`` each. The head size is ``hidden_size // num_attention_heads``.
        pruned_layout: the modules to shrink (dotted paths); default: BERT's.
    """

    model_type = "pruned_bert"

    intermediate_sizes: list[int] | None = None
    num_heads_per_layer: list[int] | None = None
    pruned_layout: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _fill_and_check_widths(self)


@strict
class PrunedRobertaConfig(RobertaConfig):
    """A :class:`~transformers.RobertaConfig` with per-layer widths (fields of :class:`PrunedBertConfig`)."""

    model_type = "pruned_roberta"

    intermediate_sizes: list[int] | None = None
    num_heads_per_layer: list[int] | None = None
    pruned_layout: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _fill_and_check_widths(self)


@strict
class PrunedElectraConfig(ElectraConfig):
    """An :class:`~transformers.ElectraConfig` with per-layer widths (fields of :class:`PrunedBertConfig`)."""

    model_type = "pruned_electra"

    intermediate_sizes: list[int] | None = None
    num_heads_per_layer: list[int] | None = None
    pruned_layout: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _fill_and_check_widths(self)


@strict
class PrunedDistilBertConfig(DistilBertConfig):
    """A :class:`~transformers.DistilBertConfig` with per-layer widths (``intermediate_sizes``
    default to ``hidden_dim``, ``num_heads_per_layer`` to ``n_heads``)."""

    model_type = "pruned_distilbert"

    intermediate_sizes: list[int] | None = None
    num_heads_per_layer: list[int] | None = None
    pruned_layout: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _fill_and_check_widths(self)


@strict
class PrunedDebertaV2Config(DebertaV2Config):
    """A :class:`~transformers.DebertaV2Config` (DeBERTa-v2 and v3) with per-layer widths; the
    relative-position projections of a layer keep the heads its query/key keep."""

    model_type = "pruned_deberta-v2"

    intermediate_sizes: list[int] | None = None
    num_heads_per_layer: list[int] | None = None
    pruned_layout: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _fill_and_check_widths(self)


class PrunedBertModel(BertModel):
    """:class:`~transformers.BertModel` whose layers follow the config's per-layer widths."""

    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        _shrink_encoder(self, config)
        self.post_init()


class PrunedBertForSequenceClassification(BertForSequenceClassification):
    """:class:`~transformers.BertForSequenceClassification` over a pruned encoder."""

    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig):
        super().__init__(config)
        _shrink_encoder(self, config)
        self.post_init()


class PrunedRobertaModel(RobertaModel):
    """:class:`~transformers.RobertaModel` whose layers follow the config's per-layer widths."""

    config_class = PrunedRobertaConfig

    def __init__(self, config: PrunedRobertaConfig, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        _shrink_encoder(self, config)
        self.post_init()


class PrunedRobertaForSequenceClassification(RobertaForSequenceClassification):
    """:class:`~transformers.RobertaForSequenceClassification` over a pruned encoder."""

    config_class = PrunedRobertaConfig

    def __init__(self, config: PrunedRobertaConfig):
        super().__init__(config)
        _shrink_encoder(self, config)
        self.post_init()


class PrunedElectraModel(ElectraModel):
    """:class:`~transformers.ElectraModel` whose layers follow the config's per-layer widths."""

    config_class = PrunedElectraConfig

    def __init__(self, config: PrunedElectraConfig):
        super().__init__(config)
        _shrink_encoder(self, config)
        self.post_init()


class PrunedElectraForSequenceClassification(ElectraForSequenceClassification):
    """:class:`~transformers.ElectraForSequenceClassification` over a pruned encoder."""

    config_class = PrunedElectraConfig

    def __init__(self, config: PrunedElectraConfig):
        super().__init__(config)
        _shrink_encoder(self, config)
        self.post_init()


class PrunedDistilBertModel(DistilBertModel):
    """:class:`~transformers.DistilBertModel` whose layers follow the config's per-layer widths."""

    config_class = PrunedDistilBertConfig

    def __init__(self, config: PrunedDistilBertConfig):
        super().__init__(config)
        _shrink_encoder(self, config)
        self.post_init()


class PrunedDistilBertForSequenceClassification(DistilBertForSequenceClassification):
    """:class:`~transformers.DistilBertForSequenceClassification` over a pruned encoder."""

    config_class = PrunedDistilBertConfig

    def __init__(self, config: PrunedDistilBertConfig):
        super().__init__(config)
        _shrink_encoder(self, config)
        self.post_init()


class PrunedDebertaV2Model(DebertaV2Model):
    """:class:`~transformers.DebertaV2Model` whose layers follow the config's per-layer widths."""

    config_class = PrunedDebertaV2Config

    def __init__(self, config: PrunedDebertaV2Config):
        super().__init__(config)
        _shrink_encoder(self, config)
        self.post_init()


class PrunedDebertaV2ForSequenceClassification(DebertaV2ForSequenceClassification):
    """:class:`~transformers.DebertaV2ForSequenceClassification` over a pruned encoder."""

    config_class = PrunedDebertaV2Config

    def __init__(self, config: PrunedDebertaV2Config):
        super().__init__(config)
        _shrink_encoder(self, config)
        self.post_init()
