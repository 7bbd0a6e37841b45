"""Knowledge distillation for the recovery fine-tune after pruning (``docs/pruning.md``).

The unpruned model, frozen and in eval mode, is the teacher; the pruned model learns from the
labels and from the teacher's softened class distribution (Hinton et al., 2015)::

    loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The ``T^2`` factor keeps the soft term's gradient on the scale of the hard term's as ``T`` changes.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightning_topo.scores.checks import check_real

__all__ = ["DISTILL_DEFAULTS", "check_distill_settings", "distillation_loss"]

#: Default ``temperature`` and ``alpha`` (Hinton et al.'s soft/hard mix; DistilBERT also uses T=2).
DISTILL_DEFAULTS = {"temperature": 2.0, "alpha": 0.5}


def check_distill_settings(temperature: object, alpha: object) -> None:
    """``TypeError`` unless ``temperature`` and ``alpha`` are real numbers; ``ValueError`` unless
    ``temperature`` is finite and > 0 and ``alpha`` in ``[0, 1]``."""
    for name, value in (("temperature", temperature), ("alpha", alpha)):
        check_real(value, name)
    if temperature <= 0:
        raise ValueError(
            f"temperature must be > 0 (soft targets need T > 0; 1 = plain softmax); got {temperature}"
        )
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha (weight of the teacher's soft targets) must be in [0, 1]; got {alpha}")


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    *,
    temperature: float = DISTILL_DEFAULTS["temperature"],
    alpha: float = DISTILL_DEFAULTS["alpha"],
) -> Tensor:
    """Hard-label cross-entropy mixed with the temperature-scaled KL to the teacher.

    Args:
        student_logits: ``(B, C)`` logits of the pruned model (gradients flow through these).
        teacher_logits: ``(B, C)`` logits of the teacher (detached here).
        labels: ``(B,)`` class indices, or ``None`` for ``alpha=1`` (soft targets only).
        temperature: ``T > 0``; default 2.
        alpha: weight of the soft term in ``[0, 1]``; default 0.5 (0 = plain fine-tuning).

    Returns:
        A scalar tensor, batch mean.
    """
    check_distill_settings(temperature, alpha)
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(
            "student_logits and teacher_logits must both be (batch, classes); got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    t = float(temperature)
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits.detach().to(student_logits.dtype) / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    if alpha == 1:
        return soft
    if labels is None:
        raise ValueError("labels are needed unless alpha == 1 (soft targets only)")
    hard = F.cross_entropy(student_logits, labels)
    return (1 - alpha) * hard + alpha * soft
