"""What the lenses measure, taken from a model's forward pass (the layer between a batch and a score).

Modules (nothing here imports Lightning's Trainer, ``callbacks``, ``models`` or the CLI):

* :mod:`~lightning_topo.representations.capture` -- forward hooks that record the hidden states
  of any BERT-family encoder during the caller's own forward (every hidden-state lens).
* :mod:`~lightning_topo.representations.hidden` -- layer selections, pooling, the pooled-vectors
  container and the rank-zero helper. Its public names are re-exported here.
* :mod:`~lightning_topo.representations.geometry` -- forward hooks that capture each layer's
  input, per-head context, attention output, layer output and attention probabilities (the
  geometry lens).
* :mod:`~lightning_topo.representations.tokens` -- a fixed, seeded word-token set with offline
  label sets (the latent-concept lens).
* :mod:`~lightning_topo.representations.modules` -- finding the Hugging Face model in a module.
"""

from lightning_topo.representations.hidden import (
    LayerSpec,
    Representations,
    check_layers,
    pool_hidden_states,
    resolve_layers,
    run_on_rank_zero_and_broadcast,
)

__all__ = [
    "LayerSpec",
    "Representations",
    "check_layers",
    "pool_hidden_states",
    "resolve_layers",
    "run_on_rank_zero_and_broadcast",
]
