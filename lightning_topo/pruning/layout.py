"""Where the prunable units of a BERT-family encoder live: the one place that knows the module names.

Every encoder layer ``base_model.encoder.layer[i]`` of BERT, RoBERTa and their pruned variants has

* attention heads: ``attention.self.{query,key,value}`` (``nn.Linear``; head ``h`` owns rows
  ``h*d .. (h+1)*d - 1``, with ``d = attention.self.attention_head_size``) and
  ``attention.output.dense`` (head ``h`` owns the same columns);
* FFN units: ``intermediate.dense`` (unit ``j`` owns row ``j`` and bias ``j``; the module
  ``intermediate`` returns the units' outputs after the activation) and ``output.dense`` (unit ``j``
  owns column ``j``).

Importance (which tensors to read), surgery (which to shrink) and export (which config to write)
all go through these functions, so supporting another layout means changing this file only.
"""

from __future__ import annotations

from torch import nn

__all__ = [
    "EXPORT_FAMILIES",
    "encoder_layers",
    "check_supported",
    "self_attention",
    "head_projections",
    "attention_output",
    "ffn_activation",
    "ffn_input",
    "ffn_output",
    "num_heads",
    "head_size",
    "hidden_size",
    "layer_widths",
    "replace_ffn",
    "replace_heads",
]

#: ``config.model_type`` values whose pruned models can be exported, mapped to their family.
EXPORT_FAMILIES: dict[str, str] = {
    "bert": "bert",
    "pruned_bert": "bert",
    "roberta": "roberta",
    "pruned_roberta": "roberta",
}
_SUPPORTED_CLASSES = (
    "BertForSequenceClassification, BertModel, RobertaForSequenceClassification, RobertaModel "
    "(and checkpoints saved from them by save_compressed)"
)


def self_attention(layer: nn.Module) -> nn.Module:
    """The self-attention module (holds ``num_attention_heads``, ``attention_head_size``, ``all_head_size``)."""
    return layer.attention.self


def head_projections(layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """The query, key and value projections; each head owns ``head_size`` consecutive output rows."""
    attn = layer.attention.self
    return attn.query, attn.key, attn.value


def attention_output(layer: nn.Module) -> nn.Linear:
    """The projection after attention; each head owns ``head_size`` consecutive input columns."""
    return layer.attention.output.dense


def ffn_activation(layer: nn.Module) -> nn.Module:
    """The module whose output is the FFN units' values after the activation, ``(..., width)``."""
    return layer.intermediate


def ffn_input(layer: nn.Module) -> nn.Linear:
    """The FFN's first projection; unit ``j`` owns output row ``j``."""
    return layer.intermediate.dense


def ffn_output(layer: nn.Module) -> nn.Linear:
    """The FFN's second projection; unit ``j`` owns input column ``j``."""
    return layer.output.dense


def num_heads(layer: nn.Module) -> int:
    """Number of attention heads the layer has now."""
    return int(layer.attention.self.num_attention_heads)


def head_size(layer: nn.Module) -> int:
    """Width of one head (unchanged by pruning)."""
    return int(layer.attention.self.attention_head_size)


def hidden_size(layer: nn.Module) -> int:
    """Width of the residual stream."""
    return int(layer.attention.self.query.in_features)


def _layer_problem(layer: nn.Module) -> str | None:
    try:
        linears = [*head_projections(layer), attention_output(layer), ffn_input(layer), ffn_output(layer)]
        num_heads(layer), head_size(layer)  # noqa: B018
        ffn_activation(layer)
    except AttributeError as err:
        return f"lacks {err}"
    if not all(isinstance(m, nn.Linear) for m in linears):
        return "has non-Linear projections"
    return None


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``encoder.layer`` list of a BERT-family model (BERT, RoBERTa, ELECTRA, MiniLM, ...).

    Raises:
        TypeError: if the model has no ``encoder.layer`` whose layers have the linear layers listed
            in this module's docstring.
    """
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    problem = None
    if layers is None or len(layers) == 0:
        problem = "it has no encoder.layer list"
    else:
        for i, layer in enumerate(layers):
            if (why := _layer_problem(layer)) is not None:
                problem = f"layer {i} {why}"
                break
    if problem is not None:
        raise TypeError(
            f"structured pruning needs a BERT-family model (encoder.layer[i].attention.self.query/key/value, "
            f"attention.output.dense, intermediate.dense, output.dense); {type(model).__name__}: {problem}"
        )
    return layers


def _model_family(model: nn.Module) -> str | None:
    """``"bert"`` or ``"roberta"`` for a model whose pruned form can be exported, else ``None``."""
    return EXPORT_FAMILIES.get(getattr(getattr(model, "config", None), "model_type", None))  # type: ignore[arg-type]


def check_supported(model: nn.Module) -> str:
    """Refuse, before anything is changed, a model whose pruned form :func:`save_compressed` cannot write.

    Supported: the BERT and RoBERTa families as a sequence classifier (``*ForSequenceClassification``)
    or a bare encoder (``*Model``), including checkpoints written by ``save_compressed``.

    Returns:
        The family, ``"bert"`` or ``"roberta"``.

    Raises:
        TypeError: naming the model's class and the supported classes.
    """
    encoder_layers(model)
    family = _model_family(model)
    base = getattr(model, "base_model", None)
    is_classifier = type(model).__name__.endswith("ForSequenceClassification")
    is_bare = base is model and type(model).__name__.endswith("Model")
    if family is None or not (is_classifier or is_bare):
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise TypeError(
            f"pruning with a compressed checkpoint supports {_SUPPORTED_CLASSES}; got "
            f"{type(model).__name__} (model_type {model_type!r}). Convert the model to one of these classes."
        )
    return family


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """Current ``{"ffn": [intermediate size per layer], "heads": [heads per layer]}``."""
    layers = encoder_layers(model)
    return {
        "ffn": [ffn_input(layer).out_features for layer in layers],
        "heads": [num_heads(layer) for layer in layers],
    }


def replace_ffn(layer: nn.Module, new_input: nn.Linear, new_output: nn.Linear) -> None:
    """Install the FFN projections of a narrower (or restored) FFN."""
    layer.intermediate.dense = new_input
    layer.output.dense = new_output


def replace_heads(
    layer: nn.Module, projections: tuple[nn.Linear, nn.Linear, nn.Linear], output: nn.Linear, heads: int
) -> None:
    """Install query/key/value/output projections for ``heads`` heads and update the head counts."""
    attn = layer.attention.self
    attn.query, attn.key, attn.value = projections
    layer.attention.output.dense = output
    attn.num_attention_heads = int(heads)
    attn.all_head_size = int(heads) * int(attn.attention_head_size)
