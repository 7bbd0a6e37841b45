r"""The persistence lens as a torchmetrics ``Metric``: BERTops' PSF and H0/H1 statistics.

Per batch, :meth:`PersistenceScore.update` pools the selected hidden states (``[CLS]`` or mean
over the attention mask) and keeps the ``(batch, layers, hidden)`` vectors with their labels in
``cat`` states; :meth:`PersistenceScore.compute` hands them, gathered over every process, to
:func:`lightning_topo.scores.persistence_metrics` (which samples each class, builds the diagrams
and computes every value). Every process computes the same values from the same gathered points
(cheap enough: no broadcast needed).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

from lightning_topo.metrics.base import LensMetric, LensResult
from lightning_topo.representations.hidden import LayerSpec, Representations, pool_hidden_states
from lightning_topo.scores import SCORES, PSFPreset, get_preset, metric_names, persistence_metrics
from lightning_topo.scores.checks import check_choice
from lightning_topo.scores.presets import POOLINGS
from lightning_topo.scores.sampling import check_resamples
from lightning_topo.scores.summary import check_homology_dims, check_scores
from lightning_topo.topology.diagrams import BACKENDS

__all__ = ["PersistenceScore"]


class PersistenceScore(LensMetric):
    r"""PSF and persistence statistics of pooled hidden states, per layer and class.

    ``compute()`` returns a :class:`~lightning_topo.metrics.LensResult` with (names without the
    ``topo`` prefix): ``psf`` (headline: PSF of the deepest selected layer), ``psf/std`` (its
    standard error with ``resamples > 1``), ``psf/layer_{i}``, ``psf/class_{c}``,
    ``h{k}/total_persistence``, ``h{k}/entropy`` (and their ``/std``), as
    :func:`~lightning_topo.scores.persistence_metrics`. ``extras`` holds the primary layer's
    ``diagrams`` ``{class: [H0 (m, 2), H1 (m, 2)]}``, ``num_points`` and ``layer``.

    Args:
        layers: hidden-state indices (default ``-1``; the preset's layer when ``None``).
        pooling: ``"cls"`` or ``"mean"`` (``None``: the preset's, ``"cls"``).
        scores: subset of ``("psf", "total_persistence", "entropy")`` (default all).
        homology_dims: subset of ``(0, 1)`` for the statistics.
        max_points_per_class: PSF's cloud size per class (``None``: the preset's, 512 for
            ``"default"``, 5,000 for ``"bertops"``).
        preset: ``"default"``, ``"bertops"`` or a :class:`~lightning_topo.scores.PSFPreset`.
        resamples: seeded re-draws of each class's sample averaged in every value (default 5).
        backend: persistence backend (:func:`~lightning_topo.topology.persistence_diagrams`).
        max_samples, seed, kwargs: as :class:`~lightning_topo.metrics.LensMetric`.

    Example::

        >>> import torch
        >>> from lightning_topo.metrics import PersistenceScore
        >>> metric = PersistenceScore(layers=-1, resamples=1)
        >>> hidden = tuple(torch.randn(40, 5, 8) for _ in range(3))      # embeddings + 2 layers
        >>> metric.update(hidden, torch.ones(40, 5), torch.arange(40) % 2)
        >>> sorted(metric.compute().metrics())[:2]
        ['topo/h0/entropy', 'topo/h0/total_persistence']
    """

    prefix = "topo"
    headline = "psf"

    def __init__(
        self,
        layers: LayerSpec | None = None,
        pooling: str | None = None,
        scores: Sequence[str] = SCORES,
        homology_dims: Sequence[int] = (0, 1),
        max_points_per_class: int | None = None,
        preset: str | PSFPreset = "default",
        resamples: int = 5,
        backend: str = "torch",
        max_samples: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        base = get_preset(preset)
        self.preset = base.override(pooling=pooling, max_points_per_class=max_points_per_class)
        super().__init__(
            layers=self.preset.layer if layers is None else layers, max_samples=max_samples, seed=seed, **kwargs
        )
        self.pooling = check_choice(self.preset.pooling, "pooling", POOLINGS)
        self.scores = check_scores(scores)
        self.homology_dims = check_homology_dims(homology_dims)
        self.resamples = check_resamples(resamples)
        self.backend = check_choice(backend, "backend", BACKENDS)
        self.add_state("pooled", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    @property
    def headline_score(self) -> str:
        return "psf" if "psf" in self.scores else metric_names([0], [], scores=self.scores)[0]

    def metric_names(self, classes: Sequence[int]) -> list[str]:
        """The names ``compute`` returns (without the prefix) for these classes, at the selected
        layers (the metric must be bound to a model's depth)."""
        return metric_names(
            self.selected_layers, list(classes), scores=self.scores, homology_dims=self.homology_dims,
            resamples=self.resamples,
        )  # fmt: skip

    def update(
        self,
        hidden_states: Sequence[Tensor | None],
        attention_mask: Tensor | None,
        labels: Tensor,
        input_ids: Tensor | None = None,
    ) -> None:
        """Pool one batch.

        Args:
            hidden_states: ``num_layers + 1`` tensors ``(batch, seq, hidden)`` (a model's
                ``output_hidden_states``); only the selected ones are read.
            attention_mask: ``(batch, seq)``, 1 for real tokens (``None``: all real).
            labels: ``(batch,)`` integer class labels.
            input_ids: unused (accepted so every lens takes the same arguments).

        Raises:
            ValueError: ``labels`` missing or of another length than the batch.
        """
        if self.num_layers is None:
            self.bind(len(hidden_states) - 1)
        layers = self.selected_layers
        if labels is None:
            raise ValueError(
                "PersistenceScore.update needs the class labels of the batch (batch['labels'] or a labels_fn)"
            )
        batch = hidden_states[layers[0]].shape[0]
        if labels.shape[0] != batch:
            raise ValueError(f"labels has {labels.shape[0]} entries for a batch of {batch} sequences")
        take = self._take(batch)
        if take == 0:
            return
        mask = None if attention_mask is None else attention_mask[:take]
        pooled = torch.stack(
            [pool_hidden_states(hidden_states[i][:take].float(), mask, self.pooling) for i in layers], dim=1
        )
        self.pooled.append(pooled.detach())
        self.targets.append(labels[:take].detach().to(pooled.device, torch.long))

    def representations(self) -> Representations:
        """The gathered pooled vectors, ``{layer: (n, d)}`` with their labels."""
        pooled = dim_zero_cat(self.pooled)
        points = {layer: pooled[:, j].cpu() for j, layer in enumerate(self.selected_layers)}
        return Representations(points, dim_zero_cat(self.targets).cpu(), self.num_layers or 0, self.pooling)

    def compute(self) -> LensResult:
        """Every value of the lens over the examples seen since the last ``reset``.

        NaN under every name when the hidden states hold NaN/inf (a diverged model).

        Raises:
            ValueError: no examples, fewer than 2 classes, or a class with a single example.
        """
        # A list of per-batch tensors before a DDP sync, one concatenated tensor after it.
        rows = self.pooled.shape[0] if isinstance(self.pooled, Tensor) else sum(p.shape[0] for p in self.pooled)
        if rows == 0:
            raise ValueError("PersistenceScore.compute: no examples were added (call update first)")
        reps = self.representations()
        layers = reps.layers
        counts = reps.class_counts()
        if len(counts) < 2:
            raise ValueError(
                f"PSF needs at least 2 classes; the examples have {len(counts)} ({sorted(counts)})"
            )
        single = [c for c, n in counts.items() if n < 2]
        if single:
            raise ValueError(f"PSF needs at least 2 examples of every class; class {single[0]} has 1")
        headline = self.headline_score
        names = self.metric_names(list(counts))
        bad = [layer for layer, p in reps.points.items() if not bool(torch.isfinite(p).all())]
        if bad:
            warnings.warn(
                f"PersistenceScore logs NaN: hidden state {bad[0]} has NaN/inf values (the model has diverged: "
                "lower the learning rate or clip gradients); EarlyStopping(check_finite=True) stops on it",
                stacklevel=2,
            )
            return LensResult.nan(names, headline, layers, self.prefix)
        same = {layer: _identical_class(reps.points[layer], reps.labels) for layer in layers}
        degenerate = [layer for layer, c in same.items() if c is not None]
        for layer in degenerate:
            warnings.warn(
                f"layer {layer}: every point of class {same[layer]} is the same vector (with pooling='cls' the "
                "embeddings' [CLS] vector does not depend on the input), so PSF and the persistence statistics "
                "are undefined there and recorded as NaN; use pooling='mean' or leave the layer out",
                stacklevel=2,
            )
        if max(layers) in degenerate:
            return LensResult.nan(names, headline, layers, self.prefix)
        result = persistence_metrics(
            {layer: p for layer, p in reps.points.items() if layer not in degenerate},
            reps.labels,
            scores=self.scores,
            homology_dims=self.homology_dims,
            preset=self.preset,
            seed=self.seed,
            backend=self.backend,
            resamples=self.resamples,
        )
        extras = {
            "diagrams": {c: [d.detach().cpu() for d in dg] for c, dg in result.diagrams.items()},
            "num_points": result.num_points,
            "layer": result.layer,
            "pooling": self.pooling,
        }
        values = dict(result.values)
        values.update({f"psf/layer_{layer}": torch.tensor(math.nan) for layer in degenerate if "psf" in self.scores})
        return LensResult({n: values[n] for n in names}, headline, layers, self.prefix, extras)


def _identical_class(points: Tensor, labels: Tensor) -> int | None:
    """The first class whose points are all one vector (PSF is undefined there), else ``None``."""
    for c in torch.unique(labels):
        cloud = points[labels == c]
        if cloud.shape[0] > 0 and bool((cloud == cloud[0]).all()):
            return int(c)
    return None
