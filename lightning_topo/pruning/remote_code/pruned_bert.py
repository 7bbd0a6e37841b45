"""BERT with per-layer FFN widths and per-layer attention-head counts.

This file is self-contained (it imports only ``torch``, ``transformers`` and ``huggingface_hub``,
which ships with ``transformers``): :func:`lightning_topo.pruning.save_compressed` copies it into
every checkpoint whose layers differ in width or lost heads, so the folder loads with

    AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)

where lightning-topo is not installed. With lightning-topo imported, the same classes are
registered with the Auto classes and ``trust_remote_code`` is not needed.

Layer ``i`` has ``intermediate_sizes[i]`` FFN units and ``num_heads_per_layer[i]`` attention heads
of the unchanged head size ``hidden_size // num_attention_heads`` (``num_attention_heads`` keeps
the original head count so that the head size stays defined). Everything else is stock BERT.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertForSequenceClassification, BertModel

__all__ = ["PrunedBertConfig", "PrunedBertModel", "PrunedBertForSequenceClassification"]


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
        n = self.num_hidden_layers
        if self.intermediate_sizes is None:
            self.intermediate_sizes = [self.intermediate_size] * n
        if self.num_heads_per_layer is None:
            self.num_heads_per_layer = [self.num_attention_heads] * n
        self.intermediate_sizes = [int(v) for v in self.intermediate_sizes]
        self.num_heads_per_layer = [int(v) for v in self.num_heads_per_layer]
        if len(self.intermediate_sizes) != n or len(self.num_heads_per_layer) != n:
            raise ValueError(
                f"intermediate_sizes and num_heads_per_layer need num_hidden_layers={n} entries; got "
                f"{len(self.intermediate_sizes)} and {len(self.num_heads_per_layer)}"
            )
        if min(self.intermediate_sizes) < 1 or min(self.num_heads_per_layer) < 1:
            raise ValueError("every layer needs at least 1 FFN unit and 1 attention head")


def _resize_encoder(bert: BertModel, config: PrunedBertConfig) -> None:
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
