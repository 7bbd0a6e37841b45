"""CPU vs CUDA equality (skipped without CUDA) and the optional torchph adapter's error path."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lightning_topo.topology import minimum_spanning_tree, pairwise_distances, persistence_diagrams

CUDA = torch.cuda.is_available()


@pytest.mark.skipif(not CUDA, reason="CUDA not available: CPU vs CUDA comparison needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_equals_cuda(dtype: torch.dtype) -> None:
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    cpu = persistence_diagrams(x)
    gpu = persistence_diagrams(x.cuda())
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for a, b in zip(cpu, gpu, strict=True):
        assert b.device.type == "cuda" and b.dtype == dtype
        b = b.cpu()
        # the two GEMMs round differently: ignore bars shorter than the tolerance
        a = a[(a[:, 1] - a[:, 0]) > tol]
        b = b[(b[:, 1] - b[:, 0]) > tol]
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, atol=tol, rtol=0)
    edges, lengths = minimum_spanning_tree(pairwise_distances(x.double().cuda()))
    assert edges.device.type == "cuda" and lengths.device.type == "cuda"
    edges_cpu, _ = minimum_spanning_tree(pairwise_distances(x.double()))
    assert torch.equal(edges.cpu(), edges_cpu)


@pytest.mark.skipif(not CUDA, reason="CUDA not available")
def test_cuda_backward() -> None:
    x = torch.randn(64, 8, device="cuda", requires_grad=True)
    sum(d[:, 1].sum() - d[:, 0].sum() for d in persistence_diagrams(x)).backward()
    assert torch.isfinite(x.grad).all()


def _torchph_works() -> bool:
    if importlib.util.find_spec("torchph") is None:
        return False
    try:
        from torchph.pershom import vr_persistence  # noqa: F401
    except Exception:
        return False
    return CUDA


@pytest.mark.skipif(_torchph_works(), reason="torchph works here; the error path cannot be exercised")
@pytest.mark.parametrize("device", ["cpu", "cuda"] if CUDA else ["cpu"])
def test_torchph_backend_clear_error(device: str) -> None:
    # torchph 0.1.1 from PyPI has no compiled extension and its VR code is CUDA-only: the
    # adapter must say which of the two failed and point to the default engine
    x = torch.randn(10, 3, device=device)
    with pytest.raises((ImportError, RuntimeError)) as info:
        persistence_diagrams(x, backend="torchph")
    message = str(info.value)
    assert "backend='torchph'" in message and "backend='torch'" in message
    if importlib.util.find_spec("torchph") is None:
        assert isinstance(info.value, ImportError) and "unavailable" in message


def test_auto_backend_is_gone() -> None:
    # "auto" was a second name for "torch"; it is refused with the list of backends
    with pytest.raises(ValueError, match=r"backend must be one of \('torch', 'torchph'\)"):
        persistence_diagrams(torch.randn(5, 2), backend="auto")
