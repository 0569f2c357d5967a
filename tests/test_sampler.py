"""Tests for adamix_ds.training.sampler.ShardedBatchOrder (pure torch, no torch.distributed).

References: the 1-rank order with micro x world (what 2 ranks x b must reproduce), set algebra
over the yielded indices, and batch counts worked out by hand.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from adamix_ds.training.sampler import ShardedBatchOrder


def _ranks(n, micro, world, seed=0):
    return [ShardedBatchOrder(n, micro, world, rank, seed) for rank in range(world)]


def test_batches_per_epoch_by_hand():
    """23 examples, b=3, 2 ranks: global batch 6, 3 global batches, 5 examples dropped."""
    order = ShardedBatchOrder(23, 3, 2, 0, seed=1)
    assert order.batches_per_epoch == 3
    batches = list(order.batches(0))
    assert len(batches) == 3 and all(len(b) == 3 for b in batches)
    assert ShardedBatchOrder(24, 3, 2, 1).batches_per_epoch == 4
    assert ShardedBatchOrder(6, 6, 1).batches_per_epoch == 1


@pytest.mark.parametrize("n,micro,world", [(23, 3, 2), (40, 2, 4), (17, 4, 3)])
def test_ranks_disjoint_and_equal_to_one_rank_with_bigger_batch(n, micro, world):
    """world ranks x b see exactly the examples of 1 rank x (world*b), global batch by global
    batch: rank r's g-th batch is slice r of the 1-rank g-th batch (so the union per global batch
    is equal as a set and in order), and the ranks' batches are pairwise disjoint."""
    seed = 5
    single = ShardedBatchOrder(n, micro * world, 1, 0, seed)
    for epoch in (0, 1):
        per_rank = [list(o.batches(epoch)) for o in _ranks(n, micro, world, seed)]
        reference = list(single.batches(epoch))
        assert all(len(b) == len(reference) for b in per_rank)
        for g, big in enumerate(reference):
            parts = [per_rank[r][g] for r in range(world)]
            assert all(len(p) == micro for p in parts)
            assert list(itertools.chain(*parts)) == big                 # exact order
            assert set().union(*map(set, parts)) == set(big)            # as sets
        seen = [set(itertools.chain(*batches)) for batches in per_rank]
        for a, b in itertools.combinations(range(world), 2):
            assert not seen[a] & seen[b]


@pytest.mark.parametrize("n,micro,world", [(23, 3, 2), (30, 5, 3)])
def test_epoch_is_permutation_of_a_subset_and_epochs_differ(n, micro, world):
    """One epoch over all ranks uses each example at most once, every index is in range, exactly
    n - n % (micro*world) examples are used (the last incomplete global batch is dropped), and
    the order changes from epoch to epoch."""
    used_per_epoch = []
    for epoch in range(3):
        flat = [i for o in _ranks(n, micro, world, seed=3) for b in o.batches(epoch) for i in b]
        assert len(flat) == len(set(flat)) == n - n % (micro * world)
        assert all(0 <= i < n for i in flat)
        used_per_epoch.append([i for g in zip(*(o.batches(epoch) for o in
                                                  _ranks(n, micro, world, seed=3)), strict=True)
                               for b in g for i in b])
    assert used_per_epoch[0] != used_per_epoch[1] != used_per_epoch[2]
    assert used_per_epoch[0] != used_per_epoch[2]


def test_dropped_examples_vary_across_epochs():
    """With a permutation per epoch, the dropped tail is not always the same examples."""
    order = ShardedBatchOrder(10, 3, 1, 0, seed=0)
    dropped = [frozenset(range(10)) - {i for b in order.batches(e) for i in b} for e in range(8)]
    assert all(len(d) == 1 for d in dropped)
    assert len(set(dropped)) > 1


@pytest.mark.parametrize("rank", [0, 1])
def test_resume_start_is_the_tail(rank):
    """batches(epoch, start) yields exactly batches(epoch)[start:], for every start (resume)."""
    order = ShardedBatchOrder(29, 2, 2, rank, seed=9)
    for epoch in (0, 4):
        full = list(order.batches(epoch))
        assert len(full) == 7
        for start in range(len(full) + 2):
            assert list(order.batches(epoch, start)) == full[start:]


def test_same_seed_same_order_independent_of_global_rng():
    """Two instances with the same seed give the same batches whatever torch's global RNG does;
    a different seed gives a different order."""
    torch.manual_seed(0)
    a = [list(ShardedBatchOrder(50, 4, 2, 1, seed=42).batches(e)) for e in range(3)]
    torch.manual_seed(12345)
    torch.rand(100)
    b = [list(ShardedBatchOrder(50, 4, 2, 1, seed=42).batches(e)) for e in range(3)]
    assert a == b
    state = torch.get_rng_state()
    list(ShardedBatchOrder(50, 4, 2, 1, seed=42).batches(0))
    assert torch.equal(state, torch.get_rng_state())    # and it does not consume the global RNG
    c = [list(ShardedBatchOrder(50, 4, 2, 1, seed=43).batches(e)) for e in range(3)]
    assert c != a


@pytest.mark.parametrize("n,micro,world", [(5, 3, 2), (0, 1, 1), (7, 8, 1)])
def test_too_little_data_raises_with_numbers(n, micro, world):
    """Fewer examples than one global batch is a ValueError naming examples, b and ranks."""
    with pytest.raises(ValueError) as err:
        ShardedBatchOrder(n, micro, world)
    message = str(err.value)
    assert f"{n} examples" in message and f"{micro} x {world} ranks" in message, message


@pytest.mark.parametrize("kwargs", [dict(rank=2, world_size=2), dict(rank=-1, world_size=2),
                                    dict(micro_batch=0), dict(world_size=0)])
def test_invalid_rank_or_sizes_are_errors(kwargs):
    """A rank outside the world would silently read another rank's data; refuse it."""
    values = dict(num_examples=64, micro_batch=2, world_size=1, rank=0) | kwargs
    with pytest.raises(ValueError, match="rank < world_size"):
        ShardedBatchOrder(**values)
