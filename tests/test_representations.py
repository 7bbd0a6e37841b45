"""collect_representations: layers, pooling, sampling, modes, errors, DDP gather helpers."""

from __future__ import annotations

import os
import socket

import pytest
import torch
from torch.utils.data import DataLoader

from lightning_topo.representations import (
    NonFiniteHiddenStatesError,
    all_gather_variable,
    canonical_order,
    collect_representations,
    pool_hidden_states,
    resolve_layers,
    run_on_rank_zero_and_broadcast,
    sample_per_class,
)


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
    with pytest.raises(TypeError, match="ints"):
        resolve_layers([1.5], 2)


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


def test_nan_hidden_states(tiny_classifier, loader):
    with torch.no_grad():
        tiny_classifier.bert.embeddings.word_embeddings.weight[7] = float("nan")
    batches = list(DataLoader(_dataset(), batch_size=5))
    batches[0]["input_ids"][0, 1] = 7
    with pytest.raises(NonFiniteHiddenStatesError, match="layer 2 have NaN/inf"):
        collect_representations(tiny_classifier, batches)


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
    with pytest.raises(ValueError, match="sampling method"):
        sample_per_class(points, labels, 10, method="fps")


def test_single_process_helpers_are_identity():
    t = torch.arange(6).reshape(3, 2)
    assert all_gather_variable(t) is t
    assert run_on_rank_zero_and_broadcast(lambda: 42) == 42


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        local = torch.full((rank + 1, 2), float(rank))  # 1 row on rank 0, 2 rows on rank 1
        gathered = all_gather_variable(local)
        calls = []

        def compute():
            calls.append(rank)
            return {"sum": float(gathered.sum()), "rank": torch.distributed.get_rank()}

        result = run_on_rank_zero_and_broadcast(compute)
        torch.save({"gathered": gathered, "result": result, "calls": calls}, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_all_gather_variable_and_broadcast(tmp_path):
    torch.multiprocessing.spawn(_gather_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    expected = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    assert torch.equal(r0["gathered"], expected) and torch.equal(r1["gathered"], expected)
    assert r0["result"] == r1["result"] == {"sum": 4.0, "rank": 0}
    assert r0["calls"] == [0] and r1["calls"] == []
