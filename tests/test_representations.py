"""collect_representations: layers, pooling, sampling, modes, errors, distributed helpers."""

from __future__ import annotations

import os
import socket

import pytest
import torch
from torch.utils.data import DataLoader

from lightning_topo.representations import (
    NonFiniteHiddenStatesError,
    RepresentationCollector,
    check_layers,
    collect_representations,
    gather_variable,
    pool_hidden_states,
    resolve_layers,
    run_on_rank_zero_and_broadcast,
)
from lightning_topo.scores.sampling import canonical_order, sample_per_class, subsample_indices


def _dataset(n=20, seq=7, seed=0, num_classes=2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 128, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[::2, 4:] = 0
    ids[mask == 0] = 0
    labels = torch.arange(n) % num_classes
    return [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(n)]


@pytest.fixture
def loader():
    return DataLoader(_dataset(), batch_size=6)


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


def test_collect_matches_direct_forward(tiny_classifier, loader):
    reps = collect_representations(tiny_classifier, loader, layers=[-1, 0], pooling="mean")
    assert reps.layers == [2, 0] and reps.num_layers == 2 and reps.pooling == "mean"
    batch = next(iter(DataLoader(_dataset(), batch_size=20)))
    with torch.no_grad():
        out = tiny_classifier(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
    expected = pool_hidden_states(out.hidden_states[-1], batch["attention_mask"], "mean")
    torch.testing.assert_close(reps.points[2], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(reps.labels, batch["labels"])
    assert reps.class_counts() == {0: 10, 1: 10}


def test_mode_and_grad_restored(tiny_classifier, loader):
    tiny_classifier.train()
    reps = collect_representations(tiny_classifier, loader)
    assert tiny_classifier.training
    assert not reps.points[2].requires_grad
    tiny_classifier.eval()
    collect_representations(tiny_classifier, loader)
    assert not tiny_classifier.training


def test_cap_max_batches_and_seed(tiny_classifier, loader):
    reps = collect_representations(tiny_classifier, loader, max_points_per_class=4, seed=1)
    assert reps.class_counts() == {0: 4, 1: 4}
    again = collect_representations(tiny_classifier, loader, max_points_per_class=4, seed=1)
    assert torch.equal(reps.points[2], again.points[2])
    other = collect_representations(tiny_classifier, loader, max_points_per_class=4, seed=2)
    assert not torch.equal(reps.points[2], other.points[2])
    # the subsample does not depend on the dataloader order
    shuffled = DataLoader(list(reversed(_dataset())), batch_size=5)
    rev = collect_representations(tiny_classifier, shuffled, max_points_per_class=4, seed=1)
    order_a = canonical_order(reps.points[2])
    order_b = canonical_order(rev.points[2])
    torch.testing.assert_close(reps.points[2][order_a], rev.points[2][order_b], rtol=1e-5, atol=1e-6)
    few = collect_representations(tiny_classifier, loader, max_batches=2)
    assert few.labels.numel() == 12


def test_one_subsample_shared_by_all_layers(tiny_classifier, loader):
    full = collect_representations(tiny_classifier, loader, layers=[0, -1])
    reps = collect_representations(tiny_classifier, loader, layers=[0, -1], max_points_per_class=3, seed=5)
    keep = subsample_indices(full.labels, full.points[2], 3, 5)  # keyed on the deepest layer
    for layer in (0, 2):
        torch.testing.assert_close(reps.points[layer], full.points[layer][keep])
    assert torch.equal(reps.labels, full.labels[keep])


def test_collector_stops_at_max_batches(tiny_classifier):
    class Counting:
        def __init__(self):
            self.served = 0

        def __iter__(self):
            for batch in DataLoader(_dataset(), batch_size=5):
                self.served += 1
                yield batch

    loader = Counting()
    reps = collect_representations(tiny_classifier, loader, max_batches=2)
    assert reps.labels.numel() == 10 and loader.served == 2  # no third batch fetched
    collector = RepresentationCollector(max_batches=1)
    assert not collector.full


def test_errors(tiny_classifier, loader):
    with pytest.raises(ValueError, match="out of range"):
        collect_representations(tiny_classifier, loader, layers=7)
    with pytest.raises(ValueError, match="pooling"):
        collect_representations(tiny_classifier, loader, pooling="max")
    with pytest.raises(ValueError, match="no batches"):
        collect_representations(tiny_classifier, [])
    no_labels = [{k: v for k, v in b.items() if k != "labels"} for b in DataLoader(_dataset(), batch_size=5)]
    with pytest.raises(ValueError, match="labels"):
        collect_representations(tiny_classifier, no_labels)
    with pytest.raises(ValueError, match="max_points_per_class"):
        collect_representations(tiny_classifier, loader, max_points_per_class=1)
    with pytest.raises(TypeError, match="max_points_per_class must be an int >= 2 or None; got 2.5"):
        collect_representations(tiny_classifier, loader, max_points_per_class=2.5)
    with pytest.raises(TypeError, match="seed must be an int >= 0; got None"):
        collect_representations(tiny_classifier, loader, seed=None)
    with pytest.raises(TypeError, match=r"layers\[0\] must be an int; got 1.7"):
        collect_representations(tiny_classifier, loader, layers=[1.7])
    with pytest.raises(ValueError, match="max_batches"):
        collect_representations(tiny_classifier, loader, max_batches=0)


def test_nan_hidden_states(tiny_classifier, loader):
    with torch.no_grad():
        tiny_classifier.bert.embeddings.word_embeddings.weight[7] = float("nan")
    batches = list(DataLoader(_dataset(), batch_size=5))
    batches[0]["input_ids"][0, 1] = 7
    with pytest.raises(NonFiniteHiddenStatesError, match="layer 2 have NaN/inf") as info:
        collect_representations(tiny_classifier, batches)
    assert info.value.layer == 2
    # the caller may check later (the monitor does, to log NaN for every metric name)
    reps = collect_representations(tiny_classifier, batches, check_finite=False)
    assert reps.class_counts() == {0: 10, 1: 10}
    with pytest.raises(NonFiniteHiddenStatesError):
        reps.check_finite()


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


def _gather_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist = torch.distributed
    dist.init_process_group("gloo", rank=rank, world_size=world)

    def all_gather(t):  # what Lightning's strategy.all_gather returns: (world, *t.shape)
        buffers = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(buffers, t)
        return torch.stack(buffers)

    def broadcast(obj):
        payload = [obj]
        dist.broadcast_object_list(payload, src=0)
        return payload[0]

    try:
        local = torch.full((rank + 1, 2), float(rank))  # 1 row on rank 0, 2 rows on rank 1
        gathered = gather_variable(local, all_gather)
        calls = []

        def compute():
            calls.append(rank)
            return {"sum": float(gathered.sum()), "rank": dist.get_rank()}

        result = run_on_rank_zero_and_broadcast(compute, is_global_zero=rank == 0, broadcast=broadcast)
        torch.save({"gathered": gathered, "result": result, "calls": calls}, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_gather_variable_and_broadcast_two_processes(tmp_path):
    torch.multiprocessing.spawn(_gather_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    expected = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    assert torch.equal(r0["gathered"], expected) and torch.equal(r1["gathered"], expected)
    assert r0["result"] == r1["result"] == {"sum": 4.0, "rank": 0}
    assert r0["calls"] == [0] and r1["calls"] == []
