"""LengthGroupedSampler: grouping, a permutation per epoch, distributed sharding, Lightning keeps it."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from torch.utils.data import DistributedSampler

from lightning_topo.data import LengthGroupedSampler


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 100) for _ in range(n)]


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


def test_one_rank_is_a_permutation_with_similar_lengths_per_batch():
    lengths = _lengths(1000)
    sampler = LengthGroupedSampler(lengths, batch_size=10, group_batches=5, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(1000)) and len(sampler) == 1000
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in _batches(order, 10)]
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    random_spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in _batches(perm, 10)]
    # chunks of 50 sorted by length: a batch spans ~1/5 of the range instead of most of it
    assert sum(spread) < 0.35 * sum(random_spread), (sum(spread), sum(random_spread))
    for b in _batches(order, 10):
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


def test_short_batch_comes_last_and_every_other_batch_is_full():
    sampler = LengthGroupedSampler(_lengths(95), batch_size=10, group_batches=3, seed=0)
    sizes = [len(b) for b in _batches(list(sampler), 10)]
    assert sizes == [10] * 9 + [5]


def test_seed_and_set_epoch_fix_the_order():
    lengths = _lengths(200)
    a = LengthGroupedSampler(lengths, batch_size=8, seed=1)
    b = LengthGroupedSampler(lengths, batch_size=8, seed=1)
    assert list(a) == list(b) and list(a) == list(a)  # same seed and epoch: same order, every time
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == sorted(first)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(LengthGroupedSampler(lengths, batch_size=8, seed=2)) != first


@pytest.mark.parametrize("n", [120, 103])
def test_ranks_cover_every_index_and_agree_on_the_global_batches(n):
    lengths, world, bs = _lengths(n), 4, 5
    shards = [
        list(LengthGroupedSampler(lengths, bs, group_batches=2, num_replicas=world, rank=r, seed=7))
        for r in range(world)
    ]
    per_rank = -(-n // world)
    assert all(len(s) == per_rank for s in shards)  # equal work on every rank: no DDP hang
    counts = Counter(i for s in shards for i in s)
    assert set(counts) == set(range(n))
    assert sum(counts.values()) - n == world * per_rank - n  # only DistributedSampler's padding repeats
    if n % world == 0:
        assert all(c == 1 for c in counts.values())  # exactly once
    # the i-th local batch of every rank comes from the same global batch of similar lengths
    one_rank = LengthGroupedSampler(lengths, bs * world, group_batches=2, num_replicas=1, seed=7)
    if n % world == 0:
        global_batches = _batches(list(one_rank), bs * world)
        for i, global_batch in enumerate(global_batches):
            local = [i_ for s in shards for i_ in _batches(s, bs)[i]]
            assert sorted(local) == sorted(global_batch)


def test_drop_last_cuts_instead_of_padding():
    shards = [
        list(LengthGroupedSampler(_lengths(103), 5, num_replicas=4, rank=r, drop_last=True)) for r in range(4)
    ]
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat)) == 100


def test_lightning_keeps_it_and_bad_arguments():
    # Lightning only swaps in its own sampler when the loader's sampler is not a DistributedSampler.
    assert isinstance(LengthGroupedSampler([3, 1], batch_size=1), DistributedSampler)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1; got 0"):
        LengthGroupedSampler([3, 1], batch_size=0)
    with pytest.raises(ValueError, match="at least one example"):
        LengthGroupedSampler([], batch_size=2)
    with pytest.raises(ValueError, match="rank"):
        LengthGroupedSampler([3, 1], batch_size=1, num_replicas=2, rank=2)
