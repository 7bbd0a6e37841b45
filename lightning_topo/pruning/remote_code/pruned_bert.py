"""BERT and RoBERTa with per-layer FFN widths and per-layer attention-head counts.

This file is self-contained (it imports only ``torch``, ``transformers`` and ``huggingface_hub``,
which ships with ``transformers``): :func:`lightning_topo.pruning.save_compressed` copies it into
every checkpoint whose layers differ in width or lost heads, so the folder loads with

    AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)

where lightning-topo is not installed. With lightning-topo imported, the same classes are
registered with the Auto classes and ``trust_remote_code`` is not needed.

Layer ``i`` has ``intermediate_sizes[i]`` FFN units and ``num_heads_per_layer[i]`` attention heads
of the unchanged head size ``hidden_size // num_attention_heads`` (``num_attention_heads`` keeps
the original head count so that the head size stays defined). Everything else is stock BERT
(``model_type="pruned_bert"``) or stock RoBERTa (``model_type="pruned_roberta"``).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import BertConfig, RobertaConfig
from transformers.models.bert.modeling_bert import BertForSequenceClassification, BertModel
from transformers.models.roberta.modeling_roberta import RobertaForSequenceClassification, RobertaModel

__all__ = [
    "PrunedBertConfig",
    "PrunedBertModel",
    "PrunedBertForSequenceClassification",
    "PrunedRobertaConfig",
    "PrunedRobertaModel",
    "PrunedRobertaForSequenceClassification",
]


def _fill_and_check_widths(config) -> None:
    """Default per-layer widths to the uniform ones and check there is one positive width per layer."""
    n = config.num_hidden_layers
    if config.intermediate_sizes is None:
        config.intermediate_sizes = [config.intermediate_size] * n
    if config.num_heads_per_layer is None:
        config.num_heads_per_layer = [config.num_attention_heads] * n
    config.intermediate_sizes = [int(v) for v in config.intermediate_sizes]
    config.num_heads_per_layer = [int(v) for v in config.num_heads_per_layer]
    if len(config.intermediate_sizes) != n or len(config.num_heads_per_layer) != n:
        raise ValueError(
            f"intermediate_sizes and num_heads_per_layer need num_hidden_layers={n} entries; got "
            f"{len(config.intermediate_sizes)} and {len(config.num_heads_per_layer)}"
        )
    if min(config.intermediate_sizes) < 1 or min(config.num_heads_per_layer) < 1:
        raise ValueError("every layer needs at least 1 FFN unit and 1 attention head")


@strict
class PrunedBertConfig(BertConfig):
    """A :class:`~transformers.BertConfig` with per-layer widths.

    Args (in addition to BertConfig's):
        intermediate_sizes: ``num_hidden_layers`` FFN widths; default ``intermediate_size`` each.
        num_heads_per_layer: ``num_hidden_layers`` head counts (each ``>= 1``); default
            ``num_attention_heads`` each. The head size is ``hidden_size // num_attention_heads``.
    """

    model_type = "pruned_bert"

    intermediate_sizes: list[int] | None = None
    num_heads_per_layer: list[int] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _fill_and_check_widths(self)


@strict
class PrunedRobertaConfig(RobertaConfig):
    """A :class:`~transformers.RobertaConfig` with per-layer widths (same extra fields as
    :class:`PrunedBertConfig`)."""

    model_type = "pruned_roberta"

    intermediate_sizes: list[int] | None = None
    num_heads_per_layer: list[int] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _fill_and_check_widths(self)


def _resize_encoder(bert: nn.Module, config) -> None:
    """Give every encoder layer of ``bert`` (a BertModel or RobertaModel) the widths in ``config``."""
    hidden = config.hidden_size
    head_size = hidden // config.num_attention_heads
    for layer, width, heads in zip(
        bert.encoder.layer, config.intermediate_sizes, config.num_heads_per_layer, strict=True
    ):
        if width != layer.intermediate.dense.out_features:
            layer.intermediate.dense = nn.Linear(hidden, width)
            layer.output.dense = nn.Linear(width, hidden)
        attn = layer.attention.self
        if heads != attn.num_attention_heads:
            size = heads * head_size
            attn.query = nn.Linear(hidden, size)
            attn.key = nn.Linear(hidden, size)
            attn.value = nn.Linear(hidden, size)
            attn.num_attention_heads = heads
            attn.all_head_size = size
            layer.attention.output.dense = nn.Linear(size, hidden)


class PrunedBertModel(BertModel):
    """:class:`~transformers.BertModel` whose layers follow ``config.intermediate_sizes`` and
    ``config.num_heads_per_layer``."""

    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        _resize_encoder(self, config)
        self.post_init()


class PrunedBertForSequenceClassification(BertForSequenceClassification):
    """:class:`~transformers.BertForSequenceClassification` over a :class:`PrunedBertModel`."""

    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig):
        super().__init__(config)
        _resize_encoder(self.bert, config)
        self.post_init()


class PrunedRobertaModel(RobertaModel):
    """:class:`~transformers.RobertaModel` whose layers follow ``config.intermediate_sizes`` and
    ``config.num_heads_per_layer``."""

    config_class = PrunedRobertaConfig

    def __init__(self, config: PrunedRobertaConfig, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        _resize_encoder(self, config)
        self.post_init()


class PrunedRobertaForSequenceClassification(RobertaForSequenceClassification):
    """:class:`~transformers.RobertaForSequenceClassification` over a :class:`PrunedRobertaModel`."""

    config_class = PrunedRobertaConfig

    def __init__(self, config: PrunedRobertaConfig):
        super().__init__(config)
        _resize_encoder(self.roberta, config)
        self.post_init()
