"""Word-level token sets for the latent-concept lens: selection, word pooling, label sets, triggers.

* :func:`build_token_set` -- a fixed, seeded, capped set of word tokens from a list of sentences
  (the validation split), the same every epoch so that the concepts of different epochs and of
  the pre-trained model are clustered on the same tokens;
* :func:`token_activations` -- one small forward pass over the selected sentences, word pieces
  pooled to words by one rule (:data:`WORD_POOLING`);
* :func:`token_labels` -- offline label sets (output class, lexical, suffix, casing,
  punctuation, number) and UPOS from a user's CoNLL-U file;
* :func:`trigger_words` -- the words of each class's most polar concept.

For tokenised batches without their text (plain DataLoaders, the lens metric
:class:`~lightning_topo.metrics.ConceptAlignment`):

* :func:`sequence_words` -- the words of token-id sequences, read back through the tokenizer
  (every segment of a sentence pair: the special tokens split the segments);
* :func:`select_tokens` -- the same seeded, capped choice of word tokens as
  :func:`build_token_set`, over sentences identified by a key of their tokens, so that it does
  not depend on batching, order or sharding;
* :func:`prepend_tokens` -- a batch with trigger word pieces inserted after its first special token;
* :func:`concept_triggers_on_ids` -- accuracy drop when a polar concept's words are prepended to
  sentences of another class, against random words (Durrani et al. 2022's adversarial triggers).

**Words.** A word is what the tokenizer's pre-tokenizer splits (for BERT's WordPiece:
whitespace and punctuation; ``"it's"`` is ``it``, ``'``, ``s``), read from a *fast*
tokenizer's ``word_ids()``; its form is the original text span. **Pooling rule:** a word's vector
is the hidden state of its *last* word piece -- the default aggregation (``"last"``) of NeuroX's
transformers extractor, which the authors' ConceptX pipeline uses. Words cut by ``max_length``
truncation are left out.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_topo.encoding import encode_batch
from lightning_topo.scores.checks import check_int
from lightning_topo.scores.concepts import polar_concepts

__all__ = [
    "LABEL_SETS",
    "MAX_WORD_PIECES",
    "SUFFIXES",
    "SequenceWord",
    "TokenSet",
    "WORD_POOLING",
    "build_token_set",
    "concept_triggers_on_ids",
    "conllu_upos",
    "form_hashes",
    "pad_rows",
    "prepend_tokens",
    "select_tokens",
    "sequence_words",
    "special_token_ids",
    "token_activations",
    "token_labels",
    "trigger_words",
    "word_casing",
    "word_labels",
    "word_suffix",
]

#: How word pieces are pooled to a word: the hidden state of the word's last piece.
WORD_POOLING = "last"
#: Label sets available without downloads (``"upos"`` needs a CoNLL-U file on top).
LABEL_SETS: tuple[str, ...] = ("class", "lexical", "suffix", "casing", "punctuation", "number")
#: Common English derivational and inflectional suffixes (our list), longest match wins.
SUFFIXES: tuple[str, ...] = (
    "ation", "ition", "ness", "ment", "able", "ible", "ful", "less", "ous", "ive", "ize", "ise",
    "ism", "ist", "ity", "ing", "ed", "ly", "er", "est", "al", "ic", "ish", "ant", "ent", "ance",
    "ence", "s",
)  # fmt: skip
_NUMBER = re.compile(r"^[+-]?(\d+([.,:/]\d+)*|\d*[.,]\d+)(%|st|nd|rd|th|s)?$")


@dataclass(frozen=True)
class TokenSet:
    """A fixed set of word tokens and the sentences that hold them.

    Attributes:
        texts: the selected sentences, in selection order.
        rows: index of each selected sentence in the split it came from.
        classes: ``(n_sentences,)`` output class of each sentence.
        input_ids: each selected sentence tokenised (special tokens, truncated to ``max_length``).
        words: ``n_tokens`` word forms (original text).
        sentence: ``(n_tokens,)`` index into ``texts`` of each token's sentence.
        piece: ``(n_tokens,)`` position in ``input_ids[sentence]`` of the word's last piece.
        spans: ``n_tokens`` character spans ``(start, end)`` of the words in their sentence.
    """

    texts: list[str]
    rows: list[int]
    classes: Tensor
    input_ids: list[list[int]]
    words: list[str]
    sentence: Tensor
    piece: Tensor
    spans: list[tuple[int, int]]

    @property
    def n_tokens(self) -> int:
        return len(self.words)

    @property
    def token_classes(self) -> Tensor:
        """``(n_tokens,)`` output class of each token's sentence."""
        return self.classes[self.sentence]

    @property
    def fingerprint(self) -> str:
        """SHA-1 of the sentences and words: equal token sets have equal fingerprints."""
        h = hashlib.sha1()
        for part in (*self.texts, "\x00", *self.words):
            h.update(part.encode("utf-8") + b"\x1f")
        return h.hexdigest()


def build_token_set(
    texts: Sequence[str],
    labels: Sequence[int],
    tokenizer: Any,
    max_tokens: int = 2000,
    max_length: int = 64,
    max_per_word: int | None = 10,
    seed: int = 0,
) -> TokenSet:
    """Select up to ``max_tokens`` word tokens from ``texts`` in a seeded random sentence order.

    Sentences are visited in the order of a permutation drawn with ``seed``; every word of a
    visited sentence is taken unless its lower-cased form already has ``max_per_word`` tokens
    (so that ``the`` and ``,`` do not fill the set), until ``max_tokens`` tokens are taken.

    Args:
        texts: sentences (e.g. ``datamodule.split_texts("val")``).
        labels: class id of each sentence.
        tokenizer: a *fast* Hugging Face tokenizer (``word_ids()`` and offsets are needed).
        max_tokens: token cap (``>= 2``). Default 2000.
        max_length: truncation length in word pieces, as the model sees the text. Default 64.
        max_per_word: cap per lower-cased word form (``None``: no cap). Default 10.
        seed: permutation seed; the same inputs and seed give the same set.

    Raises:
        ValueError: empty ``texts``, length mismatch, bad caps, or no word token at all.
        TypeError: ``tokenizer`` is not a fast tokenizer.
    """
    _check_build_args(texts, labels, tokenizer, max_tokens, max_per_word)
    chosen, encoded = _select_words(texts, tokenizer, max_tokens, max_length, max_per_word, seed)
    n_taken = sum(len(v) for v in chosen.values())
    if n_taken == 0:
        raise ValueError(
            "the token set is empty: no word tokens in `texts` (all empty or special tokens); give the "
            "concept lens a split with text"
        )
    rows = list(chosen)
    flat = [(i, w) for i, row in enumerate(rows) for w in chosen[row]]
    return TokenSet(
        texts=[texts[r] for r in rows],
        rows=rows,
        classes=torch.tensor([int(labels[r]) for r in rows], dtype=torch.long),
        input_ids=[encoded[r] for r in rows],
        words=[w[0] for _, w in flat],
        sentence=torch.tensor([i for i, _ in flat], dtype=torch.long),
        piece=torch.tensor([w[1] for _, w in flat], dtype=torch.long),
        spans=[w[2] for _, w in flat],
    )


def _select_words(texts, tokenizer, max_tokens, max_length, max_per_word, seed):
    """``({row: [(form, last piece, span)]}, {row: input_ids})`` in the seeded visiting order."""
    counts: Counter = Counter()
    chosen: dict[int, list[tuple[str, int, tuple[int, int]]]] = {}
    encoded: dict[int, list[int]] = {}
    n_taken = 0
    for row in np.random.default_rng(seed).permutation(len(texts)).tolist():
        enc = tokenizer(texts[row], truncation=True, max_length=max_length, return_offsets_mapping=True)
        for form, last, span in _words(texts[row], enc):
            key = form.lower()
            if max_per_word is not None and counts[key] >= max_per_word:
                continue
            counts[key] += 1
            chosen.setdefault(row, []).append((form, last, span))
            encoded[row] = list(enc["input_ids"])
            n_taken += 1
            if n_taken == max_tokens:
                return chosen, encoded
    return chosen, encoded


def _check_build_args(texts, labels, tokenizer, max_tokens, max_per_word) -> None:
    if len(texts) == 0:
        raise ValueError("texts is empty: the token set needs sentences (e.g. the validation split)")
    if len(labels) != len(texts):
        raise ValueError(
            f"labels has {len(labels)} entries but texts has {len(texts)}; give one per sentence"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"the concept lens needs a fast tokenizer (word_ids and offsets); got {type(tokenizer).__name__}. "
            "Load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    check_int(max_tokens, "max_tokens", minimum=2)
    check_int(max_per_word, "max_per_word", minimum=1, allow_none=True)


def _words(text: str, enc: Any) -> list[tuple[str, int, tuple[int, int]]]:
    """``(form, index of last piece, char span)`` of every word of one tokenised sentence."""
    spans: dict[int, list[int]] = {}
    offsets = enc["offset_mapping"]
    for pos, wid in enumerate(enc.word_ids()):
        if wid is None:
            continue
        start, end = offsets[pos]
        if wid not in spans:
            spans[wid] = [start, end, pos]
        else:
            spans[wid][1], spans[wid][2] = end, pos
    words = []
    for start, end, last in spans.values():
        form = text[start:end]
        if form.strip():
            words.append((form, last, (start, end)))
    return words


@torch.no_grad()
def token_activations(
    model: torch.nn.Module,
    token_set: TokenSet,
    layers: Sequence[int],
    pad_token_id: int = 0,
    batch_size: int = 64,
) -> dict[int, Tensor]:
    """Hidden state of every token's word (its last piece) on each layer: ``{layer: (n_tokens, d)}``.

    Runs ``model`` (``encode(batch)`` or a Hugging Face model, via
    :func:`~lightning_topo.encoding.encode_batch`) in eval mode without gradients over the
    token set's sentences, then restores the model's training mode. Outputs are float32 on CPU.

    Args:
        layers: hidden-state indices (0 = embeddings, ``i`` = encoder layer ``i``, negative from the end).
        pad_token_id: id that pads ``input_ids``. batch_size: sentences per forward.

    Raises:
        IndexError: a layer the model does not have.
    """
    was_training = model.training
    model.eval()
    try:
        out: dict[int, list[Tensor]] = {int(layer): [] for layer in layers}
        for start in range(0, len(token_set.input_ids), batch_size):
            chunk = token_set.input_ids[start : start + batch_size]
            width = max(len(ids) for ids in chunk)
            ids = torch.tensor([x + [pad_token_id] * (width - len(x)) for x in chunk], dtype=torch.long)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in chunk], dtype=torch.long)
            hidden = encode_batch(model, {"input_ids": ids, "attention_mask": mask}).hidden_states
            sel = (token_set.sentence >= start) & (token_set.sentence < start + len(chunk))
            rows, pieces = token_set.sentence[sel] - start, token_set.piece[sel]
            for layer in out:
                if not -len(hidden) <= layer < len(hidden):
                    raise IndexError(
                        f"layer {layer} out of range: the model has hidden states 0..{len(hidden) - 1}"
                    )
                out[layer].append(
                    hidden[layer][rows.to(hidden[layer].device), pieces.to(hidden[layer].device)]
                )
        return {layer: torch.cat(parts).float().cpu() for layer, parts in out.items()}
    finally:
        model.train(was_training)


# ------------------------------------------------------------------- words from token ids alone
#: Most word pieces of one word the lens keeps (longer words, e.g. long URLs, are left out).
MAX_WORD_PIECES = 16


@dataclass(frozen=True)
class SequenceWord:
    """One word of a tokenised sequence.

    Attributes:
        start, last: positions (in the sequence) of the word's first and last piece.
        form: the word's text as the tokenizer decodes it (lower-cased by uncased tokenizers).
        segment: 0 for the first segment, 1 for the second of a sentence pair, ...
    """

    start: int
    last: int
    form: str
    segment: int


def special_token_ids(tokenizer: Any) -> set[int]:
    """Ids that separate segments and are never words: the tokenizer's special tokens but ``unk``."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    unk = getattr(tokenizer, "unk_token_id", None)
    return ids - {unk}


def sequence_words(
    tokenizer: Any, rows: Sequence[Sequence[int]], special: set[int] | None = None
) -> tuple[list[list[SequenceWord]], int]:
    """The words of token-id sequences, read back through their (fast) tokenizer.

    Each sequence is split into segments at its special tokens (``[CLS] a [SEP] b [SEP]`` has
    the segments ``a`` and ``b``: both segments of a sentence pair are read). A segment is
    decoded and tokenised again with offsets; when that gives the same ids back (the usual case)
    its words are the tokenizer's pre-tokenizer words (``word_ids()``), as
    :func:`build_token_set` has them from the text. A segment that does not come back unchanged
    gets one word per piece and is counted (the caller warns). Words holding the unknown token
    (their text is lost) or more than :data:`MAX_WORD_PIECES` pieces are left out.

    Args:
        tokenizer: a fast Hugging Face tokenizer.
        rows: the real tokens of each sequence (no padding).
        special: ids that separate segments (default :func:`special_token_ids`).

    Returns:
        ``(words per row, number of segments that did not round-trip)``.
    """
    special = special_token_ids(tokenizer) if special is None else special
    unk = getattr(tokenizer, "unk_token_id", None)
    runs: list[tuple[int, int, list[int]]] = []  # (row, segment, positions)
    for r, ids in enumerate(rows):
        segment, current = 0, []
        for pos, token in enumerate(ids):
            if int(token) in special:
                if current:
                    runs.append((r, segment, current))
                    segment, current = segment + 1, []
            else:
                current.append(pos)
        if current:
            runs.append((r, segment, current))
    out: list[list[SequenceWord]] = [[] for _ in rows]
    if not runs:
        return out, 0
    pieces = [[int(rows[r][p]) for p in positions] for r, _, positions in runs]
    texts = tokenizer.batch_decode(pieces, clean_up_tokenization_spaces=False)
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    mismatched = 0
    for i, (r, segment, positions) in enumerate(runs):
        ids = pieces[i]
        if list(enc["input_ids"][i]) == ids:
            word_ids, offsets = enc.word_ids(i), enc["offset_mapping"][i]
        else:
            mismatched += 1
            word_ids, offsets = list(range(len(ids))), None
        groups: dict[int, list[int]] = {}
        for j, wid in enumerate(word_ids):
            groups.setdefault(j if wid is None else wid, []).append(j)
        for members in groups.values():
            a, b = members[0], members[-1]
            if b - a + 1 > MAX_WORD_PIECES or unk in ids[a : b + 1]:
                continue
            if offsets is not None:
                form = texts[i][offsets[a][0] : offsets[b][1]]
            else:
                form = tokenizer.decode(ids[a : b + 1], clean_up_tokenization_spaces=False)
            form = form.strip()
            if form:
                out[r].append(SequenceWord(positions[a], positions[b], form, segment))
    return out, mismatched


def form_hashes(forms: Sequence[str]) -> Tensor:
    """``(n,)`` int64 hash of each lower-cased word form, equal on every process (BLAKE2b)."""
    values = [
        int.from_bytes(hashlib.blake2b(f.lower().encode("utf-8"), digest_size=8).digest(), "little", signed=True)
        for f in forms
    ]
    return torch.tensor(values, dtype=torch.long)


def select_tokens(
    keys: Tensor,
    positions: Tensor,
    forms: Tensor,
    max_tokens: int,
    max_per_word: int | None = 10,
    keep_tail: bool = False,
) -> Tensor:
    """The token set's choice over candidate word tokens of sentences identified by a key.

    Sentences are visited in ascending ``keys`` (a seeded pseudo-random key of their tokens,
    :func:`~lightning_topo.scores.tree_probe.sentence_keys`), their words in position order; a
    word is taken unless its form (``forms``, e.g. :func:`form_hashes`) already has
    ``max_per_word`` tokens, until ``max_tokens`` are taken -- :func:`build_token_set`'s rule, with
    the key order in place of a permutation of the split. The result is the same whatever the
    order and batching of the candidates; a ``(key, position)`` seen twice (a sentence on two
    processes) counts once.

    With ``keep_tail`` it returns what a *stream* must keep: every word still eligible under
    the per-form cap in every sentence up to the one where ``max_tokens`` is reached (more
    sentences with smaller keys can only move that point earlier and make a word ineligible,
    never the reverse), so pruning to it and adding more candidates later gives the same final
    choice as seeing every candidate at once.

    Args:
        keys: ``(n,)`` float64 sentence key of each candidate word.
        positions: ``(n,)`` position of the word in its sentence.
        forms: ``(n,)`` int64 id of the word's lower-cased form.
        max_tokens, max_per_word: the caps (``max_per_word=None``: none).

    Returns:
        ``(n,)`` bool: the chosen (or, with ``keep_tail``, the kept) candidates.
    """
    n = int(keys.numel())
    chosen = np.zeros(n, dtype=bool)
    if n == 0:
        return torch.from_numpy(chosen)
    k, p, f = keys.cpu().double().numpy(), positions.cpu().long().numpy(), forms.cpu().long().numpy()
    order = np.lexsort((p, k))
    ko, po = k[order], p[order]
    first = np.r_[True, (ko[1:] != ko[:-1]) | (po[1:] != po[:-1])]  # duplicates of (key, position)
    order, ko = order[first], ko[first]
    fo = f[order]
    if max_per_word is None:
        eligible = np.ones(order.size, dtype=bool)
    else:
        by_form = np.argsort(fo, kind="stable")
        fs = fo[by_form]
        starts = np.r_[True, fs[1:] != fs[:-1]]
        index = np.arange(fs.size)
        rank_sorted = index - np.maximum.accumulate(np.where(starts, index, 0))
        rank = np.empty(fs.size, dtype=np.int64)
        rank[by_form] = rank_sorted
        eligible = rank < max_per_word
    taken = np.cumsum(eligible)
    if keep_tail:
        reached = np.nonzero(taken >= max_tokens)[0]
        keep = eligible if reached.size == 0 else eligible & (ko <= ko[reached[0]])
        chosen[order[keep]] = True
    else:
        chosen[order[eligible & (taken <= max_tokens)]] = True
    return torch.from_numpy(chosen)


def prepend_tokens(batch: dict[str, Tensor], prefix: Sequence[int], max_length: int) -> dict[str, Tensor]:
    """``batch`` with the ids ``prefix`` inserted after each sequence's first token (its ``[CLS]``).

    Sequences longer than ``max_length`` afterwards lose pieces before their last token (the
    final ``[SEP]`` is kept). ``token_type_ids`` of the inserted pieces are those of the first
    token; padding goes to the right with the id that pads ``batch`` (0 if none).

    Args:
        batch: ``input_ids`` ``(b, s)``, ``attention_mask`` ``(b, s)``, optional ``token_type_ids``.
        prefix: word-piece ids to insert. max_length: the model's position limit.
    """
    ids, mask = batch["input_ids"].cpu(), batch["attention_mask"].cpu().bool()
    types = batch.get("token_type_ids")
    rows, type_rows = [], []
    pad = int(ids[~mask][0]) if bool((~mask).any()) else 0
    for r in range(ids.shape[0]):
        real = ids[r][mask[r]].tolist()
        new = real[:1] + list(prefix) + real[1:]
        t = types[r].cpu()[mask[r]].tolist() if types is not None else [0] * len(real)
        new_t = t[:1] + [t[0]] * len(prefix) + t[1:]
        if len(new) > max_length:
            new, new_t = new[: max_length - 1] + new[-1:], new_t[: max_length - 1] + new_t[-1:]
        rows.append(new)
        type_rows.append(new_t)
    width = max(len(x) for x in rows)
    out = {
        "input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in rows], dtype=torch.long),
        "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in rows], dtype=torch.long),
    }
    if types is not None:
        out["token_type_ids"] = torch.tensor([x + [0] * (width - len(x)) for x in type_rows], dtype=torch.long)
    return out


# ----------------------------------------------------------------------------------- label sets
def word_suffix(word: str) -> str | None:
    """The longest suffix of :data:`SUFFIXES` that ``word`` (alphabetic, lower-cased) ends with,
    keeping a stem of at least 3 letters; ``None`` otherwise."""
    w = word.lower()
    if not w.isalpha():
        return None
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            return suffix
    return None


def word_casing(word: str) -> str | None:
    """``"lower"``, ``"upper"`` (all capitals, incl. one capital), ``"title"`` or ``"mixed"``;
    ``None`` for a word without letters."""
    if not any(ch.isalpha() for ch in word):
        return None
    if word.islower():
        return "lower"
    if word.isupper():
        return "upper"
    if word[0].isupper() and (len(word) == 1 or word[1:].islower()):
        return "title"
    return "mixed"


def _punctuation(word: str) -> str | None:
    return "punctuation" if all(unicodedata.category(ch).startswith("P") for ch in word) else None


def _number(word: str) -> str | None:
    return "number" if _NUMBER.match(word) else None


def token_labels(
    token_set: TokenSet, label_set: str, conllu_file: str | Path | None = None
) -> list[Hashable | None]:
    """One label per token of ``token_set`` (``None`` = no label in this set).

    ``label_set`` is one of :data:`LABEL_SETS` -- ``"class"`` (output class of the token's
    sentence: concepts aligned to it are *polar*), ``"lexical"`` (lower-cased word form),
    ``"suffix"`` (:func:`word_suffix`), ``"casing"`` (:func:`word_casing`), ``"punctuation"``,
    ``"number"`` -- or ``"upos"``, read from ``conllu_file`` by :func:`conllu_upos`.

    Raises:
        ValueError: an unknown ``label_set``, or ``"upos"`` without ``conllu_file``.
    """
    if label_set == "class":
        return token_set.token_classes.tolist()
    if label_set == "upos":
        if conllu_file is None:
            raise ValueError("label_set='upos' needs conllu_file, a CoNLL-U file of the same text")
        return conllu_upos(token_set, conllu_file)
    return word_labels(token_set.words, label_set)


def word_labels(words: Sequence[str], label_set: str) -> list[Hashable | None]:
    """One label per word form for a label set read from the form alone (``"lexical"``,
    ``"suffix"``, ``"casing"``, ``"punctuation"``, ``"number"``; see :func:`token_labels`).

    Raises:
        ValueError: another ``label_set``.
    """
    fns = {"lexical": str.lower, "suffix": word_suffix, "casing": word_casing}
    fns.update({"punctuation": _punctuation, "number": _number})
    if label_set not in fns:
        raise ValueError(f"label_set must be one of {tuple(fns)} for word forms; got {label_set!r}")
    return [fns[label_set](w) for w in words]


def _conllu_sentences(path: Path) -> dict[str, list[tuple[str, str | None]]]:
    """Surface tokens ``(form, upos)`` of every sentence, keyed by the forms joined without spaces.
    A multiword token keeps its surface form and the UPOS of its first word."""
    import conllu

    out: dict[str, list[tuple[str, str | None]]] = {}
    with open(path, encoding="utf-8") as fh:
        for sentence in conllu.parse_incr(fh):
            tokens, skip_to = [], 0
            for tok in sentence:
                tid = tok["id"]
                if isinstance(tid, tuple) and len(tid) == 3 and tid[1] == "-":
                    nxt = next((t for t in sentence if t["id"] == tid[0]), None)
                    tokens.append((tok["form"], nxt["upos"] if nxt else None))
                    skip_to = tid[2]
                elif isinstance(tid, int) and tid > skip_to:
                    tokens.append((tok["form"], tok["upos"]))
            out.setdefault(_squeeze("".join(f for f, _ in tokens)), tokens)
    return out


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def conllu_upos(token_set: TokenSet, conllu_file: str | Path) -> list[str | None]:
    """UPOS of each token from a CoNLL-U file of the same text (the ``conllu`` package).

    A CoNLL-U sentence belongs to a token-set sentence when their characters without whitespace
    are equal. A word gets the UPOS of the CoNLL-U token that contains it; a word that crosses
    a CoNLL-U token boundary (e.g. ``don`` of ``do`` + ``n't``), or whose sentence is not in the
    file, gets ``None``.

    Raises:
        FileNotFoundError: ``conllu_file`` does not exist.
        ValueError: no sentence of the file matches the token set's text.
    """
    path = Path(conllu_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"conllu_file {str(path)!r} does not exist; give a CoNLL-U file of the data")
    sentences = _conllu_sentences(path)
    labels: list[str | None] = [None] * token_set.n_tokens
    matched = 0
    for i, text in enumerate(token_set.texts):
        tokens = sentences.get(_squeeze(text))
        if tokens is None:
            continue
        matched += 1
        bounds = np.cumsum([len(_squeeze(f)) for f, _ in tokens])
        squeezed_pos = np.cumsum([0] + [0 if ch.isspace() else 1 for ch in text])
        for t in torch.nonzero(token_set.sentence == i).flatten().tolist():
            start, end = token_set.spans[t]
            a, b = int(squeezed_pos[start]), int(squeezed_pos[end])
            k = int(np.searchsorted(bounds, a, side="right"))
            if k < len(tokens) and b <= bounds[k]:
                labels[t] = tokens[k][1]
    if matched == 0:
        raise ValueError(
            f"conllu_file {str(path)!r}: none of its {len(sentences)} sentences match the text of the "
            f"{len(token_set.texts)} token-set sentences (compared without whitespace), e.g. "
            f"{token_set.texts[0]!r}. Give a CoNLL-U file of this data's validation text."
        )
    return labels


# ------------------------------------------------------------------------------------- triggers
def trigger_words(
    concept_ids: Tensor,
    words: Sequence[str],
    token_classes: Tensor | Sequence[int],
    num_classes: int,
    n_words: int = 5,
) -> dict[int, list[str]]:
    """Words of the most polar concept of each class: ``{class: up to n_words lower-cased words}``.

    The concept is :func:`~lightning_topo.scores.concepts.polar_concepts`' pick on
    ``concept_ids`` (e.g. of the top layer); its distinct lower-cased words are taken by
    frequency (ties: first appearance).

    Args:
        concept_ids: ``(n_tokens,)`` concept ids. words: ``n_tokens`` word forms (a
            :class:`TokenSet`'s ``words``). token_classes: ``(n_tokens,)`` class of each token's
            sentence. num_classes: number of output classes. n_words: words per class.
    """
    polar = polar_concepts(concept_ids, token_classes, num_classes)
    out: dict[int, list[str]] = {}
    for c, (cid, _) in polar.items():
        members = torch.nonzero(torch.as_tensor(concept_ids) == cid).flatten().tolist()
        counts = Counter(words[t].lower() for t in members)
        out[c] = [w for w, _ in counts.most_common(n_words)]
    return out


def pad_rows(rows: Sequence[tuple[list[int], list[int] | None]], pad_id: int) -> dict[str, Tensor]:
    """A right-padded batch (``input_ids``, ``attention_mask``, and ``token_type_ids`` when every row
    has them) of ``(ids, token_type_ids or None)`` rows."""
    width = max(len(ids) for ids, _ in rows)
    out = {
        "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in rows], dtype=torch.long),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
    }
    if all(types is not None for _, types in rows):
        out["token_type_ids"] = torch.tensor([t + [0] * (width - len(t)) for _, t in rows], dtype=torch.long)
    return out


@torch.no_grad()
def _accuracy_on_ids(model, rows, labels, prefix, pad_id, max_length, batch_size) -> float:
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(rows), batch_size):
        batch = pad_rows(rows[start : start + batch_size], pad_id)
        if prefix:
            batch = prepend_tokens(batch, prefix, max_length)
        out = model(**{k: v.to(device) for k, v in batch.items()})
        logits = getattr(out, "logits", None)
        if logits is None:
            raise TypeError(f"the trigger experiment needs a classifier with logits; {type(model).__name__} gives none")
        target = torch.tensor(labels[start : start + batch_size], device=logits.device)
        correct += int((logits.argmax(-1) == target).sum())
    return correct / len(rows)


def concept_triggers_on_ids(
    model: torch.nn.Module,
    tokenizer: Any,
    rows: Sequence[tuple[list[int], list[int] | None]],
    labels: Sequence[int],
    words: dict[int, list[str]],
    vocabulary: Sequence[str],
    max_length: int = 512,
    max_sentences: int = 32,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Accuracy drop when a class's trigger words are prepended to sentences of the other classes.

    For each class ``c`` with words ``W_c``: up to ``max_sentences`` sentences whose label is not
    ``c`` (seeded sample) are classified as they are, with the word pieces of ``W_c`` inserted
    after ``[CLS]``, and with as many random words of ``vocabulary`` (not in ``W_c``). The drops
    (accuracy as is minus accuracy with the prefix) are averaged over classes, weighted by their
    sentence counts. The model runs in eval mode without gradients; its mode is restored.

    Args:
        model: a Hugging Face classifier (its output has ``logits``).
        tokenizer: its tokenizer (tokenises the trigger words, pads).
        rows: ``(input_ids, token_type_ids or None)`` of each sentence (real tokens only).
        labels: class of each sentence. words: ``{class: trigger words}``.
        vocabulary: words the random baseline draws from. max_length: the model's position limit.
        max_sentences: sentences of the other classes per class (seeded sample).

    Returns:
        dict: ``{"trigger_drop", "random_drop", "per_class": {c: {"words", "random_words", "n",
        "acc", "trigger_acc", "random_acc"}}}``.

    Raises:
        ValueError: empty ``words``, or no sentence of another class. TypeError: no logits.
    """
    if not words or not any(words.values()):
        raise ValueError("words is empty: give at least one trigger word for one class")
    vocab = sorted({v.lower() for v in vocabulary})
    rng = np.random.default_rng(seed)
    pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0)
    was_training = model.training
    model.eval()
    per_class: dict[int, dict[str, Any]] = {}
    try:
        for c, trig in sorted(words.items()):
            others = [i for i, y in enumerate(labels) if int(y) != c]
            pool = [v for v in vocab if v not in set(trig)]
            if not others or len(pool) < len(trig):
                raise ValueError(
                    f"class {c}: needs sentences of another class and >= {len(trig)} vocabulary words not in "
                    f"its trigger words; got {len(others)} sentences and {len(pool)} words"
                )
            pick = sorted(rng.choice(len(others), min(max_sentences, len(others)), replace=False).tolist())
            sents, ys = [rows[others[i]] for i in pick], [int(labels[others[i]]) for i in pick]
            rand = [pool[i] for i in rng.choice(len(pool), len(trig), replace=False).tolist()]

            def acc(prefix_words: list[str], sents=sents, ys=ys) -> float:
                prefix = tokenizer(" ".join(prefix_words), add_special_tokens=False)["input_ids"] if prefix_words else []
                return _accuracy_on_ids(model, sents, ys, list(prefix), pad_id, max_length, batch_size)

            per_class[c] = {"words": list(trig), "random_words": rand, "n": len(sents), "acc": acc([]),
                            "trigger_acc": acc(list(trig)), "random_acc": acc(rand)}  # fmt: skip
    finally:
        model.train(was_training)
    total = sum(r["n"] for r in per_class.values())
    return {
        "trigger_drop": sum(r["n"] * (r["acc"] - r["trigger_acc"]) for r in per_class.values()) / total,
        "random_drop": sum(r["n"] * (r["acc"] - r["random_acc"]) for r in per_class.values()) / total,
        "per_class": per_class,
    }
