r"""
Concept alignment monitor
=========================

How fine-tuning transforms each layer's latent concepts (Durrani et al. 2022): the concepts of
the pre-trained model at the start of training, then at each validation run of a measured
epoch the fine-tuned model's concepts on the same tokens, how many still match a pre-trained
concept, how many became *polar* (aligned to one output class) and how many align with
human-defined label sets.

The callback decides *when* to measure and *what* to log, nothing more: the token set and the
word vectors come from :mod:`lightning_topo.representations.tokens`, the numbers from
:mod:`lightning_topo.scores.concepts` and :func:`lightning_topo.scores.correlation_metrics`, the
figures from :mod:`lightning_topo.plots.concepts` and :mod:`lightning_topo.plots`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from copy import deepcopy
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_topo import plots
from lightning_topo.callbacks.lens import LensMonitor
from lightning_topo.encoding import EncodedBatch, encode_batch
from lightning_topo.plots.concepts import write_concept_figures
from lightning_topo.representations import check_layers, resolve_layers
from lightning_topo.representations.tokens import (
    LABEL_SETS,
    TokenSet,
    build_token_set,
    concept_triggers,
    token_activations,
    token_labels,
    trigger_words,
)
from lightning_topo.scores.checks import check_bool, check_choice, check_int, check_real, check_seed
from lightning_topo.scores.concepts import (
    concept_metric_names,
    concept_metrics,
    default_n_concepts,
    describe_layer,
    discover_concepts,
)

__all__ = ["ConceptAlignmentMonitor"]

#: Label sets the monitor can align with (``"class"`` is always measured, as ``polar``).
ALIGNABLE: tuple[str, ...] = (*(s for s in LABEL_SETS if s != "class"), "upos")
_DATAMODULE_NEEDS = ("split_texts", "split_labels", "tokenizer", "max_length")


class ConceptAlignmentMonitor(LensMonitor):
    r"""Latent concepts per layer, their match with the pre-trained model's and their alignment.

    At the start of training (before the first step; after a checkpoint is restored) it draws a
    fixed token set from the validation split (:func:`~lightning_topo.representations.tokens.build_token_set`)
    and clusters the model *as it is* -- the pre-trained reference -- on each selected layer
    (Ward, :func:`~lightning_topo.scores.concepts.discover_concepts`). At the end of every
    validation run of a measured epoch (never the sanity check) it clusters the fine-tuned
    model on the same tokens and logs, with ``pl_module.log``, for each selected layer ``i``:

    * ``concepts/matched/layer_{i}`` -- share of the concepts matched to a pre-trained concept
      (at least ``theta`` of the concept's tokens inside one);
    * ``concepts/polar/layer_{i}`` -- share of the concepts aligned to one output class;
    * ``concepts/matched_chance/layer_{i}``, ``concepts/polar_chance/layer_{i}`` -- the same
      shares expected by chance for concepts of these sizes (small concepts match and align by
      chance; :func:`~lightning_topo.scores.concepts.chance_match_share`, ``chance_polar_share``);
    * ``concepts/aligned/{label_set}/layer_{i}`` -- share aligned to a label of each set;
    * from ``on_train_epoch_end``, once 3 measurements with ``monitor_against`` exist:
      ``concepts/{matched,polar}/layer_{i}/{pearson,spearman}_{metric}``
      (:func:`~lightning_topo.scores.correlation_metrics`).

    **One forward pass**: when ``validation_step`` returns its
    :class:`~lightning_topo.encoding.EncodedBatch`, the rows whose token ids equal a token-set
    sentence's give the word vectors; otherwise (and for the reference, and under DDP) one small
    forward pass over the token set's sentences runs. **DDP**: global rank 0 measures and
    ``trainer.strategy.broadcast`` hands the values to every process. **Files** (global rank 0,
    written atomically to ``<trainer.log_dir>/concepts/``): ``concepts_reference.json`` and
    ``concepts_epoch{E}_step{S}.json`` per measurement (every concept's most frequent words, its
    polar class, its alignments and the pre-trained concept it matches); at the end of ``fit``
    ``concepts_triggers.json`` and the figures ``concepts_matched.png``/``concepts_polar.png``
    (also sent to a ``WandbLogger`` with a ``concepts/history`` table). **Triggers** (end of
    ``fit``): the words of the most polar top-layer concept of each class are prepended to
    validation sentences of the other classes (:func:`~lightning_topo.representations.tokens.concept_triggers`);
    the loggers get ``concepts/trigger_drop`` and ``concepts/random_drop`` (as many random
    words). ``state_dict`` keeps the reference, the last concepts and the history, so a resumed
    run continues against the same reference. The shared machinery (history, correlations,
    figures, state) is :class:`~lightning_topo.callbacks.lens.LensMonitor`'s.

    Args:
        every_n_epochs: measure in epochs where ``(current_epoch + 1) % every_n_epochs == 0``.
        layers: hidden-state index, list of indices or ``"all"`` (default; 0 = embeddings).
        max_tokens: size of the token set (int >= 2, default 1000).
        max_per_word: tokens per lower-cased word form (default 10; ``None``: no cap).
        n_concepts: concepts per layer; ``None`` (default): ``min(600, tokens // 20)``.
        theta: alignment and matching threshold in ``(0, 1]``, inclusive (default 0.9).
        label_sets: subset of ``("lexical", "suffix", "casing", "punctuation", "number",
            "upos")`` (default all but ``upos``); ``"upos"`` is added when ``conllu_file`` is given.
        conllu_file: CoNLL-U file of the validation text for UPOS alignment.
        split: datamodule split for the tokens and the trigger sentences (default ``"val"``).
        seed: token-set and trigger seed (int >= 0, default 0).
        top_words: words listed per concept in the JSON files (default 10).
        triggers: run the trigger experiment at the end of ``fit`` (default ``True``).
        trigger_words: words per trigger (default 5).
        trigger_sentences: sentences per class in the trigger experiment (default 64).
        monitor_against: metric recorded next to the shares and correlated with them (default
            ``"val/acc"``; ``None``: none).
        plots: write the figures at the end of ``fit`` (default ``True``).
        overwrite: let a fresh run replace concept files already in the output folder.
        log_prefix: first component of every metric name, the file folder, the W&B keys
            (default ``"concepts"``).

    NaN or infinite word vectors log NaN for every name (with one warning) so that
    ``EarlyStopping(check_finite=True)`` can stop; a non-finite *pre-trained* model is refused.

    The datamodule must provide ``split_texts(split)``, ``split_labels(split)``, a fast
    ``tokenizer`` and ``max_length`` (as :class:`~lightning_topo.models.TextClassificationDataModule`).

    Raises:
        TypeError / ValueError / FileNotFoundError: an invalid argument, at construction;
        ValueError at fit start (before training): a datamodule without those members, an empty
        token set, ``n_concepts`` above the token count, a CoNLL-U file that does not match the
        text, or a resumed run whose token set differs; FileExistsError: concept files exist.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_topo.callbacks import ConceptAlignmentMonitor
        >>> trainer = Trainer(callbacks=[ConceptAlignmentMonitor(layers="all", max_tokens=1000)])
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        layers: int | Sequence[int] | str = "all",
        max_tokens: int = 1000,
        max_per_word: int | None = 10,
        n_concepts: int | None = None,
        theta: float = 0.9,
        label_sets: Sequence[str] = ALIGNABLE[:-1],
        conllu_file: str | None = None,
        split: str = "val",
        seed: int = 0,
        top_words: int = 10,
        triggers: bool = True,
        trigger_words: int = 5,
        trigger_sentences: int = 64,
        monitor_against: str | None = "val/acc",
        plots: bool = True,
        overwrite: bool = False,
        log_prefix: str = "concepts",
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs, monitor_against=monitor_against, plots=plots, log_prefix=log_prefix
        )
        self.layers = check_layers(layers)
        self.max_tokens = check_int(max_tokens, "max_tokens", minimum=2)
        self.max_per_word = check_int(max_per_word, "max_per_word", minimum=1, allow_none=True)
        self.n_concepts = check_int(n_concepts, "n_concepts", minimum=1, allow_none=True)
        if self.n_concepts is not None and self.n_concepts > self.max_tokens:
            raise ValueError(f"n_concepts must be <= max_tokens={max_tokens} or None; got {n_concepts!r}")
        self.theta = check_real(theta, "theta", minimum=0.0, strict=True)
        if self.theta > 1:
            raise ValueError(f"theta must be in (0, 1]; got {theta!r}")
        self.label_sets = self._check_label_sets(label_sets, conllu_file)
        self.conllu_file, self.split = conllu_file, check_choice(split, "split", ("val", "train", "test"))
        self.seed, self.top_words = check_seed(seed), check_int(top_words, "top_words", minimum=1)
        self.triggers = check_bool(triggers, "triggers")
        self.trigger_words = check_int(trigger_words, "trigger_words", minimum=1)
        self.trigger_sentences = check_int(trigger_sentences, "trigger_sentences", minimum=1)
        self.overwrite = check_bool(overwrite, "overwrite")
        #: Pre-trained concept ids ``{layer: (n_tokens,)}`` and their shares; restored from checkpoints.
        self.reference: dict[int, Tensor] | None = None
        self.reference_scores: dict[str, float] = {}
        #: One record per measurement: ``{"epoch", "step", "scores": {name: float}, "monitor", "file"}``.
        self.history: list[dict[str, Any]]
        #: The trigger experiment's result (``None`` until the end of ``fit``).
        self.trigger_result: dict[str, Any] | None = None
        self._warned_nan = False
        self._last: dict[int, Tensor] | None = None
        self._fingerprint: str | None = None
        self._tokens: TokenSet | None = None
        self._data: dict[str, Any] = {}
        self._labels: dict[str, list] = {}
        self._layer_ids: list[int] = []
        self._lookup: dict[tuple[int, ...], list[int]] = {}
        self._capture: dict[int, dict[int, Tensor]] | None = None
        self._out = Path(".")

    @staticmethod
    def _check_label_sets(label_sets: Sequence[str], conllu_file: str | None) -> tuple[str, ...]:
        sets = (label_sets,) if isinstance(label_sets, str) else tuple(label_sets)
        unknown = [s for s in sets if s not in ALIGNABLE]
        if unknown:
            raise ValueError(f"label_sets must be a subset of {ALIGNABLE}; got unknown {unknown}")
        if "upos" in sets and not conllu_file:
            raise ValueError("label_sets has 'upos' but conllu_file is None; give a CoNLL-U file of the text")
        if conllu_file is not None and not Path(conllu_file).expanduser().is_file():
            raise FileNotFoundError(
                f"conllu_file {conllu_file!r} does not exist; give a CoNLL-U file of the text"
            )
        return sets + (("upos",) if conllu_file and "upos" not in sets else ())

    # ------------------------------------------------------------------ state
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            layers=self.layers, max_tokens=self.max_tokens, split=self.split, log_prefix=self.log_prefix
        )

    def _concept_settings(self) -> dict[str, Any]:
        """The settings the reference and the history depend on (saved with them)."""
        keys = ("layers", "max_tokens", "max_per_word", "n_concepts", "theta", "label_sets", "split", "seed")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(self, k)) for k in keys)}

    @override
    def state_dict(self) -> dict[str, Any]:
        def ids(d):
            return None if d is None else {int(k): v.tolist() for k, v in d.items()}

        return {
            **super().state_dict(),  # history, monitor_against
            "settings": self._concept_settings(),
            "fingerprint": self._fingerprint,
            "reference": ids(self.reference),
            "reference_scores": dict(self.reference_scores),
            "last": ids(self._last),
            "trigger_result": deepcopy(self.trigger_result),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        def ids(d):
            return None if d is None else {int(k): torch.tensor(v, dtype=torch.long) for k, v in d.items()}

        saved = state_dict.get("settings", self._concept_settings())
        if saved != self._concept_settings():
            rank_zero_warn(
                f"ConceptAlignmentMonitor: the checkpoint's history was measured with {saved}, this monitor "
                f"has {self._concept_settings()}; the saved settings are restored so that the history stays one series"
            )
            for key, value in saved.items():
                setattr(self, key, tuple(value) if key == "label_sets" else value)
        super().load_state_dict(state_dict)  # history, monitor_against
        self._fingerprint = state_dict.get("fingerprint")
        self.reference, self._last = ids(state_dict.get("reference")), ids(state_dict.get("last"))
        self.reference_scores = dict(state_dict.get("reference_scores", {}))
        self.trigger_result = deepcopy(state_dict.get("trigger_result"))

    @override
    def _should_measure(self, trainer: pl.Trainer) -> bool:
        fitting = trainer.state.fn == TrainerFn.FITTING and self.reference is not None
        return fitting and super()._should_measure(trainer)

    # ------------------------------------------------------------------ fit start: tokens, reference
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        missing = [n for n in _DATAMODULE_NEEDS if not hasattr(dm, n)]
        if missing:
            raise ValueError(
                f"ConceptAlignmentMonitor needs a datamodule with {_DATAMODULE_NEEDS} (as "
                f"TextClassificationDataModule); {type(dm).__name__} lacks {missing}"
            )
        texts, labels = dm.split_texts(self.split), dm.split_labels(self.split)
        ts = build_token_set(
            texts, labels, dm.tokenizer, self.max_tokens, dm.max_length, self.max_per_word, self.seed
        )
        if self.n_concepts is not None and self.n_concepts > ts.n_tokens:
            raise ValueError(
                f"n_concepts={self.n_concepts} is larger than the token set ({ts.n_tokens} tokens from the "
                f"{self.split!r} split); lower n_concepts or leave it None"
            )
        self._labels = {name: token_labels(ts, name, self.conllu_file) for name in self.label_sets}
        self._tokens, self._lookup = ts, {}
        for i, ids in enumerate(ts.input_ids):  # a text may occur twice in the split
            self._lookup.setdefault(tuple(ids), []).append(i)
        self._data = {
            "texts": texts,
            "labels": labels,
            "tokenizer": dm.tokenizer,
            "max_length": int(dm.max_length),
        }
        with torch.no_grad():
            probe = {
                "input_ids": torch.tensor(ts.input_ids[:1]),
                "attention_mask": torch.ones(1, len(ts.input_ids[0])),
            }
            num_layers = len(encode_batch(pl_module, probe).hidden_states) - 1
        self._layer_ids = sorted(resolve_layers(self.layers, num_layers))

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._tokens is None:
            return
        # trainer.log_dir broadcasts: every process asks once here, rank 0 alone uses it later
        self._out = self.plot_dir(trainer)
        if self.reference is not None:  # restored from a checkpoint
            if self._fingerprint != self._tokens.fingerprint:
                raise ValueError(
                    "ConceptAlignmentMonitor: the checkpoint's token set differs from this run's (other data, "
                    "split, max_tokens, max_per_word, max_length or seed); resume with the same settings"
                )
            return
        out = self._out
        taken = not self.overwrite and out.is_dir() and any(out.glob("concepts_*.json"))
        if trainer.strategy.broadcast(taken):  # rank 0 decides, every process raises
            raise FileExistsError(
                f"{out} already holds concept files; pass overwrite=True or use a new log dir"
            )
        self._fingerprint = self._tokens.fingerprint
        self.reference, self.reference_scores = self._cluster_on_rank_zero(trainer, pl_module, None, epoch=-1)

    # ------------------------------------------------------------------ validation runs
    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        use = self._should_measure(trainer) and self.split == "val" and trainer.world_size == 1
        self._capture = {} if use else None

    @override
    def _on_validation_batch(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, encoded: EncodedBatch | None, batch: Any
    ) -> None:
        if self._capture is None:
            return
        if encoded is None:
            self._capture = None  # validation_step does not share its hidden states: own forward later
            return
        mask, ids = encoded.attention_mask.bool().cpu(), batch["input_ids"].cpu()
        for row in range(ids.shape[0]):
            for sent in self._lookup.get(tuple(ids[row][mask[row]].tolist()), ()):
                pieces = self._tokens.piece[self._tokens.sentence == sent]
                self._capture[sent] = {
                    layer: encoded.hidden_states[layer][row, pieces].detach().float().cpu()
                    for layer in self._layer_ids
                }

    def _captured(self) -> dict[int, Tensor] | None:
        cap, self._capture = self._capture, None
        if cap is None or len(cap) != len(self._tokens.texts):
            return None
        return {layer: torch.cat([cap[s][layer] for s in range(len(cap))]) for layer in self._layer_ids}

    @override
    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        ids, values = self._cluster_on_rank_zero(trainer, pl_module, self._captured(), trainer.current_epoch)
        self._last = ids if ids is not None else self._last
        return values

    @override
    def _record_fields(self, trainer: pl.Trainer) -> dict[str, Any]:
        return {"file": self._file_name(trainer.current_epoch, trainer.global_step)}

    @override
    def _correlated(self, names: list[str]) -> list[str]:
        heads = (self._name("matched", ""), self._name("polar", ""))
        return [n for n in names if n.startswith(heads)]

    # ------------------------------------------------------------------ one measurement
    def _cluster_on_rank_zero(self, trainer, pl_module, acts: dict[int, Tensor] | None, epoch: int):
        """Concept ids per layer and the logged shares (global rank 0 measures, every rank gets them)."""
        return self._on_rank_zero(trainer, partial(self._cluster, trainer, pl_module, acts, epoch))

    def _cluster(
        self, trainer, pl_module, acts, epoch: int
    ) -> tuple[dict[int, Tensor] | None, dict[str, float]]:
        if acts is None:
            pad = self._data["tokenizer"].pad_token_id or 0
            acts = token_activations(pl_module, self._tokens, self._layer_ids, pad_token_id=pad)
        if not all(bool(torch.isfinite(a).all()) for a in acts.values()):
            return None, self._nan_values(epoch)
        ts = self._tokens
        k = self.n_concepts or default_n_concepts(ts.n_tokens)
        num_classes = max(int(ts.classes.max()) + 1, 2)
        ids, layers = {}, {}
        for layer in self._layer_ids:
            ids[layer] = discover_concepts(acts[layer], k)
            ref = None if self.reference is None else self.reference[layer]
            layers[layer] = describe_layer(
                ids[layer], ts.words, ts.token_classes, num_classes, self._labels, ref, self.theta, self.top_words
            )  # fmt: skip
        self._write_json(self._out / self._file_name(epoch, trainer.global_step), epoch, trainer, layers, k)
        return ids, {self._name(n): v for n, v in concept_metrics(layers).items()}

    def _nan_values(self, epoch: int) -> dict[str, float]:
        """NaN for every logged name (the word vectors are not finite); the pre-trained model is refused."""
        if epoch < 0:
            raise ValueError(
                "ConceptAlignmentMonitor: the model's word vectors on the token set have NaN or inf values "
                "before training; check the checkpoint (nothing was trained)"
            )
        if not self._warned_nan:
            self._warned_nan = True
            rank_zero_warn(
                "ConceptAlignmentMonitor logs NaN: the word vectors have NaN or inf values. "
                "EarlyStopping(check_finite=True) stops on it."
            )
        names = concept_metric_names(self._layer_ids, self.label_sets, matched=True)
        return {self._name(n): math.nan for n in names}

    @staticmethod
    def _file_name(epoch: int, step: int) -> str:
        return "concepts_reference.json" if epoch < 0 else f"concepts_epoch{epoch}_step{step}.json"

    def _write_json(self, path: Path, epoch: int, trainer: pl.Trainer, layers: dict, k: int) -> None:
        payload = {
            "model": "pre-trained" if epoch < 0 else "fine-tuned",
            "epoch": epoch,
            "step": int(trainer.global_step),
            "theta": self.theta,
            "n_tokens": self._tokens.n_tokens,
            "n_sentences": len(self._tokens.texts),
            "n_concepts": k,
            "label_sets": list(self.label_sets),
            "layers": {str(layer): d for layer, d in layers.items()},
        }
        _write_atomic(path, payload)

    # ------------------------------------------------------------------ end of fit
    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._tokens is None or self._last is None:
            return
        if self.triggers:
            self.trigger_result = self._on_rank_zero(trainer, partial(self._run_triggers, trainer, pl_module))
            metrics = {self._name(k): self.trigger_result[k] for k in ("trigger_drop", "random_drop")}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
                logger.save()
        super().on_fit_end(trainer, pl_module)  # figures

    def _run_triggers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        ts, top = self._tokens, self._layer_ids[-1]
        words = trigger_words(self._last[top], ts, max(int(ts.classes.max()) + 1, 2), self.trigger_words)
        result = concept_triggers(
            pl_module, self._data["tokenizer"], self._data["texts"], self._data["labels"], words, ts.words,
            max_length=self._data["max_length"], max_sentences=self.trigger_sentences, seed=self.seed,
        )  # fmt: skip
        result["layer"] = top
        result["per_class"] = {str(c): v for c, v in result["per_class"].items()}
        _write_atomic(self._out / "concepts_triggers.json", result)
        return result

    @override
    def _write_figures(self, trainer: pl.Trainer, out: Path) -> dict[str, Path]:
        reference = {"epoch": -1, "step": 0, "scores": self.reference_scores}
        written = write_concept_figures([reference, *self.history], out, prefix=self.log_prefix)
        images = {self._name("plots", stem): path for stem, path in written.items()}
        monitor = self.monitor_against if any(r.get("monitor") is not None for r in self.history) else None
        plots.publish_to_wandb(
            trainer.loggers, images, self.history, monitor, table_key=self._name("history")
        )
        return images


def _write_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
