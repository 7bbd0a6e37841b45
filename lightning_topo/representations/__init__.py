"""What the lenses measure, taken from a model's forward pass (the layer between a batch and a score).

Modules (each imports only ``encoding``, ``scores`` and ``topology``; nothing here imports
Lightning's Trainer, ``callbacks``, ``models`` or the CLI; distributed gathering is passed in):

* :mod:`~lightning_topo.representations.hidden` -- pooled hidden states per layer (``[CLS]`` or
  mean), per-class sampling and gathering over processes; used by the PSF monitor, ``analyze``
  and pruning calibration. Its public names are re-exported here.
* :mod:`~lightning_topo.representations.geometry` -- forward hooks that capture each layer's
  input, per-head context, attention output, layer output and attention probabilities (the
  geometry lens).
* :mod:`~lightning_topo.representations.tokens` -- a fixed, seeded word-token set with offline
  label sets (the latent-concept lens).
* :mod:`~lightning_topo.representations.words` -- a seeded sample of whole sentences' word
  vectors (the tree probe).
"""

from lightning_topo.representations.hidden import (
    GatherFn,
    LayerSpec,
    NonFiniteHiddenStatesError,
    RepresentationCollector,
    Representations,
    check_layers,
    collect_representations,
    gather_variable,
    pool_hidden_states,
    resolve_layers,
    run_on_rank_zero_and_broadcast,
)

__all__ = [
    "GatherFn",
    "LayerSpec",
    "NonFiniteHiddenStatesError",
    "RepresentationCollector",
    "Representations",
    "check_layers",
    "collect_representations",
    "gather_variable",
    "pool_hidden_states",
    "resolve_layers",
    "run_on_rank_zero_and_broadcast",
]
