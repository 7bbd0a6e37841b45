r"""Tree topological probe: how tree-like each layer's word representations are.

Li, Yin and Lin (2023, arXiv 2310.12454; authors' code ``cclx/Effective_Metrics``) train a
linear structural probe (Hewitt & Manning) whose squared norm ``||B h_i||^2`` predicts the depth
of word ``i`` in a tree, and use the probe's validation MSE after a fixed budget as a per-layer
metric. The depths are either a treebank's (``sp``) or self-supervised (``ssp``/``essp``):
:func:`staircase_targets` re-derives them from the probe's current predictions at every step.

Reproduced from the authors' code: the probe (``B`` of shape ``(d, r)``, ``r = d // 2``,
initialised ``U(-0.05, 0.05)``), the ssp/essp label rule (bit for bit, see
:func:`staircase_targets`), the MSE loss, tree depths with the root at 1, and the reference
budget :data:`AUTHORS_BUDGET` (10 epochs, AdamW lr 2e-5, eps 1e-8, linear decay without warmup,
gradient clipping at 1.0, 32 sentences per step, 90/10 split of the sentences). Our choices
(documented in ``docs/tree_probe.md``): padding (and, through :func:`pool_wordpieces`,
``[CLS]``/``[SEP]``) is masked out of the labels and the loss -- the authors' code labels every
padded word-piece position; word pieces are mean-pooled into words; and the monitor's default
budget (:data:`MONITOR_BUDGET`) is shorter with a larger learning rate to fit a 5% cost target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_topo.scores.checks import check_int, check_real, check_seed

__all__ = [
    "AUTHORS_BUDGET",
    "MONITOR_BUDGET",
    "TARGET_KINDS",
    "DepthProbe",
    "ProbeBudget",
    "ProbeResult",
    "TreeProbeLoss",
    "TreebankSentence",
    "check_class_ids",
    "contributing_rows",
    "depths_from_conllu",
    "fit_probe",
    "fit_probes",
    "pack_words",
    "packed_rows",
    "pool_wordpieces",
    "probe_loss",
    "probe_metric_names",
    "probe_targets",
    "sentence_keys",
    "staircase_targets",
    "vocab_tables",
    "token_word_ids",
    "wordpiece_word_ids",
]

#: Self-supervised target rules understood by :func:`fit_probe` (a tensor of depths is ``sp``).
TARGET_KINDS: tuple[str, ...] = ("ssp", "essp")


# ----------------------------------------------------------------------------------- probe
class DepthProbe(nn.Module):
    r"""Linear depth probe: ``depth_i = ||B h_i||^2`` with ``B`` of shape ``(hidden_size, rank)``.

    As the authors' ``OneWordPSDProbe``: ``B`` is initialised from ``U(-0.05, 0.05)`` (seed it
    with ``torch.manual_seed`` or pass ``generator``).

    Args:
        hidden_size: width ``d`` of the representations (``>= 1``).
        rank: probe rank ``r`` (``>= 1``); ``None`` = ``max(1, d // 2)`` as in the paper.
        generator: optional ``torch.Generator`` for the initialisation.

    Raises:
        ValueError: ``hidden_size`` or ``rank`` below 1.
    """

    def __init__(
        self, hidden_size: int, rank: int | None = None, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        hidden_size = check_int(hidden_size, "hidden_size", minimum=1)
        rank = max(1, hidden_size // 2) if rank is None else check_int(rank, "rank", minimum=1)
        self.hidden_size = hidden_size
        self.rank = rank
        proj = torch.empty(hidden_size, rank).uniform_(-0.05, 0.05, generator=generator)
        self.proj = nn.Parameter(proj)

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        """Predicted depths ``(batch, seq)`` of ``hidden`` ``(batch, seq, d)``; 0 where ``mask`` is 0."""
        if hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"hidden has width {hidden.shape[-1]} but the probe expects {self.hidden_size}")
        depth = (hidden.to(self.proj.dtype) @ self.proj).pow(2).sum(-1)
        if mask is not None:
            depth = depth * mask.to(depth.dtype)
        return depth


# ------------------------------------------------------------------------- ssp / essp labels
def staircase_targets(norms: Tensor, mask: Tensor | None = None, reverse: bool = False) -> Tensor:
    r"""Self-supervised depth labels of the authors' ``constructLabel.py``, vectorised.

    Per sentence, the positions are sorted by ``norms`` (ascending, ties in position order as
    Python's stable sort); the first gets 1, the second 2, and each next one keeps the previous
    label ``L`` when ``|s - L| < |L + 1 - s|`` and takes ``L + 1`` otherwise (``s`` its norm):
    a monotone staircase with steps of at most 1. ``ssp`` writes the labels back to their
    positions; ``essp`` (``reverse=True``) writes the same per-position labels in reversed
    position order (position ``j`` of ``n`` gets the label of position ``n - 1 - j``).

    Computed without a loop over tokens: with ``r_k = floor(s_k + 1/2)`` of the ``k``-th
    smallest norm, the rule is ``L_k = L_{k-1} + [r_k > L_{k-1}]``, whose solution for
    non-decreasing ``r`` is ``L_k = k + min_{1<=m<=k}(c_m - m)`` (``k >= 1``, 0-based) with
    ``c_1 = 2`` and ``c_m = max(2, r_m)``: a cumulative minimum.

    Args:
        norms: ``(batch, seq)`` predicted depths (squared norms, ``>= 0``); no gradient flows.
        mask: ``(batch, seq)``, nonzero for real words. ``None`` = every position (exactly the
            authors' code, which labels padding too). Masked positions are left out of the sort
            and of the reversal and get label 0.
        reverse: ``False`` = ``ssp``, ``True`` = ``essp``.

    Returns:
        ``(batch, seq)`` labels in ``norms``' floating dtype.

    Raises:
        ValueError: ``norms`` not 2-D, a ``mask`` of another shape, or a non-finite norm at a
            real position.
    """
    if norms.ndim != 2:
        raise ValueError(f"norms must be (batch, seq); got shape {tuple(norms.shape)}")
    valid = _valid_mask(norms, mask)
    s = norms.detach()
    if not bool(torch.isfinite(s[valid]).all()):
        raise ValueError(
            "norms has NaN or inf at real (unmasked) positions; the probe or the hidden states diverged"
        )
    batch, seq = s.shape
    if seq == 0:
        return torch.zeros_like(s, dtype=_float_dtype(norms))
    s64 = s.double().masked_fill(~valid, math.inf)
    order = torch.sort(s64, dim=1, stable=True).indices
    # Real positions first (stable: the norm order among them is kept).
    order = order.gather(1, torch.sort((~valid).gather(1, order).to(torch.uint8), dim=1, stable=True).indices)
    sorted_labels = _staircase_sorted(s64.gather(1, order))
    labels = torch.zeros(batch, seq, dtype=torch.float64, device=s.device).scatter(1, order, sorted_labels)
    if reverse:
        labels = _reverse_real_positions(labels, valid)
    return labels.masked_fill(~valid, 0.0).to(_float_dtype(norms))


def _staircase_sorted(sorted_norms: Tensor) -> Tensor:
    """Labels ``(batch, seq)`` float64 of norms already sorted ascending (``inf`` = padding, last)."""
    batch, seq = sorted_norms.shape
    k = torch.arange(seq, dtype=torch.float64, device=sorted_norms.device)
    rounded = torch.floor(sorted_norms + 0.5).clamp(min=2.0)  # c_m = max(2, r_m); inf stays inf
    rounded[:, :2] = 2.0  # c_1 = 2 (c_0 is unused: L_0 = 1)
    labels = k + torch.cummin(rounded - k, dim=1).values
    labels[:, 0] = 1.0
    return labels


def _reverse_real_positions(labels: Tensor, valid: Tensor) -> Tensor:
    """Write the labels of the real positions back in reversed position order (``essp``)."""
    rank = valid.long().cumsum(1) - 1  # index of each real position among the real ones
    count = valid.long().sum(1, keepdim=True)
    real_positions = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices  # j-th real position
    source = (count - 1 - rank).clamp(min=0)
    return labels.gather(1, real_positions.gather(1, source))


def _valid_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"mask must have shape {tuple(x.shape[:2])} (batch, seq); got {tuple(mask.shape)}")
    return mask.to(device=x.device) != 0


def _float_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


# ------------------------------------------------------------------------------------ loss
def probe_loss(pred: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error between predicted and target depths over the real positions.

    Args:
        pred: ``(batch, seq)`` predicted depths.
        targets: ``(batch, seq)`` target depths (detached by the caller for ssp/essp).
        mask: ``(batch, seq)``, nonzero for real words; ``None`` = all (the authors' ``MSELoss``).

    Returns:
        Scalar tensor; 0 when no position is real.

    Raises:
        ValueError: shapes differ.
    """
    if pred.shape != targets.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)} and targets {tuple(targets.shape)} must have the same shape"
        )
    if mask is None:
        return (pred - targets.to(pred.dtype)).pow(2).mean()
    valid = _valid_mask(pred, mask).to(pred.dtype)
    sq = (pred - targets.to(pred.dtype)).pow(2) * valid
    return sq.sum() / valid.sum().clamp(min=1.0)


def probe_targets(pred: Tensor, targets: Tensor | str, mask: Tensor | None) -> Tensor:
    """The targets for ``pred``: ssp/essp labels of its detached values, or the given depths."""
    if isinstance(targets, str):
        if targets not in TARGET_KINDS:
            raise ValueError(f"targets must be a depth tensor or one of {TARGET_KINDS}; got {targets!r}")
        return staircase_targets(pred.detach(), mask, reverse=targets == "essp")
    return targets


# ----------------------------------------------------------------- word pieces -> words
def token_word_ids(attention_mask: Tensor) -> Tensor:
    """Every real token its own word (no tokenizer known): ``(batch, seq)`` ids, ``-1`` = padding."""
    real = attention_mask != 0
    ids = real.long().cumsum(1) - 1
    return torch.where(real, ids, torch.full_like(ids, -1))


def wordpiece_word_ids(
    input_ids: Tensor, continuation: Tensor, special: Tensor, attention_mask: Tensor | None = None
) -> Tensor:
    """Word index of every token (``-1`` for special tokens and padding), by the WordPiece rule.

    The authors' rule (their ``homogeneousData``): a token that does not start with ``##``
    begins a new word; a ``##`` token continues the current one. Special tokens (``[CLS]``,
    ``[SEP]``, ...) and padding belong to no word. Vectorised over the batch.

    Args:
        input_ids: ``(batch, seq)`` token ids.
        continuation: ``(vocab,)`` bool, True for ids whose token starts with ``##``.
        special: ``(vocab,)`` bool, True for the tokenizer's special ids.
        attention_mask: ``(batch, seq)``; ``None`` = all tokens real.

    Returns:
        ``(batch, seq)`` int64 word ids, 0-based per sentence.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, seq); got shape {tuple(input_ids.shape)}")
    ids = input_ids.long()
    if ids.numel() and int(ids.max()) >= continuation.numel():
        raise ValueError(
            f"input_ids has id {int(ids.max())} outside the vocabulary of {continuation.numel()} tokens"
        )
    real = _valid_mask(ids, attention_mask) & ~special.to(ids.device)[ids]
    starts = real & ~continuation.to(ids.device)[ids]
    word = starts.long().cumsum(1) - 1
    return torch.where(real & (word >= 0), word, torch.full_like(word, -1))


def vocab_tables(tokenizer: object) -> tuple[Tensor, Tensor]:
    """``(continuation, special)`` bool ``(vocab,)`` tables of a Hugging Face WordPiece tokenizer."""
    vocab = tokenizer.get_vocab()  # type: ignore[attr-defined]
    size = max(len(tokenizer), max(vocab.values()) + 1)  # type: ignore[arg-type]
    continuation = torch.zeros(size, dtype=torch.bool)
    special = torch.zeros(size, dtype=torch.bool)
    for token, i in vocab.items():
        continuation[i] = token.startswith("##")
    for i in getattr(tokenizer, "all_special_ids", []):
        special[int(i)] = True
    return continuation, special


def pool_wordpieces(hidden: Tensor, word_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of the word pieces of each word.

    Args:
        hidden: ``(batch, seq, d)`` token representations.
        word_ids: ``(batch, seq)`` int64 word index per token, ``-1`` = no word
            (see :func:`wordpiece_word_ids`).

    Returns:
        ``words`` ``(batch, max_words, d)`` (zeros past each sentence's end) and ``mask``
        ``(batch, max_words)`` bool. Differentiable in ``hidden``.
    """
    if hidden.ndim != 3 or tuple(word_ids.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"hidden must be (batch, seq, d) and word_ids (batch, seq); got {tuple(hidden.shape)} and {tuple(word_ids.shape)}"
        )
    batch, seq, dim = hidden.shape
    n_words = int(word_ids.max()) + 1 if word_ids.numel() else 0
    n_words = max(n_words, 1)
    real = word_ids >= 0
    flat = (torch.arange(batch, device=hidden.device)[:, None] * n_words + word_ids.clamp(min=0)).reshape(-1)
    weights = real.reshape(-1, 1).to(hidden.dtype)
    sums = hidden.new_zeros(batch * n_words, dim).index_add(0, flat, hidden.reshape(-1, dim) * weights)
    counts = hidden.new_zeros(batch * n_words).index_add(0, flat, weights.squeeze(1))
    words = sums / counts.clamp(min=1.0)[:, None]
    return words.reshape(batch, n_words, dim), (counts > 0).reshape(batch, n_words)


_KEY_POSITIONS = 4096
_MERSENNE_31 = 2**31 - 1


def sentence_keys(input_ids: Tensor, attention_mask: Tensor | None = None, seed: int = 0) -> Tensor:
    """A seeded pseudo-random key in ``[0, 1)`` per sentence that depends only on its tokens.

    Sampling the sentences with the smallest keys gives the same sample whatever the batch
    size, the batch order, the padding or the way a split is sharded over processes.

    Args:
        input_ids: ``(batch, seq)`` token ids.
        attention_mask: ``(batch, seq)``; padding does not change a key. ``None`` = all real.
        seed: different seeds give independent keys.

    Returns:
        ``(batch,)`` float64.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, seq); got shape {tuple(input_ids.shape)}")
    gen = torch.Generator().manual_seed(int(seed))
    weights = torch.randint(1, _MERSENNE_31, (_KEY_POSITIONS,), generator=gen, dtype=torch.int64)
    ids = input_ids.detach().long().cpu() % _MERSENNE_31
    real = _valid_mask(ids, None if attention_mask is None else attention_mask.detach().cpu())
    positions = torch.arange(ids.shape[1]) % _KEY_POSITIONS
    terms = (ids + 1) * weights[positions] % _MERSENNE_31 * real  # each < 2**31
    h = terms.sum(1) % _MERSENNE_31
    mixed = (h * 1_640_531_527 + int(weights[0])) % _MERSENNE_31  # < 2**62: no overflow
    return mixed.double() / _MERSENNE_31


def probe_metric_names(layers: Sequence[int], targets: Sequence[str], supervised: bool = False) -> list[str]:
    """Names (without prefix) a tree-probe lens logs: ``{rule}/layer_{i}`` for every rule and layer."""
    kinds = [*targets, *(["sp"] if supervised else [])]
    return [f"{kind}/layer_{int(layer)}" for kind in kinds for layer in layers]


# ------------------------------------------------------------------------------ fitting
@dataclass(frozen=True)
class ProbeBudget:
    """Training budget of :func:`fit_probe` (the metric is the validation loss after it).

    Attributes:
        epochs: passes over the training sentences.
        lr: AdamW peak learning rate (linear decay to 0, no warmup, as the authors).
        batch_size: sentences per optimizer step.
        clip_norm: gradient-norm clipping (``None``: off).
        val_fraction: share of the sentences held out for the validation loss.
    """

    epochs: int = 10
    lr: float = 2e-5
    batch_size: int = 32
    clip_norm: float | None = 1.0
    val_fraction: float = 0.1

    def check(self) -> None:
        """Raise ``TypeError``/``ValueError`` naming the first bad field."""
        check_int(self.epochs, "budget.epochs", minimum=1)
        check_real(self.lr, "budget.lr", minimum=0.0, strict=True)
        check_int(self.batch_size, "budget.batch_size", minimum=1)
        check_real(self.clip_norm, "budget.clip_norm", minimum=0.0, strict=True, allow_none=True)
        if not 0 < check_real(self.val_fraction, "budget.val_fraction") < 1:
            raise ValueError(f"budget.val_fraction must be in (0, 1); got {self.val_fraction!r}")


#: The authors' budget (``train_ssp.py``): 10 epochs, AdamW lr 2e-5, 32 sentences a step, 90/10.
AUTHORS_BUDGET = ProbeBudget()
#: The monitor's default (our choice, see docs/tree_probe.md): ~256 sentences instead of ~20k, so
#: a larger learning rate and fewer epochs to fit the monitor's cost target; 20% held out.
MONITOR_BUDGET = ProbeBudget(epochs=5, lr=1e-2, batch_size=32, val_fraction=0.2)


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of :func:`fit_probe`.

    Attributes:
        val_loss: probe loss on the held-out sentences after the budget (the layer's metric).
        train_loss: mean training loss of the last epoch.
        probe: the trained :class:`DepthProbe` (on the hidden states' device).
    """

    val_loss: float
    train_loss: float
    probe: DepthProbe


def fit_probe(
    hiddens: Tensor,
    masks: Tensor,
    targets: Tensor | str | None = "ssp",
    budget: ProbeBudget = AUTHORS_BUDGET,
    rank: int | None = None,
    seed: int = 0,
) -> ProbeResult:
    """Train a :class:`DepthProbe` on one layer's word vectors and return its validation loss.

    The sentences are split (seeded) into training and held-out parts (``budget.val_fraction``,
    at least one each); the probe trains for ``budget.epochs`` epochs of ``budget.batch_size``
    sentences with AdamW (eps 1e-8, no weight decay) and a linear decay of the learning rate
    to 0, clipping the gradient norm (the authors' recipe). For ``"ssp"``/``"essp"`` the targets
    are recomputed from the probe's current predictions at every step (and for the held-out
    loss), as in the authors' code. The hidden states are not changed and get no gradient;
    it also works when called under ``torch.no_grad`` or ``inference_mode`` (e.g. from a
    callback at the end of validation). Several layers and rules at once: :func:`fit_probes`
    (the same result for each, in one batched problem).

    Args:
        hiddens: ``(n_sentences, n_words, d)`` word vectors of one layer (see
            :func:`pool_wordpieces`).
        masks: ``(n_sentences, n_words)``, nonzero for real words.
        targets: ``"ssp"`` (default; also ``None``), ``"essp"``, or tree depths
            ``(n_sentences, n_words)`` (``sp``, e.g. from :func:`depths_from_conllu`).
        budget: :class:`ProbeBudget`; default :data:`AUTHORS_BUDGET`.
        rank: probe rank (``None`` = ``d // 2``).
        seed: seed of the probe's initialisation, the split and the shuffling.

    Returns:
        :class:`ProbeResult` ``(val_loss, train_loss, probe)``.

    Raises:
        ValueError: bad shapes, fewer than 2 sentences, a sentence with fewer than 2 words,
            unknown ``targets``, non-finite inputs or a bad ``budget``/``rank``.
    """
    targets = "ssp" if targets is None else targets
    if hiddens.ndim != 3:
        raise ValueError(f"hiddens must be (n_sentences, n_words, d); got shape {tuple(hiddens.shape)}")
    words, lengths = pack_words(hiddens, masks)
    if isinstance(targets, Tensor):
        if tuple(targets.shape) != tuple(masks.shape):
            raise ValueError(
                f"targets must be 'ssp', 'essp' or depths of shape {tuple(masks.shape)}; got {tuple(targets.shape)}"
            )
        targets = targets[_valid_mask(hiddens, masks)]
    return fit_probes(words[:, None], lengths, [targets], budget=budget, rank=rank, seed=seed)[0][0]


def pack_words(hiddens: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Padded word vectors ``(n_sentences, n_words, ...)`` to the packed layout of :func:`fit_probes`.

    Returns ``(words, lengths)``: the real words ``(total_words, ...)`` sentence by sentence (a
    sentence's real words are taken in position order) and the words per sentence
    ``(n_sentences,)``. Raises ``ValueError`` for a ``masks`` of another shape than ``hiddens``'
    first two dimensions or fewer than 3 dimensions.
    """
    if hiddens.ndim < 3:
        raise ValueError(f"hiddens must be (n_sentences, n_words, d); got shape {tuple(hiddens.shape)}")
    valid = _valid_mask(hiddens, masks)
    return hiddens[valid], valid.sum(1)


def packed_rows(lengths: Tensor, sentences: Tensor) -> Tensor:
    """Row indices, in the packed layout of :func:`pack_words`, of the words of ``sentences``.

    Args:
        lengths: ``(n_sentences,)`` words per sentence of the packed tensor.
        sentences: ``(k,)`` sentence indices, in the order their words are wanted.

    Returns:
        ``(lengths[sentences].sum(),)`` int64 row indices, sentence by sentence.
    """
    lengths = lengths.long()
    sentences = sentences.to(lengths.device).long()
    offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])
    lens = lengths[sentences]
    starts = torch.cat([lens.new_zeros(1), lens.cumsum(0)[:-1]])
    within = torch.arange(int(lens.sum()), device=lens.device) - starts.repeat_interleave(lens)
    return offsets[sentences].repeat_interleave(lens) + within


def fit_probes(
    words: Tensor,
    lengths: Tensor,
    targets: Sequence[Tensor | str] = ("ssp",),
    budget: ProbeBudget = AUTHORS_BUDGET,
    rank: int | None = None,
    seed: int = 0,
    progress: Any = None,
) -> list[list[ProbeResult]]:
    r"""One probe per layer and target rule, trained together as one batched problem.

    Each probe is trained exactly as :func:`fit_probe` would train it alone (the same seeded
    initialisation, split and step order; its own loss, gradient clipping and AdamW state):
    the probes share no parameter, so batching changes only the speed. A monitor measuring 13
    layers under two rules runs one loop of ``budget.epochs * steps`` steps of 26-wide matrix
    products instead of 26 loops.

    Args:
        words: ``(total_words, n_layers, d)``: the real words of every sentence at every layer,
            concatenated sentence by sentence (:func:`pack_words`; the layout
            :class:`~lightning_topo.metrics.TreeProbeScore` keeps).
        lengths: ``(n_sentences,)`` words per sentence (each ``>= 2``, summing to ``total_words``).
        targets: rules, each ``"ssp"``, ``"essp"`` or tree depths ``(total_words,)`` (``sp``).
        budget, rank, seed: as :func:`fit_probe`.
        progress: optional ``tqdm``-like bar, advanced by one per epoch.

    Returns:
        ``results[layer][target]``: a :class:`ProbeResult` per layer (in ``words``' order) and rule.

    Raises:
        ValueError: as :func:`fit_probe`, and for an empty ``targets``.
    """
    budget.check()
    seed = check_seed(seed)
    if isinstance(targets, str | Tensor):
        raise TypeError(f"targets must be a list of rules ('ssp', 'essp' or depths); got {type(targets).__name__}")
    targets = list(targets)
    lengths = _check_fit_inputs(words, lengths, targets)
    n_layers, dim = words.shape[1], words.shape[2]
    rank = max(1, dim // 2) if rank is None else check_int(rank, "rank", minimum=1)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.inference_mode(False), torch.enable_grad():
        x = words.detach()  # rows are gathered per step: no copy of all words (works on inference tensors)
        ys = [t if isinstance(t, str) else t.detach().clone().to(x.dtype) for t in targets]
        init = DepthProbe(dim, rank, generator=gen).proj.detach().to(device=x.device, dtype=x.dtype)
        proj = torch.nn.Parameter(init.repeat(n_layers, 1, len(ys)))  # (layers, d, rules * rank)
        batcher = _WordBatcher(x, lengths, ys, rank)
        perm = torch.randperm(len(lengths), generator=gen)
        n_train = min(len(lengths) - 1, max(1, int((1 - budget.val_fraction) * len(lengths))))
        train_idx, val_idx = perm[:n_train], perm[n_train:]
        train_loss = _train_probes(proj, batcher, train_idx, budget, gen, progress)
        with torch.no_grad():
            val_loss = batcher.loss(proj, val_idx)
    results = []
    for layer in range(n_layers):
        row = []
        for j in range(len(ys)):
            probe = DepthProbe(dim, rank).to(device=x.device, dtype=x.dtype)
            with torch.no_grad():
                probe.proj.copy_(proj.detach()[layer, :, j * rank : (j + 1) * rank])
            row.append(ProbeResult(float(val_loss[layer, j]), float(train_loss[layer, j]), probe))
        results.append(row)
    return results


def _check_fit_inputs(words: Tensor, lengths: Tensor, targets: list[Tensor | str]) -> Tensor:
    """The checked ``lengths`` (int64, on ``words``' device) of :func:`fit_probes`' inputs."""
    if words.ndim != 3:
        raise ValueError(f"words must be (total_words, n_layers, d); got shape {tuple(words.shape)}")
    if not words.is_floating_point():
        raise ValueError(f"hiddens must be floating point; got {words.dtype}")
    if not isinstance(lengths, Tensor) or lengths.ndim != 1:
        raise ValueError("lengths must be a 1-D tensor of words per sentence")
    lengths = lengths.to(device=words.device, dtype=torch.long)
    if int(lengths.sum()) != words.shape[0]:
        raise ValueError(f"lengths sum to {int(lengths.sum())} but words has {words.shape[0]} rows")
    if len(lengths) < 2:
        raise ValueError(f"fit_probe needs at least 2 sentences (one to train, one held out); got {len(lengths)}")
    short = (lengths < 2).nonzero().flatten().tolist()
    if short:
        raise ValueError(
            f"fit_probe needs sentences of at least 2 words (a tree of one word has no structure); "
            f"{len(short)} sentence(s) have fewer, e.g. index {short[0]} with {int(lengths[short[0]])}; "
            "drop them first (mask.sum(1) >= 2)"
        )
    if not bool(torch.isfinite(words).all()):
        raise ValueError("hiddens has NaN or inf at real words")
    if not targets:
        raise ValueError(f"targets must name at least one rule ({TARGET_KINDS} or depths)")
    for target in targets:
        if isinstance(target, str):
            if target not in TARGET_KINDS:
                raise ValueError(
                    f"targets must be a depth tensor or one of {TARGET_KINDS} (or None = 'ssp'); got {target!r}"
                )
        elif not isinstance(target, Tensor) or tuple(target.shape) != (words.shape[0],):
            got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
            raise ValueError(f"targets must be 'ssp', 'essp' or depths of shape ({words.shape[0]},); got {got}")
        elif not bool(torch.isfinite(target.double()).all()):
            raise ValueError("targets has NaN or inf at real words")
    return lengths


class _WordBatcher:
    """Losses of every probe on a batch of sentences of the packed words (see :func:`fit_probes`)."""

    def __init__(self, x: Tensor, lengths: Tensor, targets: list[Tensor | str], rank: int) -> None:
        self.x, self.lengths, self.targets, self.rank = x, lengths, targets, rank

    def loss(self, proj: Tensor, idx: Tensor) -> Tensor:
        """``(layers, rules)`` masked MSE of each probe over the sentences ``idx``."""
        idx = idx.to(self.lengths.device)
        lens = self.lengths[idx]
        rows = packed_rows(self.lengths, idx)
        words = self.x[rows].transpose(0, 1)  # (layers, words, d): only real words are projected
        n_layers, n_rules = proj.shape[0], len(self.targets)
        depth = torch.bmm(words, proj).view(n_layers, -1, n_rules, self.rank).pow(2).sum(-1)
        mask = torch.arange(int(lens.max()), device=lens.device)[None, :] < lens[:, None]  # (batch, width)
        pred = depth.new_zeros(n_layers, n_rules, *mask.shape).masked_scatter(
            mask.expand(n_layers, n_rules, *mask.shape), depth.permute(0, 2, 1)
        )
        losses = []
        for j, rule in enumerate(self.targets):
            p = pred[:, j]  # (layers, batch, width)
            if isinstance(rule, str):
                flat_mask = mask.repeat(n_layers, 1)
                target = probe_targets(p.reshape(-1, mask.shape[1]), rule, flat_mask).view_as(p)
            else:
                target = p.new_zeros(mask.shape).masked_scatter(mask, rule[rows])[None]
            sq = (p - target).pow(2) * mask
            losses.append(sq.sum((1, 2)) / mask.sum().clamp(min=1))
        return torch.stack(losses, dim=1)


def _train_probes(
    proj: Tensor,
    batcher: _WordBatcher,
    train_idx: Tensor,
    budget: ProbeBudget,
    gen: torch.Generator,
    progress: Any = None,
) -> Tensor:
    """AdamW with linear decay, each probe's gradient clipped to its own norm; last epoch's mean losses."""
    steps_per_epoch = math.ceil(len(train_idx) / budget.batch_size)
    total = budget.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW([proj], lr=budget.lr, eps=1e-8, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, (total - step) / total))
    n_layers, n_rules, rank = proj.shape[0], len(batcher.targets), batcher.rank
    epoch_loss = proj.new_zeros(n_layers, n_rules)
    for _ in range(budget.epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        epoch_loss = proj.new_zeros(n_layers, n_rules)
        for start in range(0, len(order), budget.batch_size):
            loss = batcher.loss(proj, order[start : start + budget.batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # the probes share no parameter: each gets its own gradient
            if budget.clip_norm is not None:
                grad = proj.grad.view(n_layers, -1, n_rules, rank)
                norm = grad.pow(2).sum((1, 3), keepdim=True).sqrt()  # per probe, as clip_grad_norm_
                grad.mul_((budget.clip_norm / (norm + 1e-6)).clamp(max=1.0))
            optimizer.step()
            scheduler.step()
            epoch_loss += loss.detach()
        if progress is not None:
            progress.update(1)
    return epoch_loss / steps_per_epoch


# ----------------------------------------------------------------------- treebank depths
@dataclass(frozen=True)
class TreebankSentence:
    """One CoNLL-U sentence: its text, its (syntactic) words and their tree depths (root = 1)."""

    text: str
    words: tuple[str, ...]
    depths: tuple[int, ...]


def depths_from_conllu(path: str | Path, texts: Sequence[str] | None = None) -> list[TreebankSentence]:
    """Read dependency-tree depths from a CoNLL-U file (the ``conllu`` package parses it).

    The depth of a word is the number of arcs to the root plus one (the root has depth 1), as
    in the authors' ``dataPreproce2.py``. Multiword-token lines (``1-2``) and empty nodes
    (``8.1``) are skipped; every sentence's surface tokens must spell its ``# text`` comment
    (spaces ignored), so that depths are never attached to the wrong words.

    Args:
        path: the ``.conllu`` file.
        texts: optional sentences the file must contain, in the same order (whitespace-normalised
            comparison with each ``# text``, or the words joined by spaces where there is none).

    Returns:
        One :class:`TreebankSentence` per sentence.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an empty file, a head outside the sentence, a cycle, words that do not spell
            the sentence's text, or ``texts`` that do not match (the message names the sentence).
    """
    import conllu

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CoNLL-U file not found: {path}")
    with path.open(encoding="utf-8") as f:
        sentences = [
            _treebank_sentence(tokens, path, i) for i, tokens in enumerate(conllu.parse_incr(f), start=1)
        ]
    if not sentences:
        raise ValueError(
            f"{path} has no sentences; give a CoNLL-U file (10 tab-separated columns, blank line between sentences)"
        )
    if texts is not None:
        _match_texts(sentences, list(texts), path)
    return sentences


def _treebank_sentence(tokens: object, path: Path, number: int) -> TreebankSentence:
    words = [t for t in tokens if isinstance(t["id"], int)]  # type: ignore[attr-defined]
    where = f"{path}, sentence {number}"
    if not words:
        raise ValueError(f"{where} has no words")
    heads = {int(t["id"]): t["head"] for t in words}
    depths = [_depth(int(t["id"]), heads, where) for t in words]
    forms = tuple(str(t["form"]) for t in words)
    text = tokens.metadata.get("text") if hasattr(tokens, "metadata") else None  # type: ignore[attr-defined]
    if text is None:
        text = " ".join(forms)
    surface = "".join(_surface_forms(tokens))
    if "".join(text.split()) != "".join(surface.split()):
        raise ValueError(
            f"{where}: the tokens spell {surface!r} but '# text' is {text!r}; fix the file or the comment"
        )
    return TreebankSentence(text=text, words=forms, depths=tuple(depths))


def _depth(word: int, heads: dict[int, object], where: str) -> int:
    depth, seen, current = 1, {word}, word
    while True:
        head = heads[current]
        if head is None or head == "_" or not isinstance(head, int):
            raise ValueError(
                f"{where}: word {current} has no numeric HEAD ({head!r}); depths need a full tree"
            )
        if head == 0:
            return depth
        if head not in heads:
            raise ValueError(f"{where}: word {current} has HEAD {head}, which is not a word of the sentence")
        if head in seen:
            raise ValueError(f"{where}: the HEAD column has a cycle through word {head}")
        seen.add(head)
        depth, current = depth + 1, head


def _surface_forms(tokens: object) -> list[str]:
    out: list[str] = []
    skip_to = 0
    for t in tokens:  # type: ignore[attr-defined]
        tid = t["id"]
        if isinstance(tid, tuple) and len(tid) == 3 and tid[1] == "-":
            out.append(str(t["form"]))
            skip_to = int(tid[2])
        elif isinstance(tid, int) and tid > skip_to:
            out.append(str(t["form"]))
    return out


def _match_texts(sentences: list[TreebankSentence], texts: list[str], path: Path) -> None:
    if len(texts) != len(sentences):
        raise ValueError(
            f"{path} has {len(sentences)} sentences but {len(texts)} texts were given; they must match one to one"
        )
    for i, (sent, text) in enumerate(zip(sentences, texts, strict=True), start=1):
        if " ".join(str(text).split()) != " ".join(sent.text.split()):
            raise ValueError(
                f"{path}, sentence {i}: '# text' is {sent.text!r} but the given text is {text!r}"
            )


# ----------------------------------------------------------------------- auxiliary loss
class TreeProbeLoss(nn.Module):
    r"""The paper's fine-tuning term: probe loss of a :class:`DepthProbe` at one layer.

    An auxiliary loss for :meth:`SequenceClassifier.register_auxiliary_loss
    <lightning_topo.models.SequenceClassifier.register_auxiliary_loss>` (called as
    ``fn(encoded, batch)``); register it with ``weight=10`` (the paper's :math:`\lambda`). The
    probe's parameters train with the model. Its gradient reaches the encoder layers up to
    ``layer`` and the embeddings, never the layers above or the classifier head.

    Args:
        hidden_size: the encoder's width.
        layer: hidden-state index (0 = embeddings, ``i`` = output of encoder layer ``i``;
            negative counts from the end).
        rank: probe rank (``None`` = ``hidden_size // 2``).
        targets: ``"ssp"`` (default) or ``"essp"``.
        continuation, special: ``(vocab,)`` bool tables from :func:`vocab_tables`; with them the
            word pieces are mean-pooled into words and special tokens are left out; without
            them every non-padding token (``[CLS]``/``[SEP]`` included) is a position.
        seed: seed of the probe's initialisation.
        contributing_labels: keyword only; class ids whose sentences enter the loss (the
            authors: only CoLA's "acceptable" sentences, label 1). The other sentences of a
            batch are masked out of the labels and of the mean (a batch without a
            contributing sentence gives 0). ``None`` (default): every sentence. Needs
            ``batch["labels"]`` at call time.

    Raises:
        ValueError: bad ``targets``, ``rank`` or ``hidden_size``, an empty or negative
            ``contributing_labels``; at call time a ``layer`` out of range for the model or a
            batch without ``labels`` when ``contributing_labels`` is set.
        TypeError: ``contributing_labels`` not a list of ints.
    """

    def __init__(
        self,
        hidden_size: int,
        layer: int = -1,
        rank: int | None = None,
        targets: str = "ssp",
        continuation: Tensor | None = None,
        special: Tensor | None = None,
        seed: int = 0,
        *,
        contributing_labels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if targets not in TARGET_KINDS:
            raise ValueError(f"targets must be one of {TARGET_KINDS}; got {targets!r}")
        layer, seed = check_int(layer, "layer"), check_seed(seed)
        if (continuation is None) != (special is None):
            raise ValueError("give both continuation and special (vocab_tables(tokenizer)) or neither")
        self.layer = int(layer)
        self.targets = targets
        self.probe = DepthProbe(hidden_size, rank, generator=torch.Generator().manual_seed(int(seed)))
        self.register_buffer("continuation", continuation, persistent=False)
        self.register_buffer("special", special, persistent=False)
        self.contributing_labels = check_class_ids(contributing_labels, "contributing_labels")

    def forward(self, encoded: object, batch: object = None) -> Tensor:
        """Scalar probe loss of ``encoded.hidden_states[layer]`` (an ``EncodedBatch``)."""
        hidden_states = encoded.hidden_states  # type: ignore[attr-defined]
        n = len(hidden_states)
        if not -n <= self.layer < n:
            raise ValueError(
                f"layer {self.layer} is out of range: the model has hidden states 0..{n - 1} (0 = embeddings)"
            )
        hidden = hidden_states[self.layer]
        mask = encoded.attention_mask  # type: ignore[attr-defined]
        if self.continuation is not None:
            ids = batch["input_ids"].to(hidden.device)  # type: ignore[index]
            word_ids = wordpiece_word_ids(ids, self.continuation, self.special, mask)
            hidden, mask = pool_wordpieces(hidden, word_ids)
        if self.contributing_labels is not None:
            mask = mask * contributing_rows(batch, self.contributing_labels, mask.device)[:, None].to(
                mask.dtype
            )
        pred = self.probe(hidden, mask)
        return probe_loss(pred, probe_targets(pred, self.targets, mask), mask)


def check_class_ids(labels: object, name: str = "contributing_labels") -> tuple[int, ...] | None:
    """``labels`` as a sorted tuple of distinct class ids ``>= 0`` (``None`` passes).

    Raises:
        TypeError: not a list/tuple of ints (a bare int or string is refused).
        ValueError: empty, or an id below 0.
    """
    if labels is None:
        return None
    if isinstance(labels, str | bytes) or not isinstance(labels, Sequence | set | frozenset):
        raise TypeError(
            f"{name} must be a list of class ids (ints >= 0) or None; got {labels!r} ({type(labels).__name__})"
        )
    ids = [check_int(v, f"{name}[{i}]", minimum=0) for i, v in enumerate(labels)]
    if not ids:
        raise ValueError(
            f"{name} must name at least one class id (or be None for every sentence); got {labels!r}"
        )
    return tuple(sorted(set(ids)))  # type: ignore[arg-type]


def contributing_rows(batch: object, labels: Sequence[int], device: torch.device | None = None) -> Tensor:
    """``(batch,)`` bool: which sentences of ``batch`` have a class in ``labels``.

    Raises:
        ValueError: ``batch`` has no ``labels`` tensor.
    """
    y = batch.get("labels") if isinstance(batch, dict) or hasattr(batch, "get") else None  # type: ignore[union-attr]
    if not isinstance(y, Tensor):
        raise ValueError(
            "contributing_labels needs the batch's class labels (batch['labels'], shape (batch,)); "
            f"this batch has keys {sorted(batch) if hasattr(batch, 'keys') else type(batch).__name__}"  # type: ignore[arg-type]
        )
    wanted = torch.tensor(list(labels), dtype=torch.long, device=y.device)
    return torch.isin(y.long().reshape(-1), wanted).to(device if device is not None else y.device)
