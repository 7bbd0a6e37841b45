r"""The latent-concept lens as a torchmetrics ``Metric`` (Durrani et al. 2022; methods.md §5).

Per batch, :meth:`ConceptAlignment.update` reads the words of the sequences back from their
``input_ids`` through the tokenizer (:func:`~lightning_topo.representations.tokens.sequence_words`:
both segments of a sentence pair), and keeps, for the word tokens that can still belong to the
*token set*, their vectors at the selected layers (the hidden state of the word's last piece),
their sentence's class and their word pieces in ``cat`` states. The token set is the one rule of
:func:`~lightning_topo.representations.tokens.select_tokens`: sentences in the order of a seeded
key of their tokens, at most ``max_per_word`` tokens per lower-cased word form, ``max_tokens`` in
all -- the same tokens whatever the batch size, the order of the batches or the number of
processes, so every measurement of a fit clusters the same tokens. Only candidates are kept
(a stream is pruned as it goes), so the states stay at about ``2 * max_tokens`` words.

:meth:`ConceptAlignment.compute` clusters each selected layer's token vectors into concepts
(Ward, :func:`~lightning_topo.scores.concepts.discover_concepts`), aligns them with the output
class (*polar* concepts) and with the offline label sets, and -- given a :attr:`reference`, the
concepts of the same tokens in another model such as the pre-trained one -- matches them
(:func:`~lightning_topo.scores.concepts.describe_layer`). With a reference the lens collects
exactly the reference's tokens, so both are clustered on the same set.

``compute_on_rank_zero`` is ``True``: one Ward clustering per layer costs ``O(n_tokens^2 d)``,
too much to repeat on every process; the monitors compute on global rank 0 and broadcast.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

from lightning_topo.loading import load_tokenizer
from lightning_topo.metrics.base import LensMetric, LensResult
from lightning_topo.representations.tokens import (
    MAX_WORD_PIECES,
    form_hashes,
    select_tokens,
    sequence_words,
    special_token_ids,
    word_labels,
)
from lightning_topo.scores.checks import LayerSpec, check_int, check_real
from lightning_topo.scores.concepts import FAMILIES, default_n_concepts, describe_layer, discover_concepts
from lightning_topo.scores.tree_probe import sentence_keys

__all__ = ["CONCEPT_LABEL_SETS", "DEFAULT_CONCEPT_LAYERS", "ConceptAlignment"]

#: Label sets the lens aligns concepts with besides the output class (read from the word forms).
CONCEPT_LABEL_SETS: tuple[str, ...] = ("lexical", "suffix", "casing", "punctuation", "number")
#: Default layers: the embeddings and the last layer (the two ends of the paper's profile; the cost
#: grows with every layer, see docs/concepts.md "Cost").
DEFAULT_CONCEPT_LAYERS: tuple[int, ...] = (0, -1)


class ConceptAlignment(LensMetric):
    r"""Latent concepts of word tokens per layer: polar, aligned and matched shares.

    ``compute()`` returns a :class:`~lightning_topo.metrics.LensResult` with (names without the
    ``concepts`` prefix), for each selected layer ``i`` (0 = embeddings):

    * ``polar/layer_{i}``, ``polar_chance/layer_{i}`` -- share of the concepts aligned (at least
      ``theta`` of their tokens) to one output class, and the share expected by chance for
      concepts of these sizes;
    * ``aligned/{set}/layer_{i}`` -- share aligned to one label of each of ``label_sets``;
    * with a :attr:`reference`: ``matched/layer_{i}``, ``matched_chance/layer_{i}`` -- share of
      the concepts whose tokens lie (at least ``theta``) in one reference concept;
    * ``polar`` -- the headline: the polar share of the deepest selected layer (always defined,
      needs no reference; it rises as fine-tuning makes the top layer task-specific).

    ``extras``: ``ids`` ``{layer: (n_tokens,)}`` concept ids, ``descriptions`` (per layer, as
    :func:`~lightning_topo.scores.concepts.describe_layer`: every concept's size, words, class,
    alignments, match), ``words``, ``classes``, ``segments``, ``keys`` and ``positions`` (the
    tokens' identity: sentence key and last-piece position), ``fingerprint``, ``n_concepts``,
    ``n_tokens``, ``n_sentences``, ``missing`` (reference tokens not seen this time) and
    ``mismatched`` (segments that did not decode back to their ids).

    Args:
        layers: hidden-state indices (default ``(0, -1)``: embeddings and last layer; ``"all"``).
        max_tokens: size of the token set (int >= 2, default 500).
        max_per_word: tokens per lower-cased word form (default 10; ``None``: no cap).
        n_concepts: concepts per layer; ``None`` (default): ``min(600, tokens // 20)``.
        theta: alignment and matching threshold in ``(0, 1]``, inclusive (default 0.9).
        label_sets: subset of :data:`CONCEPT_LABEL_SETS`; ``None`` (default): all of them but
            ``"casing"`` for a tokenizer that lower-cases (every form read back would be lower
            case; asked for explicitly, it is dropped with a warning).
        tokenizer: the model's fast tokenizer, or a folder to load it from
            (:func:`~lightning_topo.loading.load_tokenizer`, ``trust_remote_code=False``);
            ``None``: loaded from the model's ``name_or_path`` in :meth:`check_model`.
        reference: a :class:`LensResult` of this lens on another model (or
            :meth:`reference_state`'s dict): its tokens are collected and its concepts matched.
        top_words: words listed per concept in the descriptions (default 10).
        max_samples: the most sequences read per measurement per process (``None``: all).
        seed: seed of the sentence keys (the token set), int >= 0.
        kwargs: torchmetrics ``Metric`` options.

    Raises:
        TypeError / ValueError: a bad argument (the message names it).

    Example::

        >>> import torch
        >>> from transformers import BertTokenizer
        >>> from lightning_topo.metrics import ConceptAlignment
        >>> vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "film", "a", "the", "is"]
        >>> tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
        >>> ids = torch.randint(4, 10, (40, 6)); ids[:, 0], ids[:, -1] = 2, 3
        >>> hidden = tuple(torch.randn(40, 6, 8) for _ in range(3))
        >>> metric = ConceptAlignment(tokenizer=tok, max_tokens=100, n_concepts=5)
        >>> metric.update(hidden, torch.ones(40, 6), torch.arange(40) % 2, ids)
        >>> sorted(metric.compute().metrics())[:2]
        ['concepts/aligned/lexical/layer_0', 'concepts/aligned/lexical/layer_2']
    """

    prefix = "concepts"
    headline = "polar"
    compute_on_rank_zero: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = True

    def __init__(
        self,
        layers: LayerSpec = DEFAULT_CONCEPT_LAYERS,
        max_tokens: int = 500,
        max_per_word: int | None = 10,
        n_concepts: int | None = None,
        theta: float = 0.9,
        label_sets: Sequence[str] | None = None,
        tokenizer: Any = None,
        reference: LensResult | Mapping[str, Any] | None = None,
        top_words: int = 10,
        max_samples: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(layers=list(layers) if isinstance(layers, tuple) else layers, max_samples=max_samples,
                         seed=seed, **kwargs)  # fmt: skip
        self.max_tokens = check_int(max_tokens, "max_tokens", minimum=2)
        self.max_per_word = check_int(max_per_word, "max_per_word", minimum=1, allow_none=True)
        self.n_concepts = check_int(n_concepts, "n_concepts", minimum=1, allow_none=True)
        if self.n_concepts is not None and self.n_concepts > self.max_tokens:
            raise ValueError(f"n_concepts must be <= max_tokens={max_tokens} or None; got {n_concepts!r}")
        self.theta = check_real(theta, "theta", minimum=0.0, strict=True)
        if self.theta > 1:
            raise ValueError(f"theta must be in (0, 1]; got {theta!r}")
        self._explicit_sets = label_sets is not None
        sets = CONCEPT_LABEL_SETS if label_sets is None else (label_sets,) if isinstance(label_sets, str) else tuple(label_sets)
        unknown = [s for s in sets if s not in CONCEPT_LABEL_SETS]
        if unknown:
            raise ValueError(f"label_sets must be a subset of {CONCEPT_LABEL_SETS}; got unknown {unknown}")
        self.label_sets = sets
        self.top_words = check_int(top_words, "top_words", minimum=1)
        if tokenizer is not None and not isinstance(tokenizer, str | os.PathLike) and not callable(tokenizer):
            raise TypeError(f"tokenizer must be a Hugging Face tokenizer, a folder path or None; got {tokenizer!r}")
        self.tokenizer_arg = tokenizer
        self.tokenizer: Any = None
        self.special_ids: set[int] = set()
        if tokenizer is not None and not isinstance(tokenizer, str | os.PathLike):
            self._use_tokenizer(tokenizer, vocab_size=None)
        self.reference: dict[str, Any] | None = None
        if reference is not None:
            self.set_reference(reference)
        self.add_state("vectors", default=[], dist_reduce_fx="cat")
        self.add_state("keys", default=[], dist_reduce_fx="cat")
        self.add_state("positions", default=[], dist_reduce_fx="cat")
        self.add_state("forms", default=[], dist_reduce_fx="cat")
        self.add_state("pieces", default=[], dist_reduce_fx="cat")
        self.add_state("classes", default=[], dist_reduce_fx="cat")
        self.add_state("segments", default=[], dist_reduce_fx="cat")
        self._cutoff = math.inf
        self._seen_keys: set[float] = set()
        self._mismatched = 0
        self._warned_mismatch = False

    # ------------------------------------------------------------------ tokenizer and model
    def _use_tokenizer(self, tokenizer: Any, vocab_size: int | None) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"ConceptAlignment needs a fast tokenizer (word ids and offsets); got {type(tokenizer).__name__}. "
                "Load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
            )
        if vocab_size is not None and len(tokenizer) > vocab_size:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {vocab_size}: it is "
                "not this model's tokenizer; pass tokenizer= the one its input_ids come from"
            )
        lowered = tokenizer("A", add_special_tokens=False)["input_ids"] == tokenizer(
            "a", add_special_tokens=False
        )["input_ids"]
        if lowered and "casing" in self.label_sets:
            if self._explicit_sets:
                warnings.warn(
                    "ConceptAlignment: the tokenizer lower-cases its input, so every word form read back from "
                    "input_ids is lower case; the 'casing' label set is left out",
                    UserWarning,
                    stacklevel=3,
                )
            self.label_sets = tuple(s for s in self.label_sets if s != "casing")
        self.tokenizer = tokenizer
        self.special_ids = special_token_ids(tokenizer)

    def check_model(self, model: Any) -> None:
        """Bind the layers and find the tokenizer: ``tokenizer=`` or the model's ``name_or_path``.

        Raises:
            TypeError: not a supported encoder, or a slow tokenizer. ValueError: ``layers`` out of
            range, no tokenizer found, or a tokenizer larger than the model's vocabulary.
        """
        super().check_model(model)
        config = getattr(model, "config", None)
        vocab = getattr(config, "vocab_size", None)
        vocab = vocab if isinstance(vocab, int) else None
        if self.tokenizer is not None:
            self._use_tokenizer(self.tokenizer, vocab)
            return
        path = self.tokenizer_arg
        if path is None:
            path = getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None) or ""
            if not path:
                raise ValueError(
                    f"ConceptAlignment reads words through the model's tokenizer, but {type(model).__name__} has "
                    "no name_or_path (built from a config); pass tokenizer=<tokenizer or its folder>"
                )
        try:
            tokenizer = load_tokenizer(path)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"ConceptAlignment could not load a tokenizer from {str(path)!r} ({str(err).splitlines()[0]}); "
                "pass tokenizer=<tokenizer or its folder>"
            ) from None
        self._use_tokenizer(tokenizer, vocab)

    # ------------------------------------------------------------------ reference
    def set_reference(self, reference: LensResult | Mapping[str, Any] | None) -> None:
        """Match later measurements against ``reference`` (this lens's result on another model).

        From then on :meth:`update` collects only the reference's tokens, so both are clustered
        on the same set. ``None`` removes the reference.

        Raises:
            ValueError: a result without the lens's ``keys``/``positions``/``ids`` extras.
        """
        if reference is None:
            self.reference = None
            return
        state = reference.extras if isinstance(reference, LensResult) else reference
        missing = [k for k in ("keys", "positions", "ids") if k not in state]
        if missing:
            raise ValueError(
                f"reference must be a ConceptAlignment result (or its reference_state()); it lacks {missing}"
            )
        keys = torch.as_tensor(state["keys"], dtype=torch.float64)
        positions = torch.as_tensor(state["positions"], dtype=torch.long)
        ids = {int(k): torch.as_tensor(v, dtype=torch.long) for k, v in state["ids"].items()}
        if any(v.numel() != keys.numel() for v in ids.values()) or positions.numel() != keys.numel():
            raise ValueError("reference: keys, positions and every layer's ids must have one entry per token")
        lookup: dict[float, set[int]] = {}
        for k, p in zip(keys.tolist(), positions.tolist(), strict=True):
            lookup.setdefault(k, set()).add(p)
        index = {(k, p): i for i, (k, p) in enumerate(zip(keys.tolist(), positions.tolist(), strict=True))}
        self.reference = {
            "keys": keys, "positions": positions, "ids": ids, "lookup": lookup, "index": index,
            "scores": dict(state.get("scores", {})),
        }  # fmt: skip

    def reference_state(self) -> dict[str, Any] | None:
        """The reference as plain lists (for a checkpoint); :meth:`set_reference` reads it back."""
        if self.reference is None:
            return None
        ref = self.reference
        return {
            "keys": ref["keys"].tolist(),
            "positions": ref["positions"].tolist(),
            "ids": {int(k): v.tolist() for k, v in ref["ids"].items()},
            "scores": dict(ref["scores"]),
        }

    # ------------------------------------------------------------------ update
    def reset(self) -> None:
        super().reset()
        self._cutoff = math.inf
        self._seen_keys = set()
        self._mismatched = 0

    def wanted_rows(self, input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, list[int]]:
        """``(keys, rows)``: the sentence keys of a batch and the rows that may hold token-set words."""
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.cpu() != 0
        keys = sentence_keys(input_ids.cpu(), mask, self.seed)
        rows = []
        for r, key in enumerate(keys.tolist()):
            if self.reference is not None:
                if key in self.reference["lookup"] and key not in self._seen_keys:
                    rows.append(r)
            elif key <= self._cutoff and key not in self._seen_keys:
                rows.append(r)
        return keys, rows

    def update(
        self,
        hidden_states: Sequence[Tensor | None],
        attention_mask: Tensor | None,
        labels: Tensor,
        input_ids: Tensor | None = None,
    ) -> None:
        """Keep the vectors of one batch's candidate word tokens.

        Args:
            hidden_states: ``num_layers + 1`` tensors ``(batch, seq, hidden)``; only the selected are read.
            attention_mask: ``(batch, seq)``, 1 for real tokens (``None``: all real; padding on
                either side).
            labels: ``(batch,)`` integer class labels.
            input_ids: ``(batch, seq)`` token ids (required: the words are read from them).

        Raises:
            ValueError: no ``input_ids``, no tokenizer, missing labels or of another length.
        """
        if input_ids is None:
            raise ValueError("ConceptAlignment.update needs input_ids: the words are read from the token ids")
        if self.tokenizer is None:
            raise ValueError(
                "ConceptAlignment has no tokenizer: pass tokenizer=... or call check_model(hf_model) first"
            )
        if self.num_layers is None:
            self.bind(len(hidden_states) - 1)
        if labels is None:
            raise ValueError("ConceptAlignment.update needs the class labels of the batch (batch['labels'] or a labels_fn)")
        batch = input_ids.shape[0]
        if labels.shape[0] != batch:
            raise ValueError(f"labels has {labels.shape[0]} entries for a batch of {batch} sequences")
        take = self._take(batch)
        if take == 0:
            return
        ids = input_ids[:take].detach().cpu()
        mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask[:take].cpu() != 0
        keys, rows = self.wanted_rows(ids, mask)
        if not rows:
            return
        real_pos = [torch.nonzero(mask[r]).flatten() for r in rows]
        real = [ids[r][p].tolist() for r, p in zip(rows, real_pos, strict=True)]
        words, bad = sequence_words(self.tokenizer, real, self.special_ids)
        self._mismatched += bad
        rec: dict[str, list] = {k: [] for k in ("row", "col", "key", "pos", "form", "pieces", "cls", "seg")}
        for i, r in enumerate(rows):
            key = float(keys[r])
            self._seen_keys.add(key)
            wanted = self.reference["lookup"][key] if self.reference is not None else None
            for w in words[i]:
                if wanted is not None and w.last not in wanted:
                    continue
                pieces = real[i][w.start : w.last + 1]
                rec["row"].append(r)
                rec["col"].append(int(real_pos[i][w.last]))
                rec["key"].append(key)
                rec["pos"].append(w.last)
                rec["form"].append(w.form)
                rec["pieces"].append(pieces + [-1] * (MAX_WORD_PIECES - len(pieces)))
                rec["cls"].append(int(labels[r]))
                rec["seg"].append(w.segment)
        if not rec["row"]:
            return
        row_t, col_t = torch.tensor(rec["row"]), torch.tensor(rec["col"])
        layers = self.selected_layers
        first = hidden_states[layers[0]]
        assert first is not None
        device = first.device
        vectors = torch.stack(
            [hidden_states[i][row_t.to(device), col_t.to(device)].detach().float() for i in layers], dim=1
        )
        self.vectors.append(vectors.cpu())
        self.keys.append(torch.tensor(rec["key"], dtype=torch.float64))
        self.positions.append(torch.tensor(rec["pos"], dtype=torch.long))
        self.forms.append(form_hashes(rec["form"]))
        self.pieces.append(torch.tensor(rec["pieces"], dtype=torch.long))
        self.classes.append(torch.tensor(rec["cls"], dtype=torch.long))
        self.segments.append(torch.tensor(rec["seg"], dtype=torch.long))
        if self.reference is None and sum(k.numel() for k in self.keys) > 2 * self.max_tokens:
            self._prune()

    _STATES: ClassVar[tuple[str, ...]] = ("vectors", "keys", "positions", "forms", "pieces", "classes", "segments")

    def _prune(self) -> None:
        """Drop the candidates that can no longer be chosen (see ``select_tokens(keep_tail=True)``)."""
        cat = {name: torch.cat(getattr(self, name)) for name in self._STATES}
        keep = select_tokens(cat["keys"], cat["positions"], cat["forms"], self.max_tokens, self.max_per_word, True)
        for name in self._STATES:
            setattr(self, name, [cat[name][keep]])
        if int(keep.sum()) >= self.max_tokens:
            self._cutoff = float(cat["keys"][keep].max())

    # ------------------------------------------------------------------ compute
    def metric_names(self, matched: bool) -> list[str]:
        """Every name :meth:`compute` returns (without prefix), for the selected layers."""
        families = [f for f in FAMILIES if matched or not f.startswith("matched")]
        names = [self.headline]
        for layer in self.selected_layers:
            names += [self.name(f, layer=layer) for f in families]
            names += [self.name("aligned", s, layer=layer) for s in self.label_sets]
        return names

    def _gathered(self) -> dict[str, Tensor]:
        return {name: dim_zero_cat(getattr(self, name)) for name in self._STATES}

    def compute(self) -> LensResult:
        """Concepts of the token set on every selected layer (see the class docstring).

        NaN under every name when the word vectors hold NaN/inf (a diverged model).

        Raises:
            ValueError: no word token was seen, or ``n_concepts`` above the token count.
        """
        # "cat" states are lists of tensors, or one tensor once torchmetrics has synced them (DDP)
        n_seen = self.keys.numel() if isinstance(self.keys, Tensor) else sum(k.numel() for k in self.keys)
        if n_seen == 0:
            raise ValueError(
                "ConceptAlignment.compute: no word tokens were added (call update with batches that hold text)"
            )
        s = self._gathered()
        if self.reference is None:
            chosen = select_tokens(s["keys"], s["positions"], s["forms"], self.max_tokens, self.max_per_word)
        else:
            chosen = select_tokens(s["keys"], s["positions"], s["forms"], s["keys"].numel() + 1, None)
        idx = torch.nonzero(chosen).flatten()
        order = np.lexsort((s["positions"][idx].numpy(), s["keys"][idx].numpy()))
        idx = idx[torch.from_numpy(order)]
        sel = {name: value[idx] for name, value in s.items()}
        layers = self.selected_layers
        matched = self.reference is not None
        if not bool(torch.isfinite(sel["vectors"]).all()):
            return LensResult.nan(self.metric_names(matched), self.headline, layers, self.prefix)
        n = int(idx.numel())
        k = self.n_concepts or default_n_concepts(n)
        if k > n:
            raise ValueError(
                f"n_concepts={k} is larger than the token set ({n} tokens were seen); lower n_concepts or leave it None"
            )
        words = [w.strip() for w in self.tokenizer.batch_decode(
            [[int(t) for t in row if t >= 0] for row in sel["pieces"].tolist()], clean_up_tokenization_spaces=False
        )]  # fmt: skip
        classes = sel["classes"]
        num_classes = max(int(classes.max()) + 1, 2)
        label_sets = {name: word_labels(words, name) for name in self.label_sets}
        ref_ids: dict[int, Tensor] = {}
        missing = 0
        if matched:
            ref = self.reference
            where = torch.tensor(
                [ref["index"][(kk, pp)] for kk, pp in zip(sel["keys"].tolist(), sel["positions"].tolist(), strict=True)],
                dtype=torch.long,
            )
            absent = [layer for layer in layers if layer not in ref["ids"]]
            if absent:
                raise ValueError(f"the reference has no concepts of layer(s) {absent}; measure it with the same layers")
            ref_ids = {layer: ref["ids"][layer][where] for layer in layers}
            missing = int(ref["keys"].numel()) - n
        ids, descriptions, values = {}, {}, {}
        for j, layer in enumerate(layers):
            ids[layer] = discover_concepts(sel["vectors"][:, j], k)
            d = describe_layer(
                ids[layer], words, classes, num_classes, label_sets, ref_ids.get(layer), self.theta, self.top_words
            )
            descriptions[layer] = d
            for family in FAMILIES:
                if d[family] is not None:
                    values[self.name(family, layer=layer)] = torch.tensor(float(d[family]))
            for name, share in d["aligned"].items():
                values[self.name("aligned", name, layer=layer)] = torch.tensor(float(share))
        values[self.headline] = values[self.name("polar", layer=layers[-1])]
        digest = hashlib.sha1(sel["keys"].numpy().tobytes() + sel["positions"].numpy().tobytes()).hexdigest()
        if self._mismatched and not self._warned_mismatch:
            self._warned_mismatch = True
            warnings.warn(
                f"ConceptAlignment: {self._mismatched} segment(s) did not decode back to the same token ids "
                "through the tokenizer; their words were taken one per word piece (is it the model's tokenizer?)",
                UserWarning,
                stacklevel=2,
            )
        extras = {
            "ids": ids, "descriptions": descriptions, "words": words, "classes": classes, "segments": sel["segments"],
            "keys": sel["keys"], "positions": sel["positions"], "fingerprint": digest, "n_concepts": k, "n_tokens": n,
            "n_sentences": int(torch.unique(sel["keys"]).numel()), "missing": missing, "mismatched": self._mismatched,
            "num_classes": num_classes, "label_sets": list(self.label_sets), "theta": self.theta,
        }  # fmt: skip
        return LensResult(values, self.headline, layers, self.prefix, extras)
