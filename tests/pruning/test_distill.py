from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_topo.pruning.distill import distillation_loss


def _reference(s, t, y, temperature, alpha):
    """The textbook formula written out with probabilities (no log-space tricks)."""
    p_t = torch.softmax(t / temperature, -1)
    p_s = torch.softmax(s / temperature, -1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    return (1 - alpha) * F.cross_entropy(s, y) + alpha * temperature**2 * kl


@pytest.mark.parametrize(("temperature", "alpha"), [(1.0, 0.0), (2.0, 0.5), (4.0, 0.9), (3.0, 1.0)])
def test_matches_textbook_formula(temperature, alpha):
    g = torch.Generator().manual_seed(0)
    s, t = (
        torch.randn(7, 3, generator=g, dtype=torch.float64),
        torch.randn(7, 3, generator=g, dtype=torch.float64),
    )
    y = torch.randint(0, 3, (7,), generator=g)
    ours = distillation_loss(s, t, y, temperature=temperature, alpha=alpha)
    assert float(ours) == pytest.approx(float(_reference(s, t, y, temperature, alpha)), rel=1e-10)


def test_soft_term_is_zero_at_the_teacher_and_gradients_reach_only_the_student():
    t = torch.randn(5, 2, dtype=torch.float64)
    s = t.clone().requires_grad_(True)
    teacher = t.clone().requires_grad_(True)
    loss = distillation_loss(s, teacher, None, alpha=1.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-12)
    loss = distillation_loss(s * 0.5, teacher, None, alpha=1.0)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and teacher.grad is None


def test_gradcheck():
    s = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1])
    assert torch.autograd.gradcheck(lambda a: distillation_loss(a, t, y, temperature=2.0, alpha=0.3), (s,))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": float("nan")}, "temperature must be a finite number"),
        ({"alpha": 1.5}, r"alpha .* must be in \[0, 1\]"),
        ({"alpha": True}, "alpha must be a finite number"),
        ({"temperature": "2"}, "temperature must be a finite number"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    error = TypeError if any(isinstance(v, (bool, str)) for v in kwargs.values()) else ValueError
    with pytest.raises(error, match=match):
        distillation_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), **kwargs)


def test_shape_mismatch_and_missing_labels_are_refused():
    with pytest.raises(ValueError, match=r"\(batch, classes\)"):
        distillation_loss(torch.zeros(2, 2), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels are needed"):
        distillation_loss(torch.zeros(2, 2), torch.zeros(2, 2), None, alpha=0.5)
