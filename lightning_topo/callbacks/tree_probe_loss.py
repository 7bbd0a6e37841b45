r"""
Tree probe regularisation
=========================

Add the tree topological probe's loss at one layer to the fine-tuning loss (Li, Yin, Lin 2023:
total = cross-entropy + :math:`\lambda` probe loss, :math:`\lambda = 10`), from a config file.

The callback registers :class:`~lightning_topo.scores.tree_probe.TreeProbeLoss` through
:meth:`SequenceClassifier.register_auxiliary_loss
<lightning_topo.models.SequenceClassifier.register_auxiliary_loss>` at ``setup`` (before the
optimizer is built, so the probe's weights train with the model). With ``init="pretrained"``
(the authors' procedure) or ``layer="auto"`` it then prepares the probe at ``on_train_start``,
before the first step: it encodes a budget of training sentences with the starting model, fits
a probe per candidate layer (``"auto"``) or on the chosen layer, picks the layer and copies the
fitted probe into the registered one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset
from tqdm.auto import tqdm
from typing_extensions import override

from lightning_topo.encoding import EncodedBatch, encode_batch
from lightning_topo.representations import run_on_rank_zero_and_broadcast
from lightning_topo.scores.checks import check_bool, check_choice, check_int, check_real, check_seed
from lightning_topo.scores.tree_probe import (
    TARGET_KINDS,
    ProbeBudget,
    TreeProbeLoss,
    check_class_ids,
    contributing_rows,
    fit_probes,
    pack_words,
    pool_wordpieces,
    token_word_ids,
    vocab_tables,
    wordpiece_word_ids,
)

__all__ = [
    "AUTO_PICKS",
    "INITS",
    "TreeProbeRegularization",
    "collect_word_vectors",
    "layer_probe_metrics",
    "pick_layer",
]

#: Probe initialisations: ``"pretrained"`` (fitted on the starting model first, the authors'
#: procedure) and ``"random"`` (``U(-0.05, 0.05)``, the callback's behaviour before 0.x).
INITS: tuple[str, ...] = ("pretrained", "random")
#: Which layer ``layer="auto"`` picks: the highest held-out probe loss (the least tree-like,
#: ``"weakest"``) or the lowest (``"strongest"``).
AUTO_PICKS: tuple[str, ...] = ("weakest", "strongest")


# ----------------------------------------------------------------------- module access
def _encoder_model(pl_module: pl.LightningModule) -> nn.Module:
    """The Hugging Face model inside ``pl_module`` (the one place that knows where it is).

    Today: ``pl_module.model`` (:class:`~lightning_topo.models.SequenceClassifier` and user modules
    that follow it). Raises ``TypeError`` naming what is missing.
    """
    model = getattr(pl_module, "model", None)
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or config is None or not hasattr(config, "num_hidden_layers"):
        raise TypeError(
            f"TreeProbeRegularization needs the Hugging Face encoder at pl_module.model (with a config "
            f"that has num_hidden_layers and hidden_size); {type(pl_module).__name__} has "
            f"{type(model).__name__ if model is not None else 'no .model'}"
        )
    return model


def _encode(pl_module: pl.LightningModule, batch: Mapping[str, Any]) -> EncodedBatch:
    """All hidden states of ``batch``: ``pl_module.encode`` when it has one, else its HF model."""
    target = pl_module if callable(getattr(pl_module, "encode", None)) else _encoder_model(pl_module)
    return encode_batch(target, batch)


# ----------------------------------------------------------------------- probe preparation
def collect_word_vectors(
    encode: Any,
    batches: Iterable[Mapping[str, Any]],
    layers: Sequence[int],
    max_sentences: int,
    continuation: Tensor | None = None,
    special: Tensor | None = None,
    contributing_labels: Sequence[int] | None = None,
    progress: Any = None,
) -> tuple[dict[int, tuple[Tensor, Tensor]], int]:
    """Word vectors of the first ``max_sentences`` usable sentences of ``batches``, per layer.

    A sentence is usable when it has at least 2 words and (if ``contributing_labels`` is given)
    its label is one of them. Batches are read in order until ``max_sentences`` are collected.

    Args:
        encode: ``encode(batch) -> EncodedBatch`` (run under ``torch.no_grad``).
        batches: tokenised batches (``input_ids``, ``attention_mask``, ``labels``).
        layers: hidden-state indices to keep.
        max_sentences: how many sentences to keep.
        continuation, special: ``vocab_tables(tokenizer)``; ``None``: every token is a word.
        contributing_labels: class ids to keep (``None``: all).
        progress: optional ``tqdm``-like bar, advanced by the sentences kept.

    Returns:
        ``({layer: (words (n, max_words, d) float32 CPU, mask (n, max_words) bool)}, batches_read)``
        with ``n <= max_sentences``, sentences in reading order.
    """
    kept: list[dict[int, Tensor]] = []
    read = 0
    for batch in batches:
        read += 1
        rows = torch.ones(batch["input_ids"].shape[0], dtype=torch.bool)
        if contributing_labels is not None:
            rows = contributing_rows(batch, contributing_labels, torch.device("cpu"))
        if not bool(rows.any()):
            continue
        with torch.no_grad():
            encoded = encode(batch)
        mask = encoded.attention_mask.detach().cpu()
        if continuation is None or special is None:
            word_ids = token_word_ids(mask)
        else:
            word_ids = wordpiece_word_ids(batch["input_ids"].detach().cpu(), continuation, special, mask)
        n_words = word_ids.max(1).values + 1
        take = (rows & (n_words >= 2)).nonzero().flatten()[: max_sentences - len(kept)]
        if take.numel() == 0:
            continue
        pooled = {
            layer: pool_wordpieces(encoded.hidden_states[layer].detach().float().cpu()[take], word_ids[take])[
                0
            ]
            for layer in layers
        }
        for j, i in enumerate(take.tolist()):
            count = int(n_words[i])
            kept.append({layer: pooled[layer][j, :count].clone() for layer in layers})
        if progress is not None:
            progress.update(int(take.numel()))
        if len(kept) >= max_sentences:
            break
    out: dict[int, tuple[Tensor, Tensor]] = {}
    width = max((e[layers[0]].shape[0] for e in kept), default=0)
    for layer in layers:
        dim = kept[0][layer].shape[1] if kept else 0
        words = torch.zeros(len(kept), width, dim)
        mask = torch.zeros(len(kept), width, dtype=torch.bool)
        for j, entry in enumerate(kept):
            words[j, : entry[layer].shape[0]] = entry[layer]
            mask[j, : entry[layer].shape[0]] = True
        out[layer] = (words, mask)
    return out, read


def layer_probe_metrics(
    vectors: Mapping[int, tuple[Tensor, Tensor]],
    targets: str = "ssp",
    budget: ProbeBudget | None = None,
    rank: int | None = None,
    seed: int = 0,
    progress: Any = None,
) -> dict[int, Any]:
    """Fit one probe per layer of ``vectors`` (all layers in one batched problem,
    :func:`~lightning_topo.scores.tree_probe.fit_probes`); ``{layer: ProbeResult}`` (``val_loss`` =
    the metric). ``progress`` (``tqdm``-like) advances by one per probe epoch."""
    if not vectors:
        return {}
    layers = list(vectors)
    mask = vectors[layers[0]][1]
    words = pack_words(torch.stack([vectors[layer][0] for layer in layers], dim=2), mask)[0]  # (words, layers, d)
    fitted = fit_probes(
        words, mask.sum(1), [targets], budget=budget or ProbeBudget(), rank=rank, seed=seed, progress=progress
    )
    return {layer: fitted[i][0] for i, layer in enumerate(layers)}


def pick_layer(metrics: Mapping[int, float], pick: str = "weakest") -> int:
    """The layer with the highest (``"weakest"``) or lowest (``"strongest"``) probe metric.

    Ties go to the lower layer. Raises ``ValueError`` for an empty mapping, a non-finite value or
    an unknown ``pick``.
    """
    check_choice(pick, "auto_pick", AUTO_PICKS)
    if not metrics:
        raise ValueError("pick_layer needs the metric of at least one layer")
    bad = {k: v for k, v in metrics.items() if not math.isfinite(float(v))}
    if bad:
        raise ValueError(f"probe metric is not finite at layer(s) {sorted(bad)}; cannot pick a layer")
    sign = -1.0 if pick == "weakest" else 1.0
    return min(sorted(metrics), key=lambda layer: sign * float(metrics[layer]))


def _plain_batches(trainer: pl.Trainer) -> Iterable[Mapping[str, Any]]:
    """The training data in its stored order, without shuffling (so no random numbers are drawn)."""
    loader = trainer.train_dataloader
    if loader is None:
        raise ValueError(
            "TreeProbeRegularization(init='pretrained' or layer='auto') needs a training dataloader"
        )
    if isinstance(loader, Mapping | list | tuple):
        raise ValueError(
            "TreeProbeRegularization(init='pretrained' or layer='auto') needs one training dataloader; "
            f"got {type(loader).__name__} of several"
        )
    dataset = getattr(loader, "dataset", None)
    if dataset is None or isinstance(dataset, IterableDataset):
        return loader  # an iterable dataset has no shuffling sampler to avoid
    batch_size = getattr(loader, "batch_size", None) or 64
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=loader.collate_fn)


class _Progress:
    """A ``tqdm`` bar on rank 0 when ``show``, else a no-op with the same ``update``/``close``."""

    def __init__(self, show: bool, total: int, desc: str) -> None:
        self.bar = None
        if show:
            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- callback
class TreeProbeRegularization(Callback):
    r"""Train with ``weight * probe_loss`` of a depth probe at ``layer`` added to the loss.

    Logged by :class:`~lightning_topo.models.SequenceClassifier`: ``train/aux/{name}`` (the probe
    loss, unweighted), ``train/ce`` and ``train/loss``.

    **Initialisation.** ``init="pretrained"`` (default) follows the authors
    (``Fine-tuning/fixed_model.py`` loads a probe pre-trained on the chosen layer of the
    starting model, then trains it with the model): at ``on_train_start`` the first
    ``pretrain_sentences`` training sentences (stored order, no shuffling, only those of
    ``contributing_labels``) are encoded by the starting model in eval mode and a probe is fitted
    on the chosen layer with :func:`~lightning_topo.scores.tree_probe.fit_probe`
    (``pretrain_epochs`` epochs, AdamW ``pretrain_lr`` with linear decay, 32 sentences a step,
    ``pretrain_val_fraction`` held out); its weights are copied into the registered probe.
    ``init="random"`` starts from ``U(-0.05, 0.05)`` (seeded by ``seed``): the behaviour before
    this option existed. The default is ``"pretrained"`` because a random probe's first ssp
    labels are arbitrary, so the first steps of a random-init run push the encoder toward
    them (docs/tree_probe.md gives the measured difference). The preparation runs under
    ``torch.random.fork_rng`` and reads the data without shuffling, so it draws no random
    numbers that the training would otherwise see: with the same seed, runs with and without
    it see the same batches and dropout masks. It is skipped when the callback's state comes
    from a checkpoint (a resumed run keeps its trained probe).

    **Layer.** An int (hidden-state index: 0 = embeddings, ``i`` = output of encoder layer ``i``,
    negative counts from the end), or ``"auto"``: the probe metric (held-out probe loss after
    the pre-training budget, lower = more tree-like) is measured on every candidate layer
    ``1..num_layers`` (``auto_layers`` to restrict) of the starting model, on the same sentences,
    and the layer with the highest metric (``auto_pick="weakest"``, default) or the lowest
    (``"strongest"``) is used. The authors' code does not pick: ``fixed_train.py`` fine-tunes
    once per layer of BERT-large; "improve specific submodules" is read here as improving the
    least tree-like one (see docs/tree_probe.md).

    Args:
        layer: int or ``"auto"`` (see above). Default ``-1`` (the last layer). The gradient of the
            term reaches encoder layers ``1..layer`` and the embeddings only.
        weight: :math:`\lambda` (``> 0``). Default 10 (the paper's value).
        targets: ``"ssp"`` (default) or ``"essp"``.
        rank: probe rank (``None`` = hidden size // 2).
        word_pooling: mean-pool word pieces into words with ``trainer.datamodule.tokenizer``
            (``False`` or no tokenizer: every non-padding token is a position).
        seed: seed of the random initialisation and of the pre-training (split, shuffling).
        name: the auxiliary loss's name. Default ``"tree_probe"``.
        init: ``"pretrained"`` (default) or ``"random"``.
        contributing_labels: class ids whose sentences enter the loss and the pre-training
            sample (the authors: ``[1]``, CoLA's "acceptable"); ``None`` (default): every
            sentence. Checked against the model's ``num_labels`` at ``setup``.
        pretrain_sentences: sentences encoded for the pre-training and for ``"auto"`` (``>= 8``).
            Default 512.
        pretrain_epochs: probe epochs (``>= 1``). Default 10 (the authors').
        pretrain_lr: probe learning rate (``> 0``). Default ``1e-2``: the authors' ``2e-5`` is
            for ~20k sentences and leaves a probe fitted on 512 far from converged.
        pretrain_val_fraction: share held out for the metric, in ``(0, 1)``. Default 0.2.
        auto_pick: ``"weakest"`` (default) or ``"strongest"``.
        auto_layers: candidate hidden-state indices for ``"auto"`` (``None`` = ``1..num_layers``).
        progress_bar: show a bar during the preparation; ``None`` (default) = when the trainer
            has a progress bar.

    Attributes:
        preparation: after ``on_train_start``, a dict: ``layer`` (the layer used),
            ``layer_metrics`` (``{layer: held-out probe loss}`` of the starting model, every
            measured layer), ``pretrain_val_loss``, ``sentences``, ``seconds``; ``None`` before
            (and with ``init="random"`` and an int layer, where nothing is prepared).

    Raises:
        TypeError: at construction, an argument of the wrong type; at ``setup``, a LightningModule
            without ``register_auxiliary_loss`` or without a Hugging Face model at ``.model``.
        ValueError: at construction, a bad value (the message names the argument and what is
            accepted); at ``setup``, a layer out of range, a contributing label the model
            does not have; at ``on_train_start`` (before any step), fewer than 8 usable
            training sentences for the pre-training.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_topo.callbacks.tree_probe_loss import TreeProbeRegularization
        >>> reg = TreeProbeRegularization(layer="auto", weight=1.0, init="pretrained", contributing_labels=[1])
        >>> trainer = Trainer(callbacks=[reg])
    """

    def __init__(
        self,
        layer: int | str = -1,
        weight: float = 10.0,
        targets: str = "ssp",
        rank: int | None = None,
        word_pooling: bool = True,
        seed: int = 0,
        name: str = "tree_probe",
        init: str = "pretrained",
        contributing_labels: list[int] | None = None,
        pretrain_sentences: int = 512,
        pretrain_epochs: int = 10,
        pretrain_lr: float = 1e-2,
        pretrain_val_fraction: float = 0.2,
        auto_pick: str = "weakest",
        auto_layers: list[int] | None = None,
        progress_bar: bool | None = None,
    ) -> None:
        super().__init__()
        if isinstance(layer, str):
            if layer != "auto":
                raise ValueError(f"layer must be an int (hidden-state index) or 'auto'; got {layer!r}")
        else:
            try:
                layer = check_int(layer, "layer")
            except TypeError:
                raise TypeError(
                    f"layer must be an int (hidden-state index) or 'auto'; got {layer!r} ({type(layer).__name__})"
                ) from None
        weight = check_real(weight, "weight", minimum=0.0, strict=True)
        if not isinstance(targets, str):
            raise TypeError(
                f"targets must be one of {TARGET_KINDS}; got {targets!r} ({type(targets).__name__})"
            )
        targets = check_choice(targets, "targets", TARGET_KINDS)
        rank = check_int(rank, "rank", minimum=1, allow_none=True)
        word_pooling = check_bool(word_pooling, "word_pooling")
        seed = check_seed(seed)
        if not isinstance(name, str):
            raise TypeError(
                f"name must be a non-empty string without '/'; got {name!r} ({type(name).__name__})"
            )
        if not name or "/" in name:
            raise ValueError(f"name must be a non-empty string without '/'; got {name!r}")
        if not isinstance(init, str):
            raise TypeError(f"init must be one of {INITS}; got {init!r} ({type(init).__name__})")
        init = check_choice(init, "init", INITS)
        if not isinstance(auto_pick, str):
            raise TypeError(
                f"auto_pick must be one of {AUTO_PICKS}; got {auto_pick!r} ({type(auto_pick).__name__})"
            )
        auto_pick = check_choice(auto_pick, "auto_pick", AUTO_PICKS)
        self.contributing_labels = check_class_ids(contributing_labels, "contributing_labels")
        self.pretrain_sentences = check_int(pretrain_sentences, "pretrain_sentences", minimum=8)
        self.pretrain_epochs = check_int(pretrain_epochs, "pretrain_epochs", minimum=1)
        self.pretrain_lr = check_real(pretrain_lr, "pretrain_lr", minimum=0.0, strict=True)
        fraction = check_real(pretrain_val_fraction, "pretrain_val_fraction")
        if not 0 < fraction < 1:
            raise ValueError(f"pretrain_val_fraction must be in (0, 1); got {pretrain_val_fraction!r}")
        self.pretrain_val_fraction = float(fraction)
        if auto_layers is not None:
            ids = check_class_ids(auto_layers, "auto_layers")  # non-empty ints >= 0
            auto_layers = list(ids)  # type: ignore[arg-type]
            if layer != "auto":
                raise ValueError("auto_layers is only used with layer='auto'; drop it or set layer='auto'")
        if progress_bar is not None:
            progress_bar = check_bool(progress_bar, "progress_bar")
        self.layer = layer
        self.weight = float(weight)  # type: ignore[arg-type]
        self.targets = targets
        self.rank = rank
        self.word_pooling = word_pooling
        self.seed = int(seed)
        self.name = name
        self.init = init
        self.auto_pick = auto_pick
        self.auto_layers = auto_layers
        self.progress_bar = progress_bar
        self.preparation: dict[str, Any] | None = None
        self._loss: TreeProbeLoss | None = None
        self._prepared = False  # True once the probe is ready (or restored / kept from a previous fit)

    @property
    def budget(self) -> ProbeBudget:
        """The pre-training budget (:class:`~lightning_topo.scores.tree_probe.ProbeBudget`)."""
        return ProbeBudget(
            epochs=self.pretrain_epochs,
            lr=self.pretrain_lr,
            batch_size=32,
            val_fraction=self.pretrain_val_fraction,
        )

    @property
    def needs_preparation(self) -> bool:
        """Whether ``on_train_start`` encodes training sentences (pre-trained init or ``"auto"``)."""
        return self.init == "pretrained" or self.layer == "auto"

    # ------------------------------------------------------------------ setup: checks + registration
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        register = getattr(pl_module, "register_auxiliary_loss", None)
        if not callable(register):
            raise TypeError(
                f"TreeProbeRegularization needs a LightningModule with register_auxiliary_loss "
                f"(lightning_topo.models.SequenceClassifier); got {type(pl_module).__name__}"
            )
        config = _encoder_model(pl_module).config
        num_layers = int(config.num_hidden_layers)
        self._check_layers(num_layers)
        self._check_labels(config)
        existing = getattr(pl_module, "auxiliary_modules", {})
        if self.name in getattr(pl_module, "auxiliary_losses", {}):
            # already registered (a second fit with the same module): keep its trained probe
            loss = existing[self.name.replace(".", "_")] if self.name.replace(".", "_") in existing else None
            if isinstance(loss, TreeProbeLoss):
                self._loss = loss
            self._prepared = True
            return
        tables: dict[str, Any] = {}
        tokenizer = getattr(getattr(trainer, "datamodule", None), "tokenizer", None)
        if self.word_pooling and tokenizer is not None:
            tables = dict(zip(("continuation", "special"), vocab_tables(tokenizer), strict=True))
        elif self.word_pooling:
            rank_zero_warn(
                "TreeProbeRegularization: no trainer.datamodule.tokenizer; every token is a position"
            )
        provisional = num_layers if self.layer == "auto" else self.layer  # "auto" is set at on_train_start
        loss = TreeProbeLoss(
            int(config.hidden_size),
            int(provisional),  # type: ignore[arg-type]
            rank=self.rank,
            targets=self.targets,
            seed=self.seed,
            contributing_labels=self.contributing_labels,
            **tables,
        )
        register(self.name, loss, weight=self.weight)
        self._loss = loss
        # a fresh probe: prepared at on_train_start (a checkpoint's state, loaded after setup, skips it)
        self._prepared, self.preparation = False, None

    def _check_layers(self, num_layers: int) -> None:
        if isinstance(self.layer, int):
            if not -(num_layers + 1) <= self.layer <= num_layers:
                raise ValueError(
                    f"layer {self.layer} is out of range: the model has hidden states 0..{num_layers} "
                    "(0 = embeddings; negative counts from the end)"
                )
            return
        bad = [i for i in self.auto_layers or [] if i > num_layers]
        if bad:
            raise ValueError(
                f"auto_layers {bad} out of range: the model has hidden states 0..{num_layers} (0 = embeddings)"
            )
        if num_layers < 1 and self.auto_layers is None:
            raise ValueError("layer='auto' needs a model with at least one encoder layer")

    def _check_labels(self, config: Any) -> None:
        if self.contributing_labels is None:
            return
        num_labels = getattr(config, "num_labels", None)
        if isinstance(num_labels, int):
            bad = [y for y in self.contributing_labels if y >= num_labels]
            if bad:
                raise ValueError(
                    f"contributing_labels {bad} are not classes of the model, which has num_labels={num_labels} "
                    f"(ids 0..{num_labels - 1})"
                )

    def _candidates(self, num_layers: int) -> list[int]:
        if self.layer == "auto":
            return list(self.auto_layers) if self.auto_layers is not None else list(range(1, num_layers + 1))
        layer = int(self.layer)  # type: ignore[arg-type]
        return [layer % (num_layers + 1)]

    # ------------------------------------------------------------------ on_train_start: preparation
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._loss is None or self._prepared or not self.needs_preparation:
            self._prepared = True
            return
        num_layers = int(_encoder_model(pl_module).config.num_hidden_layers)
        candidates = self._candidates(num_layers)
        show = (
            self.progress_bar if self.progress_bar is not None else trainer.progress_bar_callback is not None
        )
        batches = _plain_batches(trainer)
        tables = (self._loss.continuation, self._loss.special)
        was_training = pl_module.training

        def prepare() -> dict[str, Any]:
            start = time.perf_counter()
            bar = _Progress(show, self.pretrain_sentences, "tree probe: encoding sentences")
            try:
                vectors, _ = collect_word_vectors(
                    lambda batch: _encode(pl_module, batch),
                    batches,
                    candidates,
                    self.pretrain_sentences,
                    continuation=None if tables[0] is None else tables[0].cpu(),
                    special=None if tables[1] is None else tables[1].cpu(),
                    contributing_labels=self.contributing_labels,
                    progress=bar,
                )
            finally:
                bar.close()
            n = int(next(iter(vectors.values()))[0].shape[0]) if vectors else 0
            if n < 8:
                which = (
                    ""
                    if self.contributing_labels is None
                    else f" with labels {list(self.contributing_labels)}"
                )
                raise ValueError(
                    f"TreeProbeRegularization: only {n} training sentences{which} of at least 2 words were found; "
                    "the probe's pre-training and layer='auto' need at least 8 (use init='random' and an int layer)"
                )
            bar = _Progress(show, self.budget.epochs, "tree probe: fitting probes (epochs)")
            try:
                results = layer_probe_metrics(
                    vectors, self.targets, self.budget, self.rank, self.seed, progress=bar
                )
            finally:
                bar.close()
            metrics = {layer: float(r.val_loss) for layer, r in results.items()}
            layer = pick_layer(metrics, self.auto_pick) if self.layer == "auto" else candidates[0]
            proj = results[layer].probe.proj.detach().cpu().clone()
            return {
                "layer": int(layer),
                "layer_metrics": metrics,
                "pretrain_val_loss": metrics[layer],
                "sentences": n,
                "seconds": time.perf_counter() - start,
                "proj": proj,
            }

        with torch.random.fork_rng(devices=[]):
            pl_module.eval()
            try:
                result = run_on_rank_zero_and_broadcast(
                    prepare, is_global_zero=trainer.is_global_zero, broadcast=trainer.strategy.broadcast
                )
            finally:
                pl_module.train(was_training)
        proj = result.pop("proj")
        self._loss.layer = int(result["layer"])
        if self.init == "pretrained":
            with torch.no_grad():
                self._loss.probe.proj.copy_(proj.to(self._loss.probe.proj))
        self.preparation = result
        self._prepared = True
        where = "auto-picked (" + self.auto_pick + ")" if self.layer == "auto" else "given"
        rank_zero_info(
            f"TreeProbeRegularization: layer {result['layer']} ({where}); starting-model probe metric "
            + ", ".join(f"{k}: {v:.4f}" for k, v in result["layer_metrics"].items())
            + f"; {result['sentences']} sentences, {result['seconds']:.1f} s"
            + (
                "; probe initialised from the fit"
                if self.init == "pretrained"
                else "; probe kept at its random init"
            )
        )

    # ------------------------------------------------------------------ checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"prepared": self._prepared, "preparation": self.preparation}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._prepared = bool(state_dict.get("prepared", False))
        self.preparation = state_dict.get("preparation")
        if self._loss is not None and self.preparation is not None:
            self._loss.layer = int(self.preparation["layer"])
