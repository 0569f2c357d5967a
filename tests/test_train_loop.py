"""``training.loop``: one optimizer step against a plain loop written out here, with a counting
stand-in for the collective and a guard that fails on any host read of a tensor."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from adamix_ds.losses import AdaMixLossOutput
from adamix_ds.routing import Router
from adamix_ds.training import loop
from adamix_ds.training.loop import StepStats, micro_batch_stream, train_step
from adamix_ds.training.sampler import ShardedBatchOrder


class FakeEngine:
    """What train_step uses of a DeepSpeed engine: device, backward, step."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.steps = 0

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.steps += 1


def _batch(tokens: list[int]) -> dict[str, torch.Tensor]:
    mask = torch.zeros(len(tokens), 6, dtype=torch.long)
    for row, n in enumerate(tokens):
        mask[row, :n] = 1
    return {"attention_mask": mask, "x": torch.arange(len(tokens), dtype=torch.float32)}


@contextlib.contextmanager
def no_host_reads() -> Iterator[None]:
    """Fail on ``.item()``, ``.tolist()``, ``bool()``, ``float()`` and ``int()`` of a tensor."""
    names = ("item", "tolist", "__bool__", "__float__", "__int__")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("host read of a tensor inside train_step")

    try:
        for name in names:
            setattr(torch.Tensor, name, refuse)
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@pytest.fixture
def collectives(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Pretend to be one of two ranks whose peer sees exactly the same numbers: every
    all-reduce doubles its tensor. Returns the list of reduced tensors (copies, before)."""
    calls: list[torch.Tensor] = []

    def all_reduce(tensor: torch.Tensor, *args: object, **kwargs: object) -> None:
        calls.append(tensor.clone())
        tensor.mul_(2)

    monkeypatch.setattr(loop.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(loop.dist, "all_reduce", all_reduce)
    return calls


def test_train_step_matches_a_plain_loop_with_one_collective(collectives) -> None:
    weight = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))

    def forward(engine, batch, router, scale) -> AdaMixLossOutput:
        task = (weight * batch["x"]).sum()
        kl = weight.square().sum()
        return AdaMixLossOutput(task + 3.0 * kl, task, kl).scaled(scale)

    micro = [_batch([6, 2, 1]), _batch([3, 3, 3]), _batch([1, 1, 1])]
    counts = [torch.tensor(5), 0, torch.tensor(7)]  # the middle micro-batch carries no loss
    engine, router = FakeEngine(), Router(seed=0)
    with no_host_reads():
        stats = train_step(engine, forward, router, micro, counts, seed=1, rank=0, world=2)
    assert len(collectives) == 1  # the counts of all micro-batches, at once
    torch.testing.assert_close(collectives[0], torch.tensor([5.0, 0.0, 7.0], dtype=torch.float64))
    assert engine.steps == 3 and router.step == 3

    # plain loop: scale = n_local * world / n_global, n_global = 2 n_local here (0 if empty)
    want_loss = want_task = want_kl = 0.0
    want_grad = torch.zeros(3)
    for batch, n in zip(micro, (5, 0, 7), strict=True):
        s = 0.0 if n == 0 else n * 2 / (2 * n)
        w = weight.detach()
        task, kl = float((w * batch["x"]).sum()), float(w.square().sum())
        want_task, want_kl = want_task + s * task, want_kl + s * kl
        want_loss += s * (task + 3.0 * kl)
        want_grad += s * (batch["x"] + 6.0 * w)
    torch.testing.assert_close(weight.grad, want_grad)
    for got, want in ((stats.loss, want_loss), (stats.task_loss, want_task),
                      (stats.consistency, want_kl), (stats.micro_batches, 3.0),
                      (stats.tokens, 9.0 + 9.0 + 3.0)):
        assert got.dtype == torch.float64 and got.device == engine.device
        assert float(got) == pytest.approx(want, rel=1e-6)


def test_global_means_reduce_once_and_divide_by_the_micro_batch_count(collectives) -> None:
    stats = StepStats.zeros("cpu")
    stats += StepStats(torch.tensor([6.0, 4.0, 0.5, 2.0, 30.0], dtype=torch.float64))
    stats += StepStats(torch.tensor([2.0, 2.0, 0.0, 2.0, 10.0], dtype=torch.float64))
    means = stats.global_means()
    assert len(collectives) == 1
    # both "ranks" alike: sums double, counts double; means are unchanged, tokens double
    assert means == pytest.approx({"loss": 2.0, "task_loss": 1.5, "consistency": 0.125,
                                   "tokens": 80.0})


def test_micro_batch_stream_crosses_epochs_and_records_the_position() -> None:
    order = ShardedBatchOrder(num_examples=10, micro_batch=3, world_size=1, rank=0, seed=4)
    position = {"epoch": 0, "batch": 1}
    stream = micro_batch_stream(order, position)
    taken = [next(stream) for _ in range(4)]
    # epoch 0 has 3 batches; starting at batch 1 gives batches 1, 2 of epoch 0, then 0, 1 of 1
    want = list(order.batches(0, 1)) + list(order.batches(1))[:2]
    assert taken == want
    assert position == {"epoch": 1, "batch": 2}
