"""Where the prunable units of a BERT-family encoder live: the one place that knows the module names.

One adapter per family (:data:`FAMILIES`) names, relative to one encoder layer, the ``nn.Linear``
modules that belong to each unit and the integer attributes that hold the head count:

========================  =============================  ==========================================
family (``model_type``)   layers (under ``base_model``)  heads / FFN of one layer
========================  =============================  ==========================================
BERT, RoBERTa, ELECTRA    ``encoder.layer``              ``attention.self.{query,key,value}``,
                                                         ``attention.output.dense``;
                                                         ``intermediate.dense``, ``output.dense``
DistilBERT                ``transformer.layer``          ``attention.{q_lin,k_lin,v_lin}``,
                                                         ``attention.out_lin``; ``ffn.lin1/lin2``
DeBERTa-v2/v3             ``encoder.layer``              ``attention.self.{query,key,value}_proj``
                                                         (+ ``pos_key_proj``/``pos_query_proj``
                                                         when ``share_att_key`` is false),
                                                         ``attention.output.dense``;
                                                         ``intermediate.dense``, ``output.dense``
========================  =============================  ==========================================

Head ``h`` owns rows ``h*d .. (h+1)*d - 1`` of every head-row projection (query, key, value and
DeBERTa's relative-position projections, so the disentangled attention of a kept head is unchanged)
and the same columns of the attention output projection, with ``d`` the head size. FFN unit ``j``
owns row ``j`` (and bias ``j``) of the FFN input projection and column ``j`` of its output
projection. The units' values are what enters the output projections: a head's context vector, an
FFN unit's value after the activation.

Importance (which tensors to read), surgery (which to shrink) and export (which config to write and
which layout spec the compressed checkpoint carries, :meth:`Family.spec`) all go through this
module, so supporting another layout means adding one :class:`Family` here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = [
    "FAMILIES",
    "EXPORT_FAMILIES",
    "Family",
    "LayerLayout",
    "supported_families_line",
    "family_of",
    "family_by_name",
    "encoder_layers",
    "check_supported",
    "head_projections",
    "head_row_projections",
    "attention_output",
    "ffn_input",
    "ffn_output",
    "num_heads",
    "head_size",
    "hidden_size",
    "layer_widths",
    "replace_ffn",
    "replace_heads",
    "record_widths",
]


@dataclass(frozen=True)
class LayerLayout:
    """Dotted paths inside one encoder layer.

    Attributes:
        query, key, value: the head-row projections every layer has.
        attention_output: the projection after attention (heads own its input columns).
        ffn_input, ffn_output: the FFN projections (units own rows of the first, columns of the second).
        extra_head_rows: head-row projections a layer has only under some configs (DeBERTa's
            ``pos_key_proj``/``pos_query_proj``); absent ones are skipped.
        head_count: integer attributes that hold the layer's number of heads.
        head_total: integer attributes that hold ``heads * head_size``.
    """

    query: str
    key: str
    value: str
    attention_output: str
    ffn_input: str
    ffn_output: str
    head_count: tuple[str, ...]
    head_total: tuple[str, ...] = ()
    extra_head_rows: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    """One model family: its ``model_type`` values, where its layers live and its config keys.

    Attributes:
        name: the family (``"bert"``, ``"distilbert"``, ...), also its stock ``model_type``.
        label: the name users know (``"DeBERTa-v2/v3"``).
        model_types: stock ``model_type`` values of the family.
        pruned_model_type: ``model_type`` of its per-layer compressed checkpoints.
        layers: path of the layer list under ``model.base_model``.
        layer: the :class:`LayerLayout` of every layer.
        config_ffn, config_heads: the config keys of the FFN width and of the head count.
    """

    name: str
    label: str
    model_types: tuple[str, ...]
    pruned_model_type: str
    layers: str
    layer: LayerLayout
    config_ffn: str = "intermediate_size"
    config_heads: str = "num_attention_heads"

    def spec(self) -> dict[str, object]:
        """The JSON layout spec a compressed checkpoint's config carries (``pruned_layout``), read by the
        self-contained model code in the folder to rebuild the pruned shapes."""
        lay = self.layer
        return {
            "layers": self.layers,
            "head_rows": [lay.query, lay.key, lay.value, *lay.extra_head_rows],
            "head_cols": [lay.attention_output],
            "ffn_rows": [lay.ffn_input],
            "ffn_cols": [lay.ffn_output],
            "head_count": list(lay.head_count),
            "head_total": list(lay.head_total),
            "config_ffn": self.config_ffn,
            "config_heads": self.config_heads,
        }


_BERT_LAYER = LayerLayout(
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    attention_output="attention.output.dense",
    ffn_input="intermediate.dense",
    ffn_output="output.dense",
    head_count=("attention.self.num_attention_heads",),
    head_total=("attention.self.all_head_size",),
)
_DISTILBERT_LAYER = LayerLayout(
    query="attention.q_lin",
    key="attention.k_lin",
    value="attention.v_lin",
    attention_output="attention.out_lin",
    ffn_input="ffn.lin1",
    ffn_output="ffn.lin2",
    head_count=("attention.n_heads",),
)
_DEBERTA_LAYER = LayerLayout(
    query="attention.self.query_proj",
    key="attention.self.key_proj",
    value="attention.self.value_proj",
    attention_output="attention.output.dense",
    ffn_input="intermediate.dense",
    ffn_output="output.dense",
    head_count=("attention.self.num_attention_heads",),
    head_total=("attention.self.all_head_size",),
    extra_head_rows=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
)

#: The supported families, by name.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("bert", "BERT", ("bert",), "pruned_bert", "encoder.layer", _BERT_LAYER),
        Family("roberta", "RoBERTa", ("roberta",), "pruned_roberta", "encoder.layer", _BERT_LAYER),
        Family("electra", "ELECTRA", ("electra",), "pruned_electra", "encoder.layer", _BERT_LAYER),
        Family(
            "distilbert",
            "DistilBERT",
            ("distilbert",),
            "pruned_distilbert",
            "transformer.layer",
            _DISTILBERT_LAYER,
            config_ffn="hidden_dim",
            config_heads="n_heads",
        ),
        Family(
            "deberta-v2",
            "DeBERTa-v2/v3",
            ("deberta-v2",),
            "pruned_deberta-v2",
            "encoder.layer",
            _DEBERTA_LAYER,
        ),
    )
}
#: ``config.model_type`` values (stock and pruned) whose pruned models can be exported -> family name.
EXPORT_FAMILIES: dict[str, str] = {
    t: f.name for f in FAMILIES.values() for t in (*f.model_types, f.pruned_model_type)
}
_LAYER_LAYOUTS = tuple(dict.fromkeys(f.layer for f in FAMILIES.values()))
_LAYERS_PATHS = tuple(dict.fromkeys(f.layers for f in FAMILIES.values()))


def supported_families_line() -> str:
    """One line naming the supported families, their ``model_type`` and classes."""
    names = ", ".join(f"{f.label} ({'/'.join(f.model_types)})" for f in FAMILIES.values())
    return (
        f"structured pruning supports these BERT-family models: {names}, as *ForSequenceClassification or the bare *Model "
        "(and checkpoints saved from them by save_compressed)"
    )


def _get(root: nn.Module, path: str) -> object:
    obj: object = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set(root: nn.Module, path: str, value: object) -> None:
    owner, _, name = path.rpartition(".")
    setattr(_get(root, owner) if owner else root, name, value)


def _has_linear(layer: nn.Module, path: str) -> bool:
    try:
        return isinstance(_get(layer, path), nn.Linear)
    except AttributeError:
        return False


_LAYOUT_CACHE: dict[type, LayerLayout | None] = {}


def _layer_layout(layer: nn.Module) -> LayerLayout:
    """The :class:`LayerLayout` ``layer`` follows (detected from its modules, cached per class)."""
    cls = type(layer)
    if cls not in _LAYOUT_CACHE:
        found = None
        for lay in _LAYER_LAYOUTS:
            paths = (lay.query, lay.key, lay.value, lay.attention_output, lay.ffn_input, lay.ffn_output)
            if all(_has_linear(layer, p) for p in paths):
                try:
                    int(_get(layer, lay.head_count[0]))  # type: ignore[call-overload]
                except (AttributeError, TypeError, ValueError):
                    continue
                found = lay
                break
        _LAYOUT_CACHE[cls] = found
    found = _LAYOUT_CACHE[cls]
    if found is None:
        raise TypeError(
            f"{supported_families_line()}; an encoder layer of class {cls.__name__} has another layout"
        )
    return found


def head_projections(layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """The query, key and value projections; each head owns ``head_size`` consecutive output rows."""
    lay = _layer_layout(layer)
    return _get(layer, lay.query), _get(layer, lay.key), _get(layer, lay.value)  # type: ignore[return-value]


def head_row_projections(layer: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every projection whose output rows belong to heads, with its path: query, key, value, and the
    relative-position projections of DeBERTa when the layer has them (``share_att_key=False``)."""
    lay = _layer_layout(layer)
    paths = (lay.query, lay.key, lay.value) + tuple(p for p in lay.extra_head_rows if _has_linear(layer, p))
    return [(p, _get(layer, p)) for p in paths]  # type: ignore[misc]


def attention_output(layer: nn.Module) -> nn.Linear:
    """The projection after attention; each head owns ``head_size`` consecutive input columns."""
    return _get(layer, _layer_layout(layer).attention_output)  # type: ignore[return-value]


def ffn_input(layer: nn.Module) -> nn.Linear:
    """The FFN's first projection; unit ``j`` owns output row ``j``."""
    return _get(layer, _layer_layout(layer).ffn_input)  # type: ignore[return-value]


def ffn_output(layer: nn.Module) -> nn.Linear:
    """The FFN's second projection; unit ``j`` owns input column ``j`` (its input = the units' values)."""
    return _get(layer, _layer_layout(layer).ffn_output)  # type: ignore[return-value]


def num_heads(layer: nn.Module) -> int:
    """Number of attention heads the layer has now."""
    return int(_get(layer, _layer_layout(layer).head_count[0]))  # type: ignore[call-overload]


def head_size(layer: nn.Module) -> int:
    """Width of one head (unchanged by pruning)."""
    return head_projections(layer)[0].out_features // num_heads(layer)


def hidden_size(layer: nn.Module) -> int:
    """Width of the residual stream."""
    return int(head_projections(layer)[0].in_features)


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder layer list of a supported family (``base_model.encoder.layer`` or, for
    DistilBERT, ``base_model.transformer.layer``).

    Raises:
        TypeError: one line naming the supported families, when the model has no such list or a
            layer has another layout.
    """
    base = getattr(model, "base_model", model)
    for path in _LAYERS_PATHS:
        try:
            layers = _get(base, path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            for layer in layers:
                _layer_layout(layer)
            return layers
    raise TypeError(
        f"{supported_families_line()}; {type(model).__name__} has no encoder layer list "
        f"({' or '.join(_LAYERS_PATHS)})"
    )


def family_of(model: nn.Module) -> Family | None:
    """The :class:`Family` of ``model`` from ``config.model_type`` (stock or pruned), else ``None``."""
    name = EXPORT_FAMILIES.get(getattr(getattr(model, "config", None), "model_type", None))  # type: ignore[arg-type]
    return None if name is None else FAMILIES[name]


def family_by_name(name: str) -> Family:
    """The :class:`Family` named ``name`` (a key of :data:`FAMILIES`)."""
    return FAMILIES[name]


def check_supported(model: nn.Module) -> str:
    """Refuse, before anything is changed, a model whose pruned form :func:`save_compressed` cannot write.

    Supported: the families of :data:`FAMILIES` as a sequence classifier
    (``*ForSequenceClassification``) or a bare encoder (``*Model``), including checkpoints written
    by ``save_compressed``.

    Returns:
        The family's name (``"bert"``, ``"roberta"``, ``"electra"``, ``"distilbert"``, ``"deberta-v2"``).

    Raises:
        TypeError: one line naming the model's class and ``model_type`` and the supported families.
    """
    family = family_of(model)
    base = getattr(model, "base_model", None)
    is_classifier = type(model).__name__.endswith("ForSequenceClassification")
    is_bare = base is model and type(model).__name__.endswith("Model")
    if family is None or not (is_classifier or is_bare):
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise TypeError(
            f"{supported_families_line()}; got {type(model).__name__} (model_type {model_type!r}). "
            "Convert the model to one of these classes"
        )
    encoder_layers(model)
    return family.name


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """Current ``{"ffn": [FFN width per layer], "heads": [heads per layer]}``."""
    layers = encoder_layers(model)
    return {
        "ffn": [ffn_input(layer).out_features for layer in layers],
        "heads": [num_heads(layer) for layer in layers],
    }


def replace_ffn(layer: nn.Module, new_input: nn.Linear, new_output: nn.Linear) -> None:
    """Install the FFN projections of a narrower (or restored) FFN."""
    lay = _layer_layout(layer)
    _set(layer, lay.ffn_input, new_input)
    _set(layer, lay.ffn_output, new_output)


def replace_heads(layer: nn.Module, rows: dict[str, nn.Linear], output: nn.Linear, heads: int) -> None:
    """Install the head-row projections (``{path: Linear}`` as :func:`head_row_projections` names
    them), the attention output projection for ``heads`` heads, and update the head counts."""
    lay = _layer_layout(layer)
    size = head_size(layer)
    for path, linear in rows.items():
        _set(layer, path, linear)
    _set(layer, lay.attention_output, output)
    for path in lay.head_count:
        _set(layer, path, int(heads))
    for path in lay.head_total:
        _set(layer, path, int(heads) * size)


def record_widths(model: nn.Module) -> None:
    """Write the current widths into ``model.config``: ``intermediate_sizes``, ``num_heads_per_layer``
    and, when all layers share one FFN width, the family's FFN key (``intermediate_size``,
    DistilBERT's ``hidden_dim``)."""
    config = getattr(model, "config", None)
    if config is None:
        return
    widths = layer_widths(model)
    config.intermediate_sizes = widths["ffn"]
    config.num_heads_per_layer = widths["heads"]
    family = family_of(model)
    if len(set(widths["ffn"])) == 1:
        setattr(config, family.config_ffn if family is not None else "intermediate_size", widths["ffn"][0])
