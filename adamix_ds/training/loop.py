"""One optimizer step of the shared training loop, and the statistics it leaves on the device.

An optimizer step is ``gradient_accumulation_steps`` micro-batches. Before the first forward the
step all-reduces the loss-carrying units of every micro-batch at once (one collective per step),
so each micro-batch's loss can be scaled to its share of the *global* mean. The statistics stay
on the device as tensors: the host reads them only when the loop logs (one all-reduce and one
copy per logged step), so a GPU is never stalled by ``.item()`` between micro-batches.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..losses import AdaMixLossOutput
from ..routing import Router, counter_hash
from ..tasks.base import ForwardFn
from .sampler import ShardedBatchOrder

DROPOUT_STREAM = 0xD5_0F


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op without a process group); returns it."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


@dataclass
class StepStats:
    """Sums over micro-batches of this rank: one float64 vector on the training device.

    ``sums`` holds, in :data:`FIELDS` order, the (scaled) ``loss``, ``task_loss`` and
    ``consistency`` of each micro-batch, the number of micro-batches and the attended tokens; so
    the sum over ranks of a loss term divided by the summed micro-batch count is the mean per
    micro-batch of the global loss.
    """

    sums: torch.Tensor  # (5,) float64

    FIELDS = ("loss", "task_loss", "consistency", "micro_batches", "tokens")

    @classmethod
    def zeros(cls, device: torch.device | str) -> StepStats:
        return cls(torch.zeros(len(cls.FIELDS), dtype=torch.float64, device=device))

    def add_micro_batch(self, out: AdaMixLossOutput, tokens: torch.Tensor) -> None:
        """Accumulate one micro-batch's detached loss terms (no host sync)."""
        terms = (out.loss, out.task_loss, out.consistency, torch.ones_like(out.loss), tokens)
        self.sums += torch.stack([t.detach().to(torch.float64) for t in terms])

    def __iadd__(self, other: StepStats) -> StepStats:
        self.sums += other.sums
        return self

    def __getattr__(self, name: str) -> torch.Tensor:
        """``stats.loss`` ... ``stats.tokens``: the 0-dim entries of ``sums``."""
        if name in StepStats.FIELDS:
            return self.sums[StepStats.FIELDS.index(name)]
        raise AttributeError(name)

    def global_means(self) -> dict[str, float]:
        """All-reduce over ranks and read on the host (the one sync): per-micro-batch means of
        the three loss terms, and the summed token count."""
        loss, task_loss, consistency, count, tokens = all_reduce_sum(self.sums.clone()).tolist()
        count = max(count, 1.0)
        return {"loss": loss / count, "task_loss": task_loss / count,
                "consistency": consistency / count, "tokens": tokens}


def micro_batch_stream(order: ShardedBatchOrder, position: dict[str, int]
                       ) -> Iterator[list[int]]:
    """This rank's micro-batches (example indices) from ``position`` on, across epochs.

    ``position`` (``epoch``, ``batch``) is advanced as batches are taken, so a checkpoint written
    between two steps records where the next step starts.
    """
    while True:
        for indices in order.batches(position["epoch"], position["batch"]):
            position["batch"] += 1
            yield indices
        position["epoch"], position["batch"] = position["epoch"] + 1, 0


def train_step(engine: Any, forward: ForwardFn, router: Router,
               micro_batches: Sequence[dict[str, torch.Tensor]],
               target_counts: Sequence[torch.Tensor | int], seed: int, rank: int,
               world: int) -> StepStats:
    """Forward, backward and ``engine.step`` for each micro-batch of one optimizer step.

    Args:
        engine: the DeepSpeed engine (its ``step`` applies the optimizer at the step's last
            micro-batch).
        forward: the task family's routed forward.
        micro_batches: the step's batches, already on ``engine.device``.
        target_counts: loss-carrying units of each micro-batch on this rank.
        seed, rank, world: dropout masks are a function of (seed, micro-step, rank), so they
            replay exactly on resume.

    Returns:
        This step's :class:`StepStats` (on the device).
    """
    device = engine.device
    local = torch.stack([torch.as_tensor(c, dtype=torch.float64, device=device)
                         for c in target_counts])
    global_counts = all_reduce_sum(local.clone())  # the step's one collective
    # each rank's share of the global mean: n_local * world / n_global (0 for an empty batch)
    scales = torch.where(global_counts > 0, local * world / global_counts.clamp_min(1.0),
                         torch.zeros_like(local))
    stats = StepStats.zeros(device)
    for batch, scale in zip(micro_batches, scales, strict=True):
        torch.manual_seed(counter_hash(seed, DROPOUT_STREAM, router.step, rank) >> 1)
        out = forward(engine, batch, router, scale.to(torch.float32))
        engine.backward(out.loss)
        engine.step()
        router.advance()  # after backward: recomputed activations see the same route
        stats.add_micro_batch(out, batch["attention_mask"].sum())
    return stats
