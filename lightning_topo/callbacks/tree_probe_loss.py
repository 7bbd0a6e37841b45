r"""
Tree probe regularisation
=========================

Add the tree topological probe's loss at one layer to the fine-tuning loss (Li, Yin, Lin 2023:
total = cross-entropy + :math:`\lambda` probe loss, :math:`\lambda = 10`), from a config file.

The callback only registers :class:`~lightning_topo.scores.tree_probe.TreeProbeLoss` through
:meth:`SequenceClassifier.register_auxiliary_loss
<lightning_topo.models.SequenceClassifier.register_auxiliary_loss>` at ``setup`` (before the
optimizer is built, so the probe's weights train with the model).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lightning_topo.scores.checks import check_bool, check_choice, check_int, check_real, check_seed
from lightning_topo.scores.tree_probe import TARGET_KINDS, TreeProbeLoss, vocab_tables

__all__ = ["TreeProbeRegularization"]


class TreeProbeRegularization(Callback):
    r"""Train with ``weight * probe_loss`` of a depth probe at ``layer`` added to the loss.

    Logged by :class:`~lightning_topo.models.SequenceClassifier`: ``train/aux/{name}`` (the probe
    loss, unweighted), ``train/ce`` and ``train/loss``.

    Args:
        layer: hidden-state index (0 = embeddings, ``i`` = output of encoder layer ``i``;
            negative counts from the end). The gradient of the term reaches encoder layers
            ``1..layer`` and the embeddings only.
        weight: :math:`\lambda`. Default 10 (the paper's value).
        targets: ``"ssp"`` (default) or ``"essp"``.
        rank: probe rank (``None`` = hidden size // 2).
        word_pooling: mean-pool word pieces into words with ``trainer.datamodule.tokenizer``
            (``False`` or no tokenizer: every non-padding token is a position).
        seed: seed of the probe's initialisation.
        name: the auxiliary loss's name. Default ``"tree_probe"``.

    Raises:
        ValueError: a bad argument; at ``setup``, a layer out of range for the model.
        TypeError: at ``setup``, a LightningModule without ``register_auxiliary_loss``.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_topo.callbacks.tree_probe_loss import TreeProbeRegularization
        >>> trainer = Trainer(callbacks=[TreeProbeRegularization(layer=3, weight=10.0)])
    """

    def __init__(
        self,
        layer: int = -1,
        weight: float = 10.0,
        targets: str = "ssp",
        rank: int | None = None,
        word_pooling: bool = True,
        seed: int = 0,
        name: str = "tree_probe",
    ) -> None:
        super().__init__()
        layer = check_int(layer, "layer")
        weight = check_real(weight, "weight", minimum=0.0, strict=True)
        targets = check_choice(targets, "targets", TARGET_KINDS)
        rank = check_int(rank, "rank", minimum=1, allow_none=True)
        word_pooling = check_bool(word_pooling, "word_pooling")
        seed = check_seed(seed)
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"name must be a non-empty string without '/'; got {name!r}")
        self.layer = layer
        self.weight = float(weight)
        self.targets = targets
        self.rank = rank
        self.word_pooling = word_pooling
        self.seed = int(seed)
        self.name = name

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        register = getattr(pl_module, "register_auxiliary_loss", None)
        if not callable(register):
            raise TypeError(
                f"TreeProbeRegularization needs a LightningModule with register_auxiliary_loss "
                f"(lightning_topo.models.SequenceClassifier); got {type(pl_module).__name__}"
            )
        if self.name in getattr(pl_module, "auxiliary_losses", {}):
            return  # already registered (a second fit with the same module)
        config = pl_module.model.config
        num_layers = int(config.num_hidden_layers)
        if not -(num_layers + 1) <= self.layer <= num_layers:
            raise ValueError(
                f"layer {self.layer} is out of range: the model has hidden states 0..{num_layers} "
                "(0 = embeddings; negative counts from the end)"
            )
        tables: dict[str, Any] = {}
        tokenizer = getattr(getattr(trainer, "datamodule", None), "tokenizer", None)
        if self.word_pooling and tokenizer is not None:
            tables = dict(zip(("continuation", "special"), vocab_tables(tokenizer), strict=True))
        elif self.word_pooling:
            rank_zero_warn(
                "TreeProbeRegularization: no trainer.datamodule.tokenizer; every token is a position"
            )
        loss = TreeProbeLoss(
            int(config.hidden_size),
            self.layer,
            rank=self.rank,
            targets=self.targets,
            seed=self.seed,
            **tables,
        )
        register(self.name, loss, weight=self.weight)
