"""A resumable, rank-sharded batch order.

Each epoch draws one permutation of the data from (seed, epoch). Global batch g holds
``perm[g*B : (g+1)*B]`` with B = micro_batch x world; rank r takes its r-th slice of b examples.
So 2 ranks x b see exactly the examples of 1 rank x 2b, and the position in the data is two
integers (epoch, batches done) that a checkpoint can store and a resume can skip to.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class ShardedBatchOrder:
    """Micro-batches of example indices for one rank.

    The last incomplete global batch of an epoch is dropped (so every rank steps the same number
    of times: a rank with no batch would hang the collective).
    """

    num_examples: int
    micro_batch: int
    world_size: int = 1
    rank: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.micro_batch < 1 or self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need micro_batch >= 1 and 0 <= rank < world_size, got "
                             f"micro_batch={self.micro_batch}, rank={self.rank}, "
                             f"world_size={self.world_size}")
        if self.batches_per_epoch < 1:
            raise ValueError(f"{self.num_examples} examples do not fill one global batch of "
                             f"{self.micro_batch} x {self.world_size} ranks")

    @property
    def batches_per_epoch(self) -> int:
        return self.num_examples // (self.micro_batch * self.world_size)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_examples, generator=g)

    def batches(self, epoch: int, start: int = 0) -> Iterator[list[int]]:
        """This rank's micro-batches of ``epoch``, skipping the first ``start`` of them."""
        order = self.epoch_order(epoch)
        global_batch = self.micro_batch * self.world_size
        for g in range(start, self.batches_per_epoch):
            lo = g * global_batch + self.rank * self.micro_batch
            yield order[lo:lo + self.micro_batch].tolist()
