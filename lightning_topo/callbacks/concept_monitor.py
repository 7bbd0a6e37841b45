r"""
Concept alignment monitor
=========================

How fine-tuning transforms each layer's latent concepts (Durrani et al. 2022): the concepts of
the pre-trained model at fit start, then every ``every_n_epochs`` the fine-tuned model's
concepts on the same tokens, how many still match a pre-trained concept, how many became
*polar* (aligned to one output class) and how many align with human-defined label sets.

The callback only decides *when* to measure and *what* to log: tokens and word pooling come
from :mod:`lightning_topo.tokens`, the numbers from :mod:`lightning_topo.scores.concepts`,
the figures from :mod:`lightning_topo.plots_concepts`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from typing_extensions import override

from lightning_topo.encoding import EncodedBatch, encode_batch
from lightning_topo.scores.concepts import default_n_concepts, describe_layer, discover_concepts
from lightning_topo.tokens import (
    LABEL_SETS,
    TokenSet,
    build_token_set,
    concept_triggers,
    token_activations,
    token_labels,
    trigger_words,
)

__all__ = ["ConceptAlignmentMonitor"]

_OFFLINE_SETS = tuple(s for s in LABEL_SETS if s != "class")


class ConceptAlignmentMonitor(Callback):
    r"""Latent concepts per layer, their match with the pre-trained model's and their alignment.

    At the start of training (before the first step, after a checkpoint is restored) it draws a
    fixed token set from the validation split (:func:`~lightning_topo.tokens.build_token_set`)
    and clusters the model *as it is* -- the pre-trained reference -- on each selected layer
    (Ward, :func:`~lightning_topo.scores.concepts.discover_concepts`). At the end of every
    ``every_n_epochs``-th validation it clusters the fine-tuned model on the same tokens and
    logs, for each selected layer ``i``:

    * ``concepts/matched/layer_{i}`` -- share of the concepts matched to a pre-trained concept
      (at least ``theta`` of the tokens inside one);
    * ``concepts/polar/layer_{i}`` -- share of the concepts aligned to one output class;
    * ``concepts/aligned/{label_set}/layer_{i}`` -- share aligned to a label of each set.

    The token vectors come from the validation forward pass when ``validation_step`` returns
    the :class:`~lightning_topo.encoding.EncodedBatch` (single process); otherwise, and for the
    reference, one small forward pass over the token set's sentences is run. Each measurement
    writes ``concepts_epoch{E}_step{S}.json`` (``concepts_reference.json`` for the reference)
    to ``<trainer.log_dir>/concepts/``: every concept's most frequent words, its polar class,
    its alignments and the pre-trained concept it matches. At the end of ``fit`` the words of
    the most polar top-layer concept of each class are prepended to validation sentences of the
    other classes (:func:`~lightning_topo.tokens.concept_triggers`); the accuracy drops are sent
    to the loggers as ``concepts/trigger_drop`` and ``concepts/random_drop`` (same number of
    random words), and figures ``concepts_matched.png`` and ``concepts_polar.png`` are written.

    Args:
        every_n_epochs: measure when ``(current_epoch + 1) % every_n_epochs == 0``.
        layers: hidden-state index, list of indices, or ``"all"`` (0 = embeddings). Default ``"all"``.
        max_tokens: size of the token set. Default 1000.
        max_per_word: tokens per lower-cased word form. Default 10.
        n_concepts: concepts per layer; ``None``: ``min(600, tokens // 20)``.
        theta: alignment and matching threshold (inclusive). Default 0.9.
        label_sets: subset of ``("lexical", "suffix", "casing", "punctuation", "number")``,
            plus ``"upos"`` when ``conllu_file`` is given (added automatically).
        conllu_file: CoNLL-U file of the validation text for UPOS alignment.
        split: datamodule split to draw tokens and trigger sentences from. Default ``"val"``.
        seed: token-set and trigger seed.
        top_words: words listed per concept in the JSON files.
        triggers: run the trigger experiment at the end of fit.
        trigger_words: words per trigger. trigger_sentences: sentences per class.
        plots: write the figures at the end of fit.
        overwrite: allow a fresh run to replace concept files already in the output folder.

    The datamodule must provide ``split_texts(split)``, ``split_labels(split)``, a fast
    ``tokenizer`` and ``max_length`` (as :class:`~lightning_topo.models.TextClassificationDataModule`).

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
        label_sets: Sequence[str] = _OFFLINE_SETS,
        conllu_file: str | None = None,
        split: str = "val",
        seed: int = 0,
        top_words: int = 10,
        triggers: bool = True,
        trigger_words: int = 5,
        trigger_sentences: int = 64,
        plots: bool = True,
        overwrite: bool = False,
    ) -> None:
        super().__init__()
        label_sets = (label_sets,) if isinstance(label_sets, str) else tuple(label_sets)
        self._check_args(every_n_epochs, layers, max_tokens, n_concepts, theta, label_sets, conllu_file)
        self.every_n_epochs = every_n_epochs
        self.layers = layers if isinstance(layers, int | str) else [int(x) for x in layers]
        self.max_tokens, self.max_per_word, self.n_concepts = max_tokens, max_per_word, n_concepts
        self.theta = float(theta)
        self.label_sets = label_sets + (("upos",) if conllu_file and "upos" not in label_sets else ())
        self.conllu_file, self.split, self.seed, self.top_words = (
            conllu_file,
            split,
            int(seed),
            int(top_words),
        )
        self.triggers, self.trigger_words, self.trigger_sentences = triggers, trigger_words, trigger_sentences
        self.plots, self.overwrite = plots, overwrite
        #: Pre-trained concept ids ``{layer: (n_tokens,)}``; restored from checkpoints.
        self.reference: dict[int, Tensor] | None = None
        #: One record per measurement: ``{"epoch", "global_step", "layers": {layer: shares}, "file"}``.
        self.history: list[dict[str, Any]] = []
        #: Result of the trigger experiment (``None`` until the end of fit).
        self.trigger_result: dict[str, Any] | None = None
        #: Wall time of each measurement in this process (not saved): ``{"what", "forward_s", "cluster_s"}``.
        self.timings: list[dict[str, Any]] = []
        self._last: dict[int, Tensor] | None = None
        self._fingerprint: str | None = None
        self._tokens: TokenSet | None = None
        self._labels: dict[str, list] = {}
        self._capture: dict[int, dict[int, Tensor]] | None = None
        self._lookup: dict[tuple[int, ...], int] = {}
        self._layer_ids: list[int] = []
        self._texts: list[str] = []
        self._sent_labels: list[int] = []
        self._tokenizer: Any = None
        self._max_length = 0

    @staticmethod
    def _check_args(every_n_epochs, layers, max_tokens, n_concepts, theta, label_sets, conllu_file) -> None:
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive int; got {every_n_epochs!r}")
        if isinstance(layers, str) and layers != "all":
            raise ValueError(f"layers must be an int, a list of ints or 'all'; got {layers!r}")
        if not isinstance(layers, int | str) and not list(layers):
            raise ValueError("layers must name at least one layer; got an empty list")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2:
            raise ValueError(f"max_tokens must be an int >= 2; got {max_tokens!r}")
        if n_concepts is not None and (isinstance(n_concepts, bool) or not 1 <= n_concepts <= max_tokens):
            raise ValueError(
                f"n_concepts must be in [1, max_tokens={max_tokens}] or None; got {n_concepts!r}"
            )
        if not 0 < float(theta) <= 1:
            raise ValueError(f"theta must be in (0, 1]; got {theta!r}")
        unknown = [s for s in label_sets if s not in (*_OFFLINE_SETS, "upos")]
        if unknown:
            raise ValueError(
                f"label_sets must be a subset of {(*_OFFLINE_SETS, 'upos')}; got unknown {unknown}"
            )
        if "upos" in label_sets and not conllu_file:
            raise ValueError("label_sets has 'upos' but conllu_file is None; give a CoNLL-U file of the text")
        if conllu_file is not None and not Path(conllu_file).expanduser().is_file():
            raise FileNotFoundError(
                f"conllu_file {conllu_file!r} does not exist; give a CoNLL-U file of the text"
            )

    # ------------------------------------------------------------------ Lightning plumbing
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, max_tokens=self.max_tokens, split=self.split)

    @override
    def state_dict(self) -> dict[str, Any]:
        def ids(d):
            return None if d is None else {int(k): v.tolist() for k, v in d.items()}

        return {
            "fingerprint": self._fingerprint,
            "reference": ids(self.reference),
            "last": ids(self._last),
            "history": deepcopy(self.history),
            "trigger_result": deepcopy(self.trigger_result),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        def ids(d):
            return None if d is None else {int(k): torch.tensor(v, dtype=torch.long) for k, v in d.items()}

        self._fingerprint = state_dict.get("fingerprint")
        self.reference = ids(state_dict.get("reference"))
        self._last = ids(state_dict.get("last"))
        self.history = deepcopy(state_dict.get("history", []))
        self.trigger_result = deepcopy(state_dict.get("trigger_result"))

    def _should_measure(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or self._tokens is None:
            return False
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _out_dir(self, trainer: pl.Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir) / "concepts"

    # ------------------------------------------------------------------ setup: token set, labels
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        needed = ("split_texts", "split_labels", "tokenizer", "max_length")
        missing = [n for n in needed if not hasattr(dm, n)]
        if missing:
            raise ValueError(
                f"ConceptAlignmentMonitor needs a datamodule with {needed} (as TextClassificationDataModule); "
                f"{type(dm).__name__} lacks {missing}"
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
        self._tokens, self._texts, self._sent_labels = ts, texts, labels
        self._tokenizer, self._max_length = dm.tokenizer, int(dm.max_length)
        self._lookup = {tuple(ids): i for i, ids in enumerate(ts.input_ids)}
        with torch.no_grad():
            probe = {
                "input_ids": torch.tensor(ts.input_ids[:1]),
                "attention_mask": torch.ones(1, len(ts.input_ids[0])),
            }
            self._layer_ids = self._resolve_layers(len(encode_batch(pl_module, probe).hidden_states))

    def _resolve_layers(self, n_hidden: int) -> list[int]:
        layers = list(range(n_hidden)) if self.layers == "all" else self.layers
        layers = [layers] if isinstance(layers, int) else layers
        bad = [x for x in layers if not -n_hidden <= x < n_hidden]
        if bad:
            raise ValueError(f"layers {bad} out of range: the model has hidden states 0..{n_hidden - 1}")
        return sorted({x % n_hidden for x in layers})

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._tokens is not None
        if self.reference is not None:
            if self._fingerprint != self._tokens.fingerprint:
                raise ValueError(
                    "ConceptAlignmentMonitor: the checkpoint's token set differs from this run's (other data, "
                    "split, max_tokens, max_length or seed); resume with the same settings"
                )
            return
        out = self._out_dir(trainer)
        if (
            trainer.is_global_zero
            and not self.overwrite
            and out.is_dir()
            and any(out.glob("concepts_*.json"))
        ):
            raise FileExistsError(
                f"{out} already holds concept files; pass overwrite=True or use a new log dir"
            )
        self._fingerprint = self._tokens.fingerprint
        acts, forward_s = self._own_forward(pl_module)
        self.reference, _ = self._measure(trainer, acts, epoch=-1, forward_s=forward_s)

    # ------------------------------------------------------------------ measurement
    def _own_forward(self, pl_module: pl.LightningModule) -> tuple[dict[int, Tensor], float]:
        start = time.perf_counter()
        pad = self._tokenizer.pad_token_id or 0
        acts = token_activations(pl_module, self._tokens, self._layer_ids, pad_token_id=pad)
        return acts, time.perf_counter() - start

    def _measure(self, trainer: pl.Trainer, acts: dict[int, Tensor], epoch: int, forward_s: float):
        ts = self._tokens
        start = time.perf_counter()
        k = self.n_concepts or default_n_concepts(ts.n_tokens)
        ids = {layer: discover_concepts(acts[layer], k) for layer in self._layer_ids}
        num_classes = max(int(ts.classes.max()) + 1, 2)
        layers = {}
        for layer in self._layer_ids:
            ref = None if self.reference is None else self.reference[layer]
            layers[layer] = describe_layer(
                ids[layer],
                ts.words,
                ts.token_classes,
                num_classes,
                self._labels,
                ref,
                self.theta,
                self.top_words,
            )
        self.timings.append(
            {"what": "reference" if epoch < 0 else f"epoch {epoch}", "forward_s": forward_s,
             "cluster_s": time.perf_counter() - start}
        )  # fmt: skip
        record = {
            "epoch": epoch,
            "global_step": int(trainer.global_step),
            "layers": {layer: {k: v for k, v in d.items() if k != "concepts"} for layer, d in layers.items()},
        }
        name = (
            "concepts_reference.json"
            if epoch < 0
            else f"concepts_epoch{epoch}_step{trainer.global_step}.json"
        )
        record["file"] = name
        if trainer.is_global_zero:
            self._write_json(self._out_dir(trainer) / name, record, layers, k)
        self.history = [
            r for r in self.history if (r["epoch"], r["global_step"]) != (epoch, record["global_step"])
        ]
        self.history.append(record)
        return ids, record

    def _write_json(self, path: Path, record: dict, layers: dict, k: int) -> None:
        payload = {
            "model": "pre-trained" if record["epoch"] < 0 else "fine-tuned",
            "epoch": record["epoch"],
            "global_step": record["global_step"],
            "theta": self.theta,
            "n_tokens": self._tokens.n_tokens,
            "n_sentences": len(self._tokens.texts),
            "n_concepts": k,
            "label_sets": list(self.label_sets),
            "layers": {str(layer): d for layer, d in layers.items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)

    # The validation forward pass is reused: rows whose token ids equal a token-set sentence's
    # give that sentence's word vectors, so no second pass is needed (single process).
    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        use = self._should_measure(trainer) and self.split == "val" and trainer.world_size == 1
        self._capture = {} if use else None

    @override
    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if self._capture is None:
            return
        if not isinstance(outputs, EncodedBatch) or dataloader_idx != 0:
            self._capture = None
            return
        mask = outputs.attention_mask.bool().cpu()
        ids = batch["input_ids"].cpu()
        for row in range(ids.shape[0]):
            sent = self._lookup.get(tuple(ids[row][mask[row]].tolist()))
            if sent is None:
                continue
            sel = self._tokens.sentence == sent
            pieces = self._tokens.piece[sel]
            hidden = outputs.hidden_states
            self._capture[sent] = {
                layer: hidden[layer][row, pieces.to(hidden[layer].device)].detach().float().cpu()
                for layer in self._layer_ids
            }

    def _captured(self) -> dict[int, Tensor] | None:
        cap, self._capture = self._capture, None
        if cap is None or len(cap) != len(self._tokens.texts):
            return None
        order = range(len(self._tokens.texts))
        return {layer: torch.cat([cap[s][layer] for s in order]) for layer in self._layer_ids}

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_measure(trainer) or self.reference is None:
            self._capture = None
            return
        start = time.perf_counter()
        acts = self._captured()
        forward_s = time.perf_counter() - start
        if acts is None:
            acts, forward_s = self._own_forward(pl_module)
        self._last, record = self._measure(trainer, acts, int(trainer.current_epoch), forward_s)
        for layer, shares in record["layers"].items():
            values = {
                f"concepts/matched/layer_{layer}": shares["matched"],
                f"concepts/polar/layer_{layer}": shares["polar"],
            }
            values.update({f"concepts/aligned/{n}/layer_{layer}": v for n, v in shares["aligned"].items()})
            for name, value in values.items():
                pl_module.log(name, float(value), on_step=False, on_epoch=True, logger=bool(trainer.loggers))

    # ------------------------------------------------------------------ end of fit: triggers, figures
    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._tokens is None or self._last is None:
            return
        if self.triggers:
            self._run_triggers(trainer, pl_module)
        if self.plots and trainer.is_global_zero:
            from lightning_topo.plots_concepts import write_concept_figures

            write_concept_figures(self.history, self._out_dir(trainer))

    def _run_triggers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ts = self._tokens
        top = self._layer_ids[-1]
        num_classes = max(int(ts.classes.max()) + 1, 2)
        words = trigger_words(self._last[top], ts, num_classes, self.trigger_words)
        start = time.perf_counter()
        result = concept_triggers(
            pl_module, self._tokenizer, self._texts, self._sent_labels, words, ts.words,
            max_length=self._max_length, max_sentences=self.trigger_sentences, seed=self.seed,
        )  # fmt: skip
        result["layer"] = top
        result["per_class"] = {str(c): v for c, v in result["per_class"].items()}
        self.trigger_result = result
        self.timings.append({"what": "triggers", "forward_s": time.perf_counter() - start, "cluster_s": 0.0})
        metrics = {
            "concepts/trigger_drop": result["trigger_drop"],
            "concepts/random_drop": result["random_drop"],
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
        if trainer.is_global_zero:
            path = self._out_dir(trainer) / "concepts_triggers.json"
            tmp = path.with_name(f".{path.name}.tmp")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, path)
