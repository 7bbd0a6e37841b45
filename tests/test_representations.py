"""Layer selections, pooling, per-class sampling and the rank-zero helper (representations.hidden)."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from lightning_topo.representations import (
    check_layers,
    pool_hidden_states,
    resolve_layers,
    run_on_rank_zero_and_broadcast,
)
from lightning_topo.scores.sampling import sample_per_class


def test_resolve_layers():
    assert resolve_layers(-1, 12) == [12]
    assert resolve_layers([0, -1, 6, 12], 12) == [0, 12, 6]
    assert resolve_layers("all", 2) == [0, 1, 2]
    assert resolve_layers(-3, 2) == [0]
    with pytest.raises(ValueError, match="layers: index 3 is out of range .* 2 encoder layers"):
        resolve_layers(3, 2)
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers([-4], 2)
    with pytest.raises(ValueError, match="layers"):
        resolve_layers("last", 2)
    with pytest.raises(ValueError, match="at least one"):
        resolve_layers([], 2)
    with pytest.raises(TypeError, match=r"layers\[0\] must be an int; got 1.5"):
        resolve_layers([1.5], 2)


@pytest.mark.parametrize(
    ("layers", "error", "match"),
    [
        ([1.7], TypeError, r"layers\[0\] must be an int; got 1.7"),  # never truncated to layer 1
        (2.0, TypeError, "layers must be an int, a list of ints or 'all'; got 2.0"),
        (True, TypeError, "layers must be"),
        ([0, True], TypeError, r"layers\[1\]"),
        ("last", ValueError, "layers must be"),
        ([], ValueError, "at least one layer"),
        (None, TypeError, "layers must be"),
    ],
)
def test_check_layers_refuses_without_the_model(layers, error, match):
    with pytest.raises(error, match=match):
        check_layers(layers)


def test_check_layers_accepts_numpy_ints():
    np = pytest.importorskip("numpy")
    assert check_layers([np.int64(1), -1]) == [1, -1]
    assert check_layers(np.int32(2)) == 2 and check_layers("all") == "all"


def test_pooling():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(pool_hidden_states(hidden, mask, "cls"), hidden[:, 0])
    expected = torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)])
    torch.testing.assert_close(pool_hidden_states(hidden, mask, "mean"), expected)
    with pytest.raises(ValueError, match="pooling"):
        pool_hidden_states(hidden, mask, "max")


def test_sample_per_class_kde():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(50, 3, generator=g)
    labels = (torch.arange(50) < 40).long()
    out, lab = sample_per_class(points, labels, 10, method="kde", bandwidth=1.0, seed=0)
    assert (lab == 0).sum() == 10 and (lab == 1).sum() == 10
    # class 0 (10 points) is kept as is; class 1 is resampled with noise (no row equals an input row)
    assert torch.equal(out[lab == 0].sort(dim=0).values, points[labels == 0].sort(dim=0).values)
    dist = torch.cdist(out[lab == 1], points[labels == 1]).min(dim=1).values
    assert (dist > 1e-3).all()
    same, _ = sample_per_class(points, labels, 10, method="kde", seed=0)
    assert torch.equal(out, same)
    with pytest.raises(ValueError, match="sampling must be one of"):
        sample_per_class(points, labels, 10, method="fps")
    with pytest.raises(ValueError, match="bandwidth must be a finite number > 0.0; got nan"):
        sample_per_class(points, labels, 10, method="kde", bandwidth=float("nan"))
    with pytest.raises(TypeError, match="max_points_per_class"):
        sample_per_class(points, labels, 2.5)


def test_broadcast_helper_reraises_rank_zero_error_everywhere():
    identity = lambda obj: obj  # noqa: E731  (a single process: broadcast is the identity)
    assert run_on_rank_zero_and_broadcast(lambda: 42, is_global_zero=True, broadcast=identity) == 42

    def fail():
        raise ValueError("boom on rank 0")

    with pytest.raises(ValueError, match="boom on rank 0"):
        run_on_rank_zero_and_broadcast(fail, is_global_zero=True, broadcast=identity)
    # a non-zero rank does not run fn; it receives rank 0's payload
    calls = []
    got = run_on_rank_zero_and_broadcast(
        lambda: calls.append(1), is_global_zero=False, broadcast=lambda _: ("ok", "from rank 0")
    )
    assert got == "from rank 0" and calls == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _broadcast_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist = torch.distributed
    dist.init_process_group("gloo", rank=rank, world_size=world)

    def broadcast(obj):
        payload = [obj]
        dist.broadcast_object_list(payload, src=0)
        return payload[0]

    try:
        calls = []

        def compute():
            calls.append(rank)
            return {"rows": rank + 1, "rank": dist.get_rank()}  # rank 0's value, whatever rank runs it

        result = run_on_rank_zero_and_broadcast(compute, is_global_zero=rank == 0, broadcast=broadcast)
        torch.save({"result": result, "calls": calls}, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_broadcast_two_processes(tmp_path):
    torch.multiprocessing.spawn(_broadcast_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["result"] == r1["result"] == {"rows": 1, "rank": 0}
    assert r0["calls"] == [0] and r1["calls"] == []
