r"""
Concept alignment monitor
=========================

How fine-tuning transforms each layer's latent concepts (Durrani et al. 2022): the concepts of
the model as it starts training, then at each validation run of a measured epoch the fine-tuned
model's concepts on the same word tokens, how many still match a starting concept, how many
became *polar* (aligned to one output class) and how many align with label sets read from the
word forms.

The callback decides *when* to measure, *what* to log and which files to write; the lens is
:class:`lightning_topo.metrics.ConceptAlignment` (a torchmetrics ``Metric``), fed by forward hooks
on the Hugging Face encoder inside any LightningModule
(:class:`~lightning_topo.callbacks.lens.MetricMonitor`); the figures come from
:mod:`lightning_topo.plots.concepts`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_topo import plots
from lightning_topo.callbacks.lens import MetricMonitor
from lightning_topo.data.files import write_text_atomic
from lightning_topo.encoding import module_device
from lightning_topo.metrics import ConceptAlignment, LensResult
from lightning_topo.metrics.concepts import DEFAULT_CONCEPT_LAYERS
from lightning_topo.plots.concepts import write_concept_figures
from lightning_topo.representations.capture import CapturedBatch, HiddenStateCapture, batch_labels
from lightning_topo.representations.tokens import (
    concept_triggers_on_ids,
    form_hashes,
    pad_rows,
    select_tokens,
    sequence_words,
    trigger_words,
)
from lightning_topo.scores.checks import check_bool, check_int
from lightning_topo.scores.tree_probe import sentence_keys

__all__ = ["ConceptAlignmentMonitor"]

#: Sentences per forward pass of the monitor's own passes (reference, triggers).
_BATCH = 64


class _TokenPlan:
    """The token set chosen from tokenised batches before any forward pass (fit start).

    The same rule and pruning as :class:`~lightning_topo.metrics.ConceptAlignment` (it calls the
    same :func:`~lightning_topo.representations.tokens.select_tokens`), keeping the sentences'
    token ids instead of vectors, so that the monitor runs the model only on the ~``max_tokens /
    15`` sentences that hold the token set.
    """

    def __init__(self, metric: ConceptAlignment) -> None:
        self.metric = metric
        self.rows: dict[float, tuple[list[int], list[int] | None, int]] = {}
        self.keys: list[float] = []
        self.positions: list[int] = []
        self.forms: list[str] = []
        self.cutoff = math.inf

    def add(self, batch: Mapping[str, Any], labels: Tensor, n: int) -> None:
        ids = batch["input_ids"][:n].cpu()
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask[:n].cpu() != 0
        types = batch.get("token_type_ids")
        keys = sentence_keys(ids, mask, self.metric.seed)
        rows = [r for r, k in enumerate(keys.tolist()) if k <= self.cutoff and k not in self.rows]
        real = [ids[r][mask[r]].tolist() for r in rows]
        words, _ = sequence_words(self.metric.tokenizer, real, self.metric.special_ids)
        for i, r in enumerate(rows):
            key = float(keys[r])
            t = types[r].cpu()[mask[r]].tolist() if types is not None else None
            self.rows[key] = (real[i], t, int(labels[r]))
            for w in words[i]:
                self.keys.append(key)
                self.positions.append(w.last)
                self.forms.append(w.form)
        if len(self.keys) > 2 * self.metric.max_tokens:
            self._prune()

    def _chosen(self, keep_tail: bool) -> Tensor:
        return select_tokens(
            torch.tensor(self.keys, dtype=torch.float64), torch.tensor(self.positions), form_hashes(self.forms),
            self.metric.max_tokens, self.metric.max_per_word, keep_tail,
        )  # fmt: skip

    def _prune(self) -> None:
        keep = self._chosen(True).tolist()
        self.keys = [k for k, kept in zip(self.keys, keep, strict=True) if kept]
        self.positions = [p for p, kept in zip(self.positions, keep, strict=True) if kept]
        self.forms = [f for f, kept in zip(self.forms, keep, strict=True) if kept]
        if len(self.keys) >= self.metric.max_tokens:
            self.cutoff = max(self.keys)
        self.rows = {k: v for k, v in self.rows.items() if k <= self.cutoff}

    def sentences(self) -> list[tuple[float, tuple[list[int], list[int] | None, int]]]:
        """The sentences holding a chosen token, in key order: ``[(key, (ids, types, label))]``."""
        if not self.keys:
            return []
        chosen = self._chosen(False).tolist()
        keys = sorted({k for k, c in zip(self.keys, chosen, strict=True) if c})
        return [(k, self.rows[k]) for k in keys]


class ConceptAlignmentMonitor(MetricMonitor):
    r"""Latent concepts per layer, their match with the starting model's and their alignment.

    **Fit start** (``on_train_start``, before the first training step; after a checkpoint is
    restored): the measured split's tokenised batches are read once (no forward pass; the label
    scan of :class:`~lightning_topo.callbacks.lens.MetricMonitor`) to choose the token set -- up
    to ``max_tokens`` word tokens, at most ``max_per_word`` per word form, from sentences in a
    seeded order of their tokens -- and the encoder runs once on the ~``max_tokens / 15``
    sentences that hold it: the starting model's concepts are the *reference* (this forward is
    also the monitor's check of the hidden states). **Each measured validation run** (every
    ``every_n_epochs``; mid-epoch runs too; never the sanity check): forward hooks read the same
    tokens' vectors during the module's own validation forward, and the lens logs, for each
    selected layer ``i`` (0 = embeddings):

    * ``concepts/polar`` -- the headline: the polar share of the deepest selected layer;
    * ``concepts/matched/layer_{i}`` -- share of the concepts matched to a starting concept
      (at least ``theta`` of the concept's tokens inside one);
    * ``concepts/polar/layer_{i}`` -- share of the concepts aligned to one output class;
    * ``concepts/matched_chance/layer_{i}``, ``concepts/polar_chance/layer_{i}`` -- the same
      shares expected by chance for concepts of these sizes;
    * ``concepts/aligned/{label_set}/layer_{i}`` -- share aligned to a label of each set;
    * from ``on_train_epoch_end``, once 3 measurements with ``monitor_against`` exist:
      ``concepts/{matched,polar}/layer_{i}/{pearson,spearman}_{metric}``.

    Words come from ``input_ids`` through the tokenizer (``tokenizer=``, or the one at the
    encoder's ``name_or_path``, loaded with ``trust_remote_code=False``): **any LightningModule,
    plain DataLoaders of tokenised batches** (``input_ids``, ``attention_mask``, labels under
    ``labels``/``label`` or from ``labels_fn``). Both segments of sentence pairs are read.
    **DDP**: the states are gathered by torchmetrics, global rank 0 clusters and
    ``trainer.strategy.broadcast`` hands the values to every process.
    **Files** (global rank 0, written atomically to :meth:`files_dir`, the monitor's
    ``plot_dir``, or a fresh ``run_N`` below it when an earlier run's concept files are there):
    ``concepts_reference.json`` and ``concepts_epoch{E}_step{S}.json`` per measurement (every
    concept's most frequent words, its polar class, its alignments and the starting concept it
    matches); at the end of ``fit`` the figures ``concepts_matched.png``/``concepts_polar.png``
    (also sent to a ``WandbLogger``) and, with ``triggers=True``, ``concepts_triggers.json``.
    **Triggers** (``triggers=True``, end of ``fit``, off by default: it costs 3 x 2 x
    ``trigger_sentences`` forward passes): the words of the most polar top-layer concept of each
    class are inserted after ``[CLS]`` of validation sentences of the other classes; the loggers
    get ``concepts/trigger_drop`` and ``concepts/random_drop``. It needs a Hugging Face model
    with a classification head (``logits``); otherwise it is skipped with a warning.
    ``state_dict`` keeps the reference and the history, so a resumed run continues against the
    same reference (not recomputed from the resumed weights).

    Args:
        layers: hidden-state index, list of indices or ``"all"`` (default ``(0, -1)``: the
            embeddings and the last layer; each layer adds one clustering per measurement).
        split: ``"val"`` or ``"train"`` (the training dataloader re-read at the end of validation).
        max_samples: read at most this many sequences per measurement (per process; ``None``:
            all). Not with ``split="train"`` (a shuffled loader would give another token set).
        every_n_epochs, monitor_against, log_prefix (default ``"concepts"``), model_attr,
            labels_fn, plots: as :class:`~lightning_topo.callbacks.lens.MetricMonitor`.
        tokenizer: the fast tokenizer of the batches' ``input_ids`` (or its folder); ``None``:
            the encoder's ``name_or_path``.
        max_tokens: size of the token set (int >= 2, default 500).
        max_per_word: tokens per lower-cased word form (default 10; ``None``: no cap).
        n_concepts: concepts per layer; ``None`` (default): ``min(600, tokens // 20)``.
        theta: alignment and matching threshold in ``(0, 1]``, inclusive (default 0.9).
        label_sets: subset of ``("lexical", "suffix", "casing", "punctuation", "number")``;
            ``None``: all (``casing`` only for a cased tokenizer).
        seed: seed of the token set and of the triggers (int >= 0, default 0).
        top_words: words listed per concept in the JSON files (default 10).
        triggers: run the trigger experiment at the end of ``fit`` (default ``False``).
        trigger_words: words per trigger (default 5).
        trigger_sentences: sentences per class in the trigger experiment (default 32).

    Raises:
        TypeError / ValueError: an invalid argument, at construction; at ``setup``: no encoder,
        layers out of range, no tokenizer found; at fit start (before training): batches without
        ``input_ids`` or labels, an empty token set, ``n_concepts`` above the token count,
        non-finite hidden states, or a resumed run whose token set differs.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_topo.callbacks import ConceptAlignmentMonitor
        >>> trainer = Trainer(callbacks=[ConceptAlignmentMonitor(layers="all", max_tokens=500)])
    """

    def __init__(
        self,
        layers: int | Sequence[int] | str = DEFAULT_CONCEPT_LAYERS,
        split: str = "val",
        max_samples: int | None = None,
        every_n_epochs: int = 1,
        log_prefix: str = "concepts",
        monitor_against: str | None = "val/acc",
        model_attr: str | None = None,
        labels_fn: Callable[[Any], Any] | None = None,
        tokenizer: Any = None,
        max_tokens: int = 500,
        max_per_word: int | None = 10,
        n_concepts: int | None = None,
        theta: float = 0.9,
        label_sets: Sequence[str] | None = None,
        seed: int = 0,
        top_words: int = 10,
        triggers: bool = False,
        trigger_words: int = 5,
        trigger_sentences: int = 32,
        plots: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_tokens, self.max_per_word, self.n_concepts = max_tokens, max_per_word, n_concepts
        self.theta, self.seed, self.top_words = theta, seed, top_words
        self.label_sets = None if label_sets is None else list((label_sets,) if isinstance(label_sets, str) else label_sets)
        self.layers = list(layers) if isinstance(layers, tuple) else layers
        self.max_samples = max_samples
        self._template = self._new_metric()  # checks the lens's arguments at construction
        super().__init__(
            layers=self._template.layers, split=split, max_samples=max_samples, model_attr=model_attr,
            labels_fn=labels_fn, every_n_epochs=every_n_epochs, monitor_against=monitor_against, plots=plots,
            log_prefix=log_prefix,
        )  # fmt: skip
        self.max_tokens, self.max_per_word = self._template.max_tokens, self._template.max_per_word
        self.n_concepts, self.theta, self.seed = self._template.n_concepts, self._template.theta, self._template.seed
        self.top_words = self._template.top_words
        self.triggers = check_bool(triggers, "triggers")
        self.trigger_words = check_int(trigger_words, "trigger_words", minimum=1)
        self.trigger_sentences = check_int(trigger_sentences, "trigger_sentences", minimum=1)
        #: The starting model's logged shares (no ``matched``): the first line of the figures.
        self.reference_scores: dict[str, float] = {}
        #: The trigger experiment's result (``None`` until the end of ``fit``, or when skipped).
        self.trigger_result: dict[str, Any] | None = None
        self._plan: _TokenPlan | None = None
        self._restored: dict[str, Any] | None = None
        self._out: Path | None = None
        self._warned: set[str] = set()

    def _new_metric(self, tokenizer: Any = None) -> ConceptAlignment:
        # MetricMonitor (and _compute_on_rank_zero) sync the states on every process, compute on
        # rank 0 alone, then unsync: compute must neither sync again (sync_on_compute=False) nor
        # unsync itself (torchmetrics' compute unsyncs a synced metric unless _should_unsync is off)
        metric = ConceptAlignment(
            layers=self.layers, max_tokens=self.max_tokens, max_per_word=self.max_per_word,
            n_concepts=self.n_concepts, theta=self.theta, label_sets=self.label_sets,
            tokenizer=self.tokenizer if tokenizer is None else tokenizer, top_words=self.top_words,
            max_samples=self.max_samples, seed=self.seed, sync_on_compute=False,
        )  # fmt: skip
        metric._should_unsync = False
        return metric

    @override
    def _build_metric(self, hf_model: Any) -> ConceptAlignment:
        return self._template

    @override
    def _settings(self) -> dict[str, Any]:
        return {
            **super()._settings(),
            "max_tokens": self.max_tokens,
            "max_per_word": self.max_per_word,
            "n_concepts": self.n_concepts,
            "theta": self.theta,
            "label_sets": self.label_sets,
            "seed": self.seed,
        }

    # ------------------------------------------------------------------ files
    @override
    def _writes_files(self) -> bool:
        return True  # the concept JSON files, with or without figures

    def files_dir(self, trainer: pl.Trainer) -> Path:
        """Where this run's concept files go (chosen at fit start; every process must ask first).

        :meth:`plot_dir`, or its first free ``run_N`` sub-folder when an earlier run's concept
        files are there (they are never overwritten and a second run never fails).
        """
        if self._out is None:
            base = self.plot_dir(trainer)  # a collective call under DDP: every process asks
            out = base
            if trainer.is_global_zero:
                n = 1
                while out.is_dir() and any(out.glob("concepts_*.json")):
                    out, n = base / f"run_{n}", n + 1
            self._out = Path(trainer.strategy.broadcast(str(out)))
            if self._out != base:
                rank_zero_info(f"{type(self).__name__}: {base} holds an earlier run's concept files; writing to {self._out}")
        return self._out

    def _write_json(self, trainer: pl.Trainer, name: str, payload: Any) -> Path | None:
        """The one place the monitor writes a file (global rank 0, atomically)."""
        if not trainer.is_global_zero:
            return None
        path = self.files_dir(trainer) / name
        return write_text_atomic(path, json.dumps(payload, indent=1, ensure_ascii=False, default=_jsonable), overwrite=True)

    def _payload(self, trainer: pl.Trainer, result: LensResult, epoch: int) -> dict[str, Any]:
        ex = result.extras
        return {
            "model": "starting (reference)" if epoch < 0 else "fine-tuned",
            "epoch": epoch, "step": int(trainer.global_step), "theta": self.theta, "n_tokens": ex.get("n_tokens"),
            "n_sentences": ex.get("n_sentences"), "n_concepts": ex.get("n_concepts"),
            "label_sets": ex.get("label_sets"), "missing_tokens": ex.get("missing", 0),
            "layers": {str(layer): d for layer, d in ex.get("descriptions", {}).items()},
        }  # fmt: skip

    @staticmethod
    def _file_name(epoch: int, step: int) -> str:
        return "concepts_reference.json" if epoch < 0 else f"concepts_epoch{epoch}_step{step}.json"

    # ------------------------------------------------------------------ fit start: token set and reference
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.split == "train" and self.max_samples is not None:
            raise ValueError(
                f"{type(self).__name__}(split='train', max_samples={self.max_samples}): a shuffled training "
                "loader read in part gives another token set each time; use split='val' or max_samples=None"
            )
        self.files_dir(trainer)
        super().on_train_start(trainer, pl_module)  # label scan (+ token plan), reference forward as the dry run

    @override
    def _scan_labels(self, loader: Any) -> tuple[dict[int, int], Any]:
        assert self.metric is not None
        self._plan = _TokenPlan(self.metric)
        return super()._scan_labels(self._planning(loader))

    def _planning(self, loader: Any) -> Iterator[Any]:
        """The split's batches, each also offered to the token plan (up to ``max_samples``)."""
        assert self._plan is not None
        seen = 0
        for batch in loader:
            if not isinstance(batch, Mapping) or "input_ids" not in batch:
                keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
                raise ValueError(
                    f"{type(self).__name__} reads words from batch['input_ids']; the {self.split} batches have "
                    f"{keys}. Give it tokenised dict batches"
                )
            n = int(batch["input_ids"].shape[0])
            room = n if self.max_samples is None else max(0, min(n, self.max_samples - seen))
            labels = batch_labels(batch, self.labels_fn)
            if room and labels is not None:
                self._plan.add(batch, labels, room)
            seen += n
            yield batch

    @override
    def _dry_run(self, batch: Mapping[str, Any]) -> CapturedBatch | None:
        """The reference: the encoder once on the token set's sentences (eval mode, no grad)."""
        assert self.metric is not None and self._plan is not None
        trainer = self._trainer
        sentences = self._plan.sentences()
        name = type(self).__name__
        if trainer.world_size == 1 and not sentences:
            raise ValueError(
                f"{name}: the token set is empty: the {self.split} split holds no word tokens (only special or "
                "unknown tokens?); the lens needs text"
            )
        reference = self._new_metric(tokenizer=self.metric.tokenizer)
        reference.bind(self.metric.num_layers or 0)
        last = None
        model = self._hf_model
        was_training = model.training
        model.eval()
        capture = HiddenStateCapture(model, keep=self.metric.selected_layers)
        pad = int(getattr(self.metric.tokenizer, "pad_token_id", None) or 0)
        device = module_device(model)
        try:
            for start in range(0, len(sentences), _BATCH):
                chunk = [row for _, row in sentences[start : start + _BATCH]]
                inputs = pad_rows([(ids, types) for ids, types, _ in chunk], pad)
                with capture, torch.no_grad():
                    model(**{k: v.to(device) for k, v in inputs.items()})
                captured = capture.pop()[-1]
                self._check_hidden(captured)
                reference.update_from(captured, torch.tensor([label for _, _, label in chunk]))
                last = captured
        finally:
            model.train(was_training)
        if self._restored is not None:  # a resumed run: the saved reference, if the token set is the same
            keys = sorted(set(self._restored.get("keys", [])))
            if keys != [k for k, _ in sentences] and trainer.world_size == 1:
                raise ValueError(
                    f"{name}: the checkpoint's token set differs from this run's (other data, split, max_tokens, "
                    "max_per_word or seed); resume with the same settings and data"
                )
            return last
        result = self._compute_on_rank_zero(reference)
        self.metric.set_reference(result)
        self.reference_scores = {k: v for k, v in result.metrics(self.log_prefix).items()}
        self._write_json(trainer, self._file_name(-1, 0), self._payload(trainer, result, -1))
        return last

    def _compute_on_rank_zero(self, metric: ConceptAlignment) -> LensResult:
        trainer = self._trainer
        if trainer.world_size > 1:
            metric.sync()
            try:
                return self._on_rank_zero(trainer, metric.compute)
            finally:
                metric.unsync()
        try:
            return metric.compute()
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: {err}") from None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        super().setup(trainer, pl_module, stage)

    # ------------------------------------------------------------------ measurements
    @override
    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float] | None:
        if self.metric is None or self.metric.reference is None:
            return None  # no reference (fit start was skipped: no dataloader)
        values = super()._measure(trainer, pl_module)
        result = self.last_result
        assert result is not None and values is not None
        if any(math.isnan(v) for v in values.values()):
            self._warn_once(
                "nan", f"{type(self).__name__} logs NaN: the word vectors have NaN or inf values. "
                "EarlyStopping(check_finite=True) stops on it.",
            )  # fmt: skip
            return values
        missing = int(result.extras.get("missing", 0))
        if missing:
            self._warn_once(
                "missing", f"{type(self).__name__}: {missing} of the token set's tokens were not in this {self.split} "
                "run (limit_val_batches, or a loader that changed?); the shares are measured on the tokens seen",
            )  # fmt: skip
        epoch = trainer.current_epoch
        self._write_json(trainer, self._file_name(epoch, trainer.global_step), self._payload(trainer, result, epoch))
        return values

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    @override
    def _record_fields(self, trainer: pl.Trainer) -> dict[str, Any]:
        return {"file": self._file_name(trainer.current_epoch, trainer.global_step)}

    @override
    def _correlated(self, names: list[str]) -> list[str]:
        heads = (self._name("matched", ""), self._name("polar", ""))
        return [n for n in names if n.startswith(heads)]

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        reference = self._template.reference_state()
        return {
            **super().state_dict(),  # history and settings
            "reference": reference,
            "reference_scores": dict(self.reference_scores),
            "trigger_result": self.trigger_result,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The history, the reference and the trigger result -- only from a state of the same
        settings (MetricMonitor's rule: another series is not restored, with a warning)."""
        same = all(state_dict.get(k, v) == v for k, v in self._settings().items())
        super().load_state_dict(state_dict)
        if not same:
            return
        reference = state_dict.get("reference")
        if reference is not None:
            self._template.set_reference(reference)
            self._restored = reference
        self.reference_scores = dict(state_dict.get("reference_scores", {}))
        self.trigger_result = state_dict.get("trigger_result")

    # ------------------------------------------------------------------ end of fit
    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.triggers and self.last_result is not None and "ids" in self.last_result.extras:
            self.trigger_result = self._on_rank_zero(trainer, lambda: self._run_triggers(trainer))
            if self.trigger_result is not None:
                metrics = {self._name(k): self.trigger_result[k] for k in ("trigger_drop", "random_drop")}
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=trainer.global_step)
                    logger.save()
        super().on_fit_end(trainer, pl_module)  # figures

    def _run_triggers(self, trainer: pl.Trainer) -> dict[str, Any] | None:
        """Prepend the polar words of the top layer to other classes' sentences (rank 0)."""
        assert self.metric is not None and self.last_result is not None
        ex = self.last_result.extras
        top = self.last_result.layers[-1]
        words = trigger_words(ex["ids"][top], ex["words"], ex["classes"], ex["num_classes"], self.trigger_words)
        rows, labels = [], []
        loader = self._split_loader(trainer)
        with torch.random.fork_rng(devices=[]):
            for batch in loader if loader is not None else ():
                y = batch_labels(batch, self.labels_fn)
                mask = batch["attention_mask"].cpu() != 0 if "attention_mask" in batch else None
                types = batch.get("token_type_ids")
                for r in range(batch["input_ids"].shape[0]):
                    keep = mask[r] if mask is not None else slice(None)
                    rows.append((batch["input_ids"][r].cpu()[keep].tolist(),
                                 None if types is None else types[r].cpu()[keep].tolist()))  # fmt: skip
                    labels.append(int(y[r]))
        config = getattr(self._hf_model, "config", None)
        max_length = int(getattr(config, "max_position_embeddings", 512) or 512)
        try:
            result = concept_triggers_on_ids(
                self._hf_model, self.metric.tokenizer, rows, labels, words, ex["words"], max_length=max_length,
                max_sentences=self.trigger_sentences, seed=self.seed,
            )  # fmt: skip
        except (TypeError, ValueError) as err:
            rank_zero_warn(f"{type(self).__name__}: the trigger experiment is skipped: {err}")
            return None
        result["layer"] = top
        result["per_class"] = {str(c): v for c, v in result["per_class"].items()}
        self._write_json(trainer, "concepts_triggers.json", result)
        return result

    @override
    def _write_figures(self, trainer: pl.Trainer, out: Path) -> dict[str, Path]:
        reference = {"epoch": -1, "step": 0, "scores": self.reference_scores}
        written = write_concept_figures([reference, *self.history], self.files_dir(trainer), prefix=self.log_prefix)
        images = {self._name("plots", stem): path for stem, path in written.items()}
        monitor = self.monitor_against if any(r.get("monitor") is not None for r in self.history) else None
        plots.publish_to_wandb(trainer.loggers, images, self.history, monitor, table_key=self._name("history"))
        return images


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    return str(value)
