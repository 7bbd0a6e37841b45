"""Seeded test clouds for the topology tests (shared by several test files)."""

from __future__ import annotations

import torch


def reference_clouds() -> list[tuple[str, torch.Tensor]]:
    """24 float64 clouds of varied n and d, including duplicate and collinear points."""
    g = torch.Generator().manual_seed(1234)
    clouds: list[tuple[str, torch.Tensor]] = []
    sizes = [(8, 2), (12, 3), (20, 2), (25, 4), (30, 1), (35, 5), (40, 2), (45, 8), (50, 3), (16, 16)]
    for n, d in sizes:
        clouds.append((f"gauss-n{n}-d{d}", torch.randn(n, d, generator=g, dtype=torch.float64)))
    for n, d in [(20, 2), (30, 3), (40, 2), (24, 6)]:
        x = torch.rand(n, d, generator=g, dtype=torch.float64) * 3.0
        clouds.append((f"uniform-n{n}-d{d}", x))
    for n, d, k in [(20, 2, 3), (30, 3, 5), (36, 4, 1), (25, 2, 10)]:
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        src = torch.randint(0, n, (k,), generator=g)
        dst = torch.randperm(n, generator=g)[:k]
        x[dst] = x[src]  # duplicate points
        clouds.append((f"dups-n{n}-d{d}-k{k}", x))
    for n, d in [(15, 2), (25, 3), (30, 5)]:
        t = torch.rand(n, 1, generator=g, dtype=torch.float64) * 4.0
        direction = torch.randn(1, d, generator=g, dtype=torch.float64)
        offset = torch.randn(1, d, generator=g, dtype=torch.float64)
        clouds.append((f"collinear-n{n}-d{d}", offset + t * direction))
    angles = torch.rand(30, generator=g, dtype=torch.float64) * 6.283185307179586
    circle = torch.stack([angles.cos(), angles.sin()], dim=1)
    circle = circle + 0.05 * torch.randn(30, 2, generator=g, dtype=torch.float64)
    clouds.append(("noisy-circle-n30", circle))
    clouds.append(("two-points", torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)))
    clouds.append(("all-duplicates", torch.ones(5, 3, dtype=torch.float64)))
    return clouds
