"""RankMe: the effective rank of a set of embeddings (Garrido et al. 2023).

Garrido, Balestriero, Najman, LeCun, "RankMe: Assessing the downstream performance of
pretrained self-supervised representations by their rank", ICML 2023. For an embedding matrix
``Z`` of shape ``(n, d)`` with singular values ``sigma_1 >= ... >= sigma_min(n,d)``:

``p_k = sigma_k / ||sigma||_1 + eps``,   ``RankMe(Z) = exp(-sum_k p_k log p_k)``

(the entropy-based effective rank of Roy & Vetterli 2007), in ``[1, min(n, d)]``: 1 when every
embedding lies on one line, ``min(n, d)`` when all singular values are equal. It needs no
labels: the paper uses it as a label-free predictor of downstream accuracy. Here it is one of
the label-free scores compared with PSF (``benchmarks/psf_across_models.py``). The embeddings
are used as given (the paper does not centre them); ``eps`` (default 1e-7, the paper's) only
keeps ``log`` finite.

Example::

    z = encoded.hidden_states[-1][:, 0]      # (n, d) [CLS] vectors
    rank = rankme(z)                         # 0-d tensor, differentiable
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_topo.scores.checks import check_real

__all__ = ["rankme"]


def rankme(embeddings: Tensor, eps: float = 1e-7) -> Tensor:
    """Effective rank (Garrido et al. 2023) of ``embeddings`` ``(n, d)``; see the module docstring.

    Args:
        embeddings: ``(n, d)`` float tensor with ``n >= 1``, ``d >= 1``, finite, not all zero.
        eps: finite float > 0 added to every normalised singular value (default 1e-7).

    Returns:
        0-d tensor in ``embeddings``' dtype, between about 1 and ``min(n, d)``; differentiable
        where the singular values are distinct.

    Raises:
        TypeError: not a float tensor. ValueError: not 2-D, empty, NaN/inf, or all zeros.
    """
    if not isinstance(embeddings, Tensor) or not embeddings.is_floating_point():
        kind = type(embeddings).__name__ if not isinstance(embeddings, Tensor) else str(embeddings.dtype)
        raise TypeError(f"embeddings must be a float torch.Tensor of shape (n, d); got {kind}")
    if embeddings.dim() != 2 or embeddings.shape[0] < 1 or embeddings.shape[1] < 1:
        raise ValueError(f"embeddings must be 2-D (n, d) with n, d >= 1; got shape {tuple(embeddings.shape)}")
    if not bool(torch.isfinite(embeddings).all()):
        raise ValueError("embeddings must be finite; got NaN or inf values")
    eps = check_real(eps, "eps", minimum=0.0, strict=True)  # type: ignore[assignment]
    sigma = torch.linalg.svdvals(embeddings)
    total = sigma.sum()
    if not bool(total > 0):
        raise ValueError("embeddings are all zero: RankMe is undefined")
    p = sigma / total + eps
    return torch.exp(-(p * torch.log(p)).sum())
