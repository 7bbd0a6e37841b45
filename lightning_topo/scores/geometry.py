r"""Geometry of BERT (Bonino et al. 2025): cone index, attention entropy and directionality.

Plain functions of tensors (methods.md §4). Those that are functions of hidden states
(:func:`cone_index`, :func:`cone_index_per_head`, :func:`attention_entropy`) and of weights
(:func:`qk_spectral_entropy`, :func:`directionality`, :func:`projection_singular_values`) are
differentiable, so they can go into a training loss as well as into a monitor.

Conventions
-----------
* **Cone index** of the vectors ``x_1 .. x_n`` of one sequence: ``‖Σ_i x_i / ‖x_i‖‖₂`` in
  ``[0, n]``: ``n`` when all point one way, about ``√n`` for random directions, ``0`` when they
  cancel (the authors' ``distance_cone``). ``normalize=True`` divides by ``n`` (our choice, so
  sequences of different lengths compare; 1 = one direction).
* **Attention entropy**: Shannon entropy (natural log) of each *row* of a head's attention
  matrix -- the distribution of one query over the keys -- averaged over the valid query
  positions. Uniform attention over ``s`` keys gives ``log s``. The authors' code has a
  different "Shannon entropy" of a matrix (a 20-bin histogram of all its entries, natural log,
  applied to ``Q_i K_iᵀ``); :func:`matrix_histogram_entropy` reproduces it for comparison.
* **Weights** are given as Hugging Face ``nn.Linear`` weights, shape ``(out, in) =
  (num_heads * d_head, hidden)``; head ``h`` is the row block ``W[h*d_head:(h+1)*d_head]``.
  The bilinear form of head ``h`` is ``q_i · k_j = x_iᵀ M_h x_j`` with
  ``M_h = (W_q^h)ᵀ W_k^h`` (``hidden × hidden``), the paper's ``W_q^h (W_k^h)ᵀ`` written with
  ``(hidden, d_head)`` matrices. Biases are not part of ``M_h`` (as in the paper).
* **Directionality** of head ``h``: the symmetric share ``‖S‖_F² / ‖M‖_F²`` of ``M_h``,
  ``S = (M + Mᵀ)/2``; 1 for a symmetric, 0 for an antisymmetric ``M``.

``M_h`` has rank at most ``d_head``, so everything is computed from ``d_head × d_head``
matrices (a QR factorisation for the singular values, traces for the Frobenius norms), never
from the ``hidden × hidden`` product.

Example::

    hidden = encoded.hidden_states[-1]                       # (batch, seq, d)
    cone = cone_index(hidden, encoded.attention_mask, normalize=True)   # (batch,)
    attn = self_attention.query.weight, self_attention.key.weight
    sym = directionality(*attn, num_heads=12)               # (12,)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_topo.scores.names import metric_name

__all__ = [
    "HEADLINE",
    "GeometryMetrics",
    "attention_entropy",
    "attention_entropy_from_logits",
    "cone_index",
    "cone_index_per_head",
    "directionality",
    "geometry_metrics",
    "matrix_histogram_entropy",
    "metric_names",
    "projection_singular_values",
    "qk_spectral_entropy",
]

_NORMALIZATIONS = ("sum", "l2")


# ---------------------------------------------------------------------------------- checks


def _check_float(x: object, name: str, dim: int, shape: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape}; got {type(x).__name__}")
    if x.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D of shape {shape}; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype; got {x.dtype}. Convert with {name}.float()")
    return x


def _check_mask(mask: object, batch: int, seq: int, device: torch.device) -> Tensor:
    """``mask`` as a bool ``(batch, seq)`` tensor with at least one valid position per row."""
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"mask must be a torch.Tensor of shape (batch, seq) of 0/1; got {type(mask).__name__}"
        )
    if tuple(mask.shape) != (batch, seq):
        raise ValueError(f"mask must have shape (batch, seq) = {(batch, seq)}; got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("mask must hold only 0 and 1 (1 = real token, 0 = padding)")
        mask = mask != 0
    mask = mask.to(device)
    empty = (~mask.any(dim=1)).nonzero().flatten()
    if empty.numel():
        raise ValueError(
            f"mask has no valid position in sequence(s) {empty.tolist()[:10]} of the batch; every "
            "sequence needs at least one real token (attention_mask 1). Drop empty sequences first"
        )
    return mask


def _check_num_heads(w: Tensor, num_heads: object, name: str) -> int:
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int; got {num_heads!r}")
    if w.shape[0] % num_heads:
        raise ValueError(
            f"{name} has {w.shape[0]} rows (num_heads * d_head), not a multiple of num_heads={num_heads}; "
            "pass the nn.Linear weight of shape (out, in) = (num_heads * d_head, hidden)"
        )
    return num_heads


def _head_blocks(w_q: Tensor, w_k: Tensor, num_heads: int) -> tuple[Tensor, Tensor]:
    """``(heads, d_head, hidden)`` views of the query and key weights."""
    _check_float(w_q, "w_q", 2, "(num_heads * d_head, hidden)")
    _check_float(w_k, "w_k", 2, "(num_heads * d_head, hidden)")
    if w_q.shape != w_k.shape:
        raise ValueError(
            f"w_q and w_k must have the same shape; got {tuple(w_q.shape)} and {tuple(w_k.shape)}"
        )
    h = _check_num_heads(w_q, num_heads, "w_q")
    return w_q.reshape(h, -1, w_q.shape[1]), w_k.reshape(h, -1, w_k.shape[1])


# ---------------------------------------------------------------------------------- cone index


def cone_index(x: Tensor, mask: Tensor | None = None, normalize: bool = False) -> Tensor:
    """Cone index ``‖Σ_i x_i / ‖x_i‖‖₂`` of each sequence's vectors.

    Args:
        x: ``(batch, seq, d)`` vectors (token hidden states, head outputs, ...).
        mask: ``(batch, seq)`` of 0/1 or bool, 1 = use the position; ``None``: all positions.
        normalize: divide by the number of positions used, so the value lies in ``[0, 1]``
            (1 = all vectors point one way). Default ``False`` (the paper's ``[0, n]`` scale).

    Returns:
        ``(batch,)`` tensor, differentiable w.r.t. ``x``. Zero vectors are skipped (neither
        summed nor counted); a sequence whose vectors are all zero gets 0.

    Raises:
        TypeError, ValueError: ``x`` is not a 3-D floating tensor, or ``mask`` has the wrong
            shape, values other than 0/1, or a sequence with no valid position.
    """
    _check_float(x, "x", 3, "(batch, seq, d)")
    batch, seq, _ = x.shape
    valid = torch.ones(batch, seq, dtype=torch.bool, device=x.device)
    if mask is not None:
        valid = _check_mask(mask, batch, seq, x.device)
    # Zero vectors are divided by a tiny positive number instead of 0: they stay 0, add nothing
    # and are not counted (vector_norm's backward gives 0, not NaN, at a zero vector).
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    valid = valid & (norms.squeeze(-1) > 0)
    units = (x / norms.clamp_min(torch.finfo(x.dtype).tiny)) * valid.unsqueeze(-1).to(x.dtype)
    index = torch.linalg.vector_norm(units.sum(dim=1), dim=-1)
    if normalize:
        index = index / valid.sum(dim=1).clamp_min(1).to(x.dtype)
    return index


def cone_index_per_head(
    context: Tensor, num_heads: int, mask: Tensor | None = None, normalize: bool = False
) -> Tensor:
    """Cone index of each head's output (context vectors) in each sequence.

    Args:
        context: ``(batch, seq, num_heads * d_head)`` concatenated head outputs, as a BERT
            self-attention module returns them (before the output projection).
        num_heads: number of heads; head ``h`` is the slice ``[h*d_head:(h+1)*d_head]``.
        mask, normalize: as in :func:`cone_index`.

    Returns:
        ``(batch, num_heads)`` tensor, differentiable w.r.t. ``context``.
    """
    _check_float(context, "context", 3, "(batch, seq, num_heads * d_head)")
    batch, seq, width = context.shape
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or width % num_heads:
        raise ValueError(
            f"num_heads must be a positive int dividing the last dimension of context ({width}); got {num_heads!r}"
        )
    heads = context.reshape(batch, seq, num_heads, width // num_heads).transpose(1, 2)
    heads = heads.reshape(batch * num_heads, seq, width // num_heads)
    if mask is not None:
        mask = _check_mask(mask, batch, seq, context.device).repeat_interleave(num_heads, dim=0)
    return cone_index(heads, mask, normalize=normalize).reshape(batch, num_heads)


# ---------------------------------------------------------------------------------- attention


def attention_entropy(attn: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean Shannon entropy (natural log) of the attention rows of each head.

    For query ``q`` of head ``h``: ``H = -Σ_k p_qk log p_qk`` (``0 log 0 = 0``), averaged over
    the valid query positions. Padded keys carry probability 0 in a BERT attention matrix and
    add nothing. Uniform attention over ``s`` keys gives ``log s``; one-hot attention gives 0.

    Args:
        attn: ``(batch, heads, seq, seq)`` attention probabilities (rows sum to 1), e.g. the
            ``attentions`` of a Hugging Face model run with eager attention.
        mask: ``(batch, seq)`` 0/1 or bool, the valid *query* positions; ``None``: all.

    Returns:
        ``(batch, heads)`` tensor, differentiable w.r.t. ``attn``.

    Raises:
        TypeError, ValueError: wrong shape or dtype, negative entries, valid rows that do not
            sum to 1 (within 1e-3; 1e-2 for half precision), or a bad ``mask``.
    """
    _check_float(attn, "attn", 4, "(batch, heads, seq, seq)")
    batch, heads, seq, keys = attn.shape
    if seq != keys:
        raise ValueError(f"attn must be square in its last two dims (seq, seq); got {tuple(attn.shape)}")
    valid = torch.ones(batch, seq, dtype=torch.bool, device=attn.device)
    if mask is not None:
        valid = _check_mask(mask, batch, seq, attn.device)
    rows = valid[:, None, :].expand(batch, heads, seq)
    with torch.no_grad():
        if bool((attn < 0).any()):
            raise ValueError(
                "attn must hold probabilities (>= 0); got negative entries -- pass softmax outputs"
            )
        tol = 1e-2 if attn.dtype in (torch.float16, torch.bfloat16) else 1e-3
        err = (attn.sum(dim=-1) - 1).abs()[rows]
        if err.numel() and float(err.max()) > tol:
            raise ValueError(
                f"attn rows must sum to 1 (attention probabilities after softmax); a valid row sums to "
                f"1 +- {float(err.max()):.3g}. Pass probabilities, not scores or logits"
            )
    safe = torch.where(attn > 0, attn, torch.ones_like(attn))
    row_entropy = -(safe * safe.log()).sum(dim=-1)  # (batch, heads, seq)
    weights = rows.to(attn.dtype)
    return (row_entropy * weights).sum(dim=-1) / weights.sum(dim=-1)


def attention_entropy_from_logits(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """:func:`attention_entropy` of ``softmax(logits)`` over the valid keys, without forming ``log p``.

    Same convention (row entropy, natural log, mean over valid queries); padded keys
    (``mask`` 0) get probability 0. Computed as ``-Σ p log p`` with ``log p = log_softmax``,
    which is stable for large logits and cheaper than softmax followed by a log.

    Args:
        logits: ``(batch, heads, seq, seq)`` attention scores before the softmax, e.g.
            ``Q_h K_hᵀ / √d_head``.
        mask: ``(batch, seq)`` 0/1 or bool, valid positions (keys and queries); ``None``: all.

    Returns:
        ``(batch, heads)`` tensor, differentiable w.r.t. ``logits``.
    """
    _check_float(logits, "logits", 4, "(batch, heads, seq, seq)")
    batch, heads, seq, keys = logits.shape
    if seq != keys:
        raise ValueError(f"logits must be square in its last two dims (seq, seq); got {tuple(logits.shape)}")
    valid = torch.ones(batch, seq, dtype=torch.bool, device=logits.device)
    if mask is not None:
        valid = _check_mask(mask, batch, seq, logits.device)
    # a finite fill (not -inf) keeps p * log p = 0 * (large negative) = 0 at padded keys
    if not bool(valid.all()):
        logits = logits.masked_fill(~valid[:, None, None, :], torch.finfo(logits.dtype).min)
    log_p = torch.log_softmax(logits, dim=-1)
    p = torch.softmax(logits, dim=-1)  # faster than log_p.exp() where log_p is hugely negative
    row_entropy = -torch.einsum("bhqk,bhqk->bhq", p, log_p)  # a batched matmul: fast
    weights = valid[:, None, :].to(logits.dtype)
    return (row_entropy * weights).sum(dim=-1) / weights.sum(dim=-1)


def matrix_histogram_entropy(mat: Tensor, bins: int = 20) -> Tensor:
    """The authors' "Shannon entropy" of a matrix: entropy of a histogram of its entries.

    Reproduces ``compute_Shannon_entropy`` of the paper's code: ``bins`` equal-width,
    right-closed bins over ``[min, max]`` (the lowest edge moved down by 0.1 % of the range,
    as ``pandas.cut`` does), ``p_j`` = share of entries in bin ``j``, ``-Σ p_j log p_j``
    (natural log). Piecewise constant in the entries, so **not** differentiable; for
    comparison with the paper only.

    Args:
        mat: any floating tensor (all entries are pooled), e.g. one head's ``Q_i K_iᵀ``.
        bins: number of bins. Default 20 (the authors').

    Returns:
        0-d tensor; 0 when all entries are equal.
    """
    if not isinstance(mat, Tensor) or not mat.is_floating_point() or mat.numel() == 0:
        raise TypeError("mat must be a non-empty floating torch.Tensor")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int; got {bins!r}")
    values = mat.detach().reshape(-1).double()
    lo, hi = values.min(), values.max()
    if bool(lo == hi):
        return torch.zeros((), dtype=mat.dtype, device=mat.device)
    inner = torch.linspace(float(lo), float(hi), bins + 1, dtype=torch.float64, device=values.device)[1:-1]
    counts = torch.bincount(torch.bucketize(values, inner, right=False), minlength=bins).double()
    p = counts[counts > 0] / values.numel()
    return (-(p * p.log()).sum()).to(mat.dtype)


# ---------------------------------------------------------------------------------- weights


def qk_spectral_entropy(w_q: Tensor, w_k: Tensor, num_heads: int, *, normalization: str = "sum") -> Tensor:
    """Entropy of the singular values of each head's ``M_h = (W_q^h)ᵀ W_k^h``.

    ``p_i = σ_i / Σ_j σ_j`` (``normalization="sum"``, a distribution: the entropy lies in
    ``[0, log d_head]``, ``log r`` for ``r`` equal non-zero singular values) or
    ``p_i = σ_i / ‖σ‖₂`` (``"l2"``, the normalisation the authors' code applies to
    eigenvalue magnitudes in its "Von Neumann entropy"); then ``-Σ p_i log p_i`` (natural log,
    ``0 log 0 = 0``).

    Args:
        w_q, w_k: query and key ``nn.Linear`` weights, ``(num_heads * d_head, hidden)``.
        num_heads: number of heads.
        normalization: ``"sum"`` (default) or ``"l2"``.

    Returns:
        ``(num_heads,)`` tensor, differentiable w.r.t. the weights (away from repeated singular
        values). NaN for a head whose ``M_h`` is zero.
    """
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {_NORMALIZATIONS}; got {normalization!r}")
    a, b = _head_blocks(w_q, w_k, num_heads)
    # M = Aᵀ B = Q_a R_a R_bᵀ Q_bᵀ with orthonormal Q_a, Q_b: σ(M) = σ(R_a R_bᵀ).
    r_a = torch.linalg.qr(a.transpose(1, 2), mode="reduced").R
    r_b = torch.linalg.qr(b.transpose(1, 2), mode="reduced").R
    sigma = torch.linalg.svdvals(r_a @ r_b.transpose(1, 2))  # (heads, d_head)
    scale = sigma.sum(dim=-1, keepdim=True) if normalization == "sum" else sigma.norm(dim=-1, keepdim=True)
    p = sigma / scale
    safe = torch.where(p > 0, p, torch.ones_like(p))
    return -(safe * safe.log()).sum(dim=-1)


def directionality(w_q: Tensor, w_k: Tensor, num_heads: int) -> Tensor:
    """Symmetric share ``‖S‖_F² / ‖M‖_F²`` of each head's ``M_h = (W_q^h)ᵀ W_k^h``.

    With ``S = (M + Mᵀ)/2``: ``‖S‖_F² / ‖M‖_F² = (1 + tr(M²) / ‖M‖_F²) / 2``, computed from
    the ``d_head × d_head`` matrices ``W_k^h (W_q^h)ᵀ`` (``tr(M²)``) and ``W_q^h (W_q^h)ᵀ``,
    ``W_k^h (W_k^h)ᵀ`` (``‖M‖_F²``). 1 when ``M`` is symmetric (e.g. ``W_q = W_k``), 0 when
    antisymmetric, about 1/2 for independent random weights.

    Args:
        w_q, w_k: query and key ``nn.Linear`` weights, ``(num_heads * d_head, hidden)``.
        num_heads: number of heads.

    Returns:
        ``(num_heads,)`` tensor in ``[0, 1]``, differentiable w.r.t. the weights. NaN for a head
        whose ``M_h`` is zero (the share is undefined).
    """
    a, b = _head_blocks(w_q, w_k, num_heads)
    c = b @ a.transpose(1, 2)  # (heads, d_head, d_head)
    trace_m2 = (c * c.transpose(1, 2)).sum(dim=(1, 2))
    norm_m2 = ((a @ a.transpose(1, 2)) * (b @ b.transpose(1, 2))).sum(dim=(1, 2))
    share = (1 + trace_m2 / norm_m2) / 2
    return torch.where(norm_m2 > 0, share, torch.full_like(share, math.nan))


def projection_singular_values(w: Tensor, num_heads: int) -> Tensor:
    """Singular values of each head's block of a projection weight (W_q, W_k or W_v).

    Args:
        w: ``nn.Linear`` weight ``(num_heads * d_head, hidden)``; head ``h`` is the row block
            ``w[h*d_head:(h+1)*d_head]`` (the authors' code slices columns of the ``(out, in)``
            matrix instead, which mixes the input dimensions; we slice the head's outputs).
        num_heads: number of heads.

    Returns:
        ``(num_heads, min(d_head, hidden))`` singular values, descending, differentiable.
    """
    _check_float(w, "w", 2, "(num_heads * d_head, hidden)")
    h = _check_num_heads(w, num_heads, "w")
    return torch.linalg.svdvals(w.reshape(h, -1, w.shape[1]))


# ---------------------------------------------------------------------------------- what a lens logs

#: Per-layer scalars a monitor logs: ``(score, detail)`` of ``{score}/layer_{i}[/{detail}]``.
_LAYER_METRICS: tuple[tuple[str, str], ...] = (
    ("cone", ""),
    ("cone", "input"),
    ("cone", "heads"),
    ("cone", "attention_output"),
    ("attention_entropy", ""),
    ("directionality", ""),
    ("qk_spectral_entropy", ""),
)

#: The headline score: the cone index of the deepest layer's output, without a layer in its name.
HEADLINE = "cone"


def _layer_name(score: str, layer: int, detail: str = "") -> str:
    """``{score}/layer_{i}[/{detail}]`` through the one name grammar (:mod:`~lightning_topo.scores.names`)."""
    return metric_name("_", score, layer=layer, detail=detail or ()).split("/", 1)[1]


def metric_names(layers: Sequence[int], attention: bool = True) -> list[str]:
    """Names :func:`geometry_metrics` returns for ``layers``, without computing anything (no prefix).

    ``cone`` (the headline: ``cone/layer_{max(layers)}`` under a name without a layer, for
    ``EarlyStopping``), then per layer ``cone/layer_{i}`` (layer output), ``cone/layer_{i}/input``,
    ``cone/layer_{i}/heads``, ``cone/layer_{i}/attention_output``, ``attention_entropy/layer_{i}``
    (only with ``attention``), ``directionality/layer_{i}``, ``qk_spectral_entropy/layer_{i}``.
    """
    return [HEADLINE] + [
        _layer_name(score, i, detail)
        for i in layers
        for score, detail in _LAYER_METRICS
        if attention or score != "attention_entropy"
    ]


@dataclass(frozen=True)
class GeometryMetrics:
    """Everything a geometry monitor logs for one measurement.

    Attributes:
        values: ``{name: 0-d tensor}`` with the names of :func:`metric_names`; per-head
            quantities are averaged over heads (NaN heads ignored).
        heads: ``{"cone_heads" | "attention_entropy" | "directionality" | "qk_spectral_entropy":
            [per-head tensor (heads,) of each layer]}``, in the order of ``layers``.
        layers: the encoder layers (hidden-state indices ``1..L``), in order.
    """

    values: dict[str, Tensor]
    heads: dict[str, list[Tensor]]
    layers: list[int]


def geometry_metrics(
    activations: Mapping[int, Mapping[str, Tensor]], weights: Mapping[int, Mapping[str, Tensor]]
) -> GeometryMetrics:
    """Assemble the logged values from per-layer means over sequences and per-head weight scores.

    Args:
        activations: ``{layer: {"cone/input", "cone/attention_output", "cone/output": 0-d,
            "cone/heads": (heads,), optional "attention_entropy": (heads,)}}`` -- means over
            sequences of :func:`cone_index`, :func:`cone_index_per_head` and the attention
            entropy (as :class:`lightning_topo.metrics.GeometryScore` accumulates them).
        weights: ``{layer: {"directionality": (heads,), "qk_spectral_entropy": (heads,)}}``.

    Returns:
        :class:`GeometryMetrics`; ``values`` has exactly ``metric_names(layers, attention)``
        where ``attention`` is whether every layer has an ``attention_entropy``.

    Raises:
        ValueError: the two mappings cover different layers, or a key is missing.
    """
    layers = sorted(activations)
    if sorted(weights) != layers or not layers:
        raise ValueError(
            f"activations and weights must cover the same layers; got {layers} and {sorted(weights)}"
        )
    attention = all("attention_entropy" in activations[i] for i in layers)
    values: dict[str, Tensor] = {}
    heads: dict[str, list[Tensor]] = {k: [] for k in ("cone_heads", "directionality", "qk_spectral_entropy")}
    if attention:
        heads["attention_entropy"] = []
    values[HEADLINE] = activations[layers[-1]]["cone/output"]
    for i in layers:
        act, w = activations[i], weights[i]
        per_head = {
            "cone_heads": act["cone/heads"],
            **{k: w[k] for k in ("directionality", "qk_spectral_entropy")},
        }
        if attention:
            per_head["attention_entropy"] = act["attention_entropy"]
        values[_layer_name("cone", i)] = act["cone/output"]
        values[_layer_name("cone", i, "input")] = act["cone/input"]
        values[_layer_name("cone", i, "heads")] = act["cone/heads"].mean()
        values[_layer_name("cone", i, "attention_output")] = act["cone/attention_output"]
        if attention:
            values[_layer_name("attention_entropy", i)] = act["attention_entropy"].mean()
        values[_layer_name("directionality", i)] = w["directionality"].nanmean()
        values[_layer_name("qk_spectral_entropy", i)] = w["qk_spectral_entropy"].nanmean()
        for key in heads:
            heads[key].append(per_head[key])
    return GeometryMetrics(values=values, heads=heads, layers=layers)
