r"""The geometry lens as a torchmetrics ``Metric``: cone index, attention entropy, directionality.

Bonino et al. (2025), methods.md §4, docs/geometry.md. Per forward pass the hooks of
:class:`~lightning_topo.representations.geometry.GeometryCapture` reduce each selected encoder
layer at once to per-sequence numbers (cone index of the layer input, of each head's output, of
the attention output and of the layer output; the attention row entropy of each head:
:func:`~lightning_topo.representations.geometry.layer_statistics`), so a forward never keeps
more than one layer's tensors. :meth:`GeometryScore.update` adds them to two ``sum`` states (the
running sums per layer and the sequence counts), so ``reset`` and the synchronisation over DDP
processes are torchmetrics' and every process computes the same means. The weight scores
(directionality and spectral entropy of every head's ``W_q W_kᵀ``) are computed in
:meth:`GeometryScore.compute` from the model's current weights (replicated under DDP: the same on
every process). Cheap: no compute on rank 0 and broadcast.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import Tensor, nn

from lightning_topo.metrics.base import LensMetric, LensResult
from lightning_topo.representations.capture import num_hidden_layers
from lightning_topo.representations.geometry import (
    ATTENTION_SOURCES,
    CapturedForward,
    GeometryCapture,
    LayerCapture,
    LayerStatistics,
    attention_sites,
    layer_statistics,
    resolve_encoder_layers,
    weight_geometry,
)
from lightning_topo.scores.checks import LayerSpec, check_bool, check_choice
from lightning_topo.scores.geometry import HEADLINE, geometry_metrics, metric_names

__all__ = ["GeometryScore"]

#: Columns of the ``sums`` state before the per-head blocks: cone index of the layer input, the
#: attention output and the layer output.
_SITES = 3


class GeometryScore(LensMetric):
    r"""Cone index, attention entropy and directionality of every selected encoder layer.

    ``compute()`` returns a :class:`~lightning_topo.metrics.LensResult` whose values are (names
    without the ``geometry`` prefix; means over the sequences seen since the last ``reset``,
    cone indices normalised to ``[0, 1]`` unless ``normalize=False``):

    * ``cone`` -- the **headline**: cone index of the deepest selected layer's output, under a
      name without a layer, so ``EarlyStopping(monitor="geometry/cone")`` needs no layer count;
    * ``cone/layer_{i}`` (layer output), ``cone/layer_{i}/input``, ``cone/layer_{i}/heads`` (mean
      over heads of each head's output), ``cone/layer_{i}/attention_output`` (after the output
      projection, residual and LayerNorm);
    * ``attention_entropy/layer_{i}`` -- row entropy (nats) of the attention probabilities, mean
      over valid queries and heads (not with ``attention="none"``);
    * ``directionality/layer_{i}``, ``qk_spectral_entropy/layer_{i}`` -- of each head's
      ``W_q^h W_k^hᵀ``, mean over heads (from the weights of the model given to
      :meth:`check_model`).

    ``extras``: ``heads`` ``{"cone_heads" | "attention_entropy" | "directionality" |
    "qk_spectral_entropy": [[per head] per layer]}`` (floats, for the heat maps) and
    ``sequences`` (how many were measured, all processes).

    Layers follow the one convention: hidden-state index ``i`` = the output of encoder layer
    ``i``, negative from the end; ``"all"`` (the default) is ``1..L`` here, because hidden state
    0, the embeddings, has no attention (``0`` is refused).

    How it is fed (what :class:`~lightning_topo.callbacks.GeometryMonitor` and ``analyze`` do,
    and what a plain loop does)::

        metric = GeometryScore(layers="all")
        metric.check_model(hf_model)           # refuses unsupported models; keeps a weak reference
        capture = metric.make_capture(hf_model)  # forward hooks (GeometryCapture)
        with capture, torch.no_grad():
            for batch in loader:
                hf_model(**inputs(batch))          # or any forward that runs hf_model
                for forward in capture.pop():
                    metric.update(forward)         # = metric.update_from(forward, None)
        result = metric.compute()                  # result.metrics() -> {"geometry/cone": ...}

    ``update`` takes a :class:`~lightning_topo.representations.geometry.CapturedForward` from
    that capture (per-sequence numbers per layer) or from any ``GeometryCapture`` of the same
    layers (raw :class:`LayerCapture` s, reduced here). ``max_samples`` caps the sequences per
    process; once reached, the hooks skip the reduction of further forwards.

    The model: ``check_model(model)`` (or ``make_capture``) keeps a *weak* reference to it (not a
    submodule: the metric's ``state_dict`` and ``.to()`` never touch the model), read by
    ``compute`` for the weight scores; ``compute`` raises if there is none.

    Args:
        layers: ``"all"`` (default), an encoder layer or a list (hidden-state indices >= 1,
            negative from the end).
        attention: where attention probabilities come from: ``"auto"`` (default; the model's own
            under eager attention, otherwise recomputed from the query/key projections the
            forward computed; DeBERTa: always its own), ``"model"`` (eager attention required for
            BERT/DistilBERT) or ``"none"`` (no entropy).
        normalize: divide each cone index by the sequence's token count. Default ``True``.
        max_samples: the most sequences one measurement reads per process (``None``: all).
        kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``process_group``, ...).

    Raises:
        TypeError / ValueError: a bad argument (the message names it).

    Example (a user's own ``validation_step``; tested in tests/metrics/test_geometry_metric.py)::

        >>> import torch
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> from lightning_topo.metrics import GeometryScore
        >>> net = BertForSequenceClassification(BertConfig(
        ...     vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)).eval()
        >>> metric = GeometryScore(layers="all")
        >>> metric.check_model(net)
        >>> capture = metric.make_capture(net)
        >>> with capture, torch.no_grad():
        ...     _ = net(input_ids=torch.randint(1, 50, (4, 7)), attention_mask=torch.ones(4, 7))
        >>> for forward in capture.pop():
        ...     metric.update(forward)
        >>> result = metric.compute()
        >>> result.headline_name(), sorted(result.metrics())[:2]
        ('geometry/cone', ['geometry/attention_entropy/layer_1', 'geometry/attention_entropy/layer_2'])
    """

    prefix = "geometry"
    headline = HEADLINE
    needs_labels = False
    compute_on_rank_zero = False  # sums synchronised by torchmetrics; the weight scores are cheap

    sums: Tensor
    counts: Tensor

    def __init__(
        self,
        layers: LayerSpec = "all",
        attention: str = "auto",
        normalize: bool = True,
        max_samples: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(layers=layers, max_samples=max_samples, seed=0, **kwargs)
        if self.layers == 0 or (isinstance(self.layers, list) and 0 in self.layers):
            raise ValueError(
                f"layers: 0 (hidden state 0, the embeddings) has no attention; the geometry lens reads "
                f"encoder layers 1..L (or -L..-1 from the end, or 'all'); got {layers!r}"
            )
        self.attention = check_choice(attention, "attention", ATTENTION_SOURCES)
        self.normalize = check_bool(normalize, "normalize")
        self._model_ref: weakref.ref[nn.Module] | None = None
        self._heads: list[int] = []
        self._width = 0
        self._init_states([1])

    # ------------------------------------------------------------------ states

    def _init_states(self, heads: list[int]) -> None:
        """(Re)register the ``sum`` states for ``len(heads)`` layers of at most ``max(heads)`` heads.

        ``sums[row]``: cone index sums of the layer input, attention output, layer output, then
        the per-head cone sums (``width`` columns) and the per-head entropy sums (``width``).
        """
        self._heads = list(heads)
        self._width = max(heads)
        rows, width = len(heads), _SITES + 2 * self._width
        device = self.sums.device if hasattr(self, "sums") else None
        self.add_state("sums", default=torch.zeros(rows, width, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(rows, dtype=torch.float64), dist_reduce_fx="sum")
        if device is not None and device != self.sums.device:
            self.to(device)

    @property
    def selected_layers(self) -> list[int]:
        """The encoder layers measured, ascending (hidden-state indices ``1..L``)."""
        if self.num_layers is None:
            raise RuntimeError("GeometryScore: call check_model(model) (or make_capture(model)) first")
        return resolve_encoder_layers(self.layers, self.num_layers)

    # ------------------------------------------------------------------ how drivers feed the lens

    def check_model(self, model: Any) -> None:
        """Refuse a model the lens cannot read and bind the layers; keep a weak reference to it.

        Raises:
            TypeError: not a supported layout: BERT-family (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM),
                DistilBERT or DeBERTa-v2/v3 (one line naming them).
            ValueError: ``layers`` out of range or 0; a decoder; ``attention="model"`` without
                eager attention (the message says how to enable it).
        """
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"GeometryScore.check_model needs a Hugging Face model; got {type(model).__name__}"
            )
        attention_sites(model)  # the layout, before anything else is read
        self.bind(num_hidden_layers(model))
        capture = GeometryCapture(model, layers=self.selected_layers, attention=self.attention)
        self._model_ref = weakref.ref(model)
        heads = capture.num_heads()
        if heads != self._heads:
            self._init_states(heads)

    def make_capture(self, model: Any) -> GeometryCapture:
        """Forward hooks that reduce each selected layer of every forward of ``model`` at once.

        Checks ``model`` first (:meth:`check_model`) if it is not the model already checked, and
        re-reads the head counts (a callback may have pruned heads since).
        """
        if self._model_ref is None or self._model_ref() is not model or self.num_layers is None:
            self.check_model(model)
        capture = GeometryCapture(
            model, layers=self.selected_layers, attention=self.attention, reduce=self._reduce_layer
        )
        heads = capture.num_heads()
        if heads != self._heads:
            if self._update_count:
                raise RuntimeError(
                    f"GeometryScore: the model's head counts changed from {self._heads} to {heads} during a "
                    "measurement; call reset() first"
                )
            self._init_states(heads)
        return capture

    def _room(self) -> int | None:
        """Sequences still wanted on this process (``None``: no cap)."""
        return None if self.max_samples is None else max(0, self.max_samples - self._seen)

    def _reduce_layer(self, layer: int, cap: LayerCapture) -> LayerStatistics | None:
        """Called by the hooks with each layer's capture: per-sequence numbers (or ``None`` once
        ``max_samples`` sequences were added, so further forwards cost nothing)."""
        room = self._room()
        if room == 0:
            return None
        rows = None if room is None or room >= cap.mask.shape[0] else room
        return layer_statistics(cap, self.normalize, self.attention != "none", rows=rows)

    def update_from(self, captured: Any, labels: Tensor | None = None) -> None:
        """``update`` from one item of ``make_capture(model).pop()`` (labels are not used)."""
        self.update(captured)

    def update(self, forward: CapturedForward) -> None:  # type: ignore[override]
        """Add one forward pass.

        Args:
            forward: a :class:`~lightning_topo.representations.geometry.CapturedForward` of a
                capture of the selected layers (from :meth:`make_capture`: per-sequence numbers;
                from any ``GeometryCapture``: raw captures, reduced here).

        Raises:
            TypeError: not a ``CapturedForward``.
            ValueError: it misses a selected layer, a layer has other head counts than the
                model checked, or a sequence has no valid position in its attention mask.
        """
        if not isinstance(forward, CapturedForward):
            raise TypeError(
                "GeometryScore.update takes a CapturedForward from GeometryScore.make_capture(model).pop(); "
                f"got {type(forward).__name__}"
            )
        layers = self.selected_layers
        missing = [i for i in layers if i not in forward.layers]
        if missing:
            raise ValueError(
                f"GeometryScore.update: the forward has no capture of layer(s) {missing}; build the capture "
                "with metric.make_capture(model)"
            )
        n = int(forward.mask.shape[0])
        room = self._room()
        take = n if room is None else min(n, room)
        if take == 0:
            return
        stats = []
        for row, layer in enumerate(layers):
            item = forward.layers[layer]
            if item is None:  # the hooks skipped it: the cap was reached when the forward ran
                return
            if isinstance(item, LayerCapture):
                item = layer_statistics(item, self.normalize, self.attention != "none", rows=take)
            if item.num_heads != self._heads[row]:
                raise ValueError(
                    f"GeometryScore.update: layer {layer} has {item.num_heads} heads but the model checked has "
                    f"{self._heads[row]}; call make_capture(model) again after pruning"
                )
            stats.append(item.take(take))
        self._seen += take
        device = stats[0].cones.device
        if self.sums.device != device:  # states live where the model runs: no transfer per batch
            self.to(device)
        w = self._width
        for row, st in enumerate(stats):
            h = st.num_heads
            self.sums[row, :_SITES] += st.cones.sum(0)
            self.sums[row, _SITES : _SITES + h] += st.heads.sum(0)
            if st.entropy is not None:
                self.sums[row, _SITES + w : _SITES + w + h] += st.entropy.sum(0)
            self.counts[row] += take

    # ------------------------------------------------------------------ result

    def _model(self) -> nn.Module:
        model = self._model_ref() if self._model_ref is not None else None
        if model is None:
            raise RuntimeError(
                "GeometryScore.compute needs the model for the weight scores: call check_model(model) first"
            )
        return model

    def compute(self) -> LensResult:
        """Every value of the lens over the sequences seen since the last ``reset`` (all processes).

        NaN hidden states give NaN cone and entropy values (the weight scores stay finite).

        Raises:
            ValueError: no sequence was added.
            RuntimeError: no model known (:meth:`check_model` was not called).
        """
        layers = self.selected_layers
        sums, counts = (
            self.sums.detach().to("cpu", torch.float64),
            self.counts.detach().to("cpu", torch.float64),
        )
        if sums.shape[0] != len(layers) or not bool((counts > 0).all()):
            raise ValueError(
                "GeometryScore.compute: no sequence was added (run the model with the capture of "
                "make_capture(model) attached and call update first)"
            )
        means = sums / counts[:, None]
        attention = self.attention != "none"
        w = self._width
        activations: dict[int, dict[str, Tensor]] = {}
        for row, layer in enumerate(layers):
            m, h = means[row], self._heads[row]
            activations[layer] = {
                "cone/input": m[0],
                "cone/attention_output": m[1],
                "cone/output": m[2],
                "cone/heads": m[_SITES : _SITES + h],
            }
            if attention:
                activations[layer]["attention_entropy"] = m[_SITES + w : _SITES + w + h]
        result = geometry_metrics(activations, weight_geometry(self._model(), layers))
        assert list(result.values) == metric_names(layers, attention)
        extras = {
            "heads": {k: [[float(v) for v in t] for t in per_layer] for k, per_layer in result.heads.items()},
            "sequences": int(counts[0].item()),
            "finite": all(math.isfinite(float(v)) for v in result.values.values()),
        }
        return LensResult(dict(result.values), self.headline, layers, self.prefix, extras)

    # ------------------------------------------------------------------ pickling (ddp_spawn, copies)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_model_ref"] = None  # a weak reference cannot be pickled; check_model sets it again
        return state
