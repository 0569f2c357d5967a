"""What every task family gives the training loop, and the routed passes they all run.

A task family (``tasks.nlg``, ``tasks.nlu``) builds a :class:`TrainTask`: its backbone, data,
routed forward and what to do with the finished model. The DeepSpeed loop in
``adamix_ds.training`` runs any of them; nothing here imports deepspeed.

AdaMix compares two forwards with independent routes. How they run is the pass schedule:

* ``paired`` (default): one forward over ``cat(inputs, inputs)``; the router gives the first
  half route A (pass 0) and the second half route B (pass 1). One launch per layer, and under
  ZeRO-3 one parameter gather per layer instead of two.
* ``sequential``: two forwards, pass 0 then pass 1 (each holds one pass's activations while it
  runs; the autograd graph keeps both until backward).
* ``off``: one forward with route A and no second pass (no consistency term).

Both passes give the same loss and gradients under ``paired`` and ``sequential`` when dropout is
off. Pure torch.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..losses import AdaMixLossOutput
from ..routing import Router

#: The adaptation export of the best dev evaluation, beside ``adaptation/`` in a run's output
#: directory (written by the training loop under ``train.select_best``, scored by the task).
BEST_ADAPTATION = "best_adaptation"

#: Allowed pass schedules (``train.consistency`` in a preset).
PASS_SCHEDULES: tuple[str, ...] = ("paired", "sequential", "off")


def check_schedule(schedule: str, name: str = "consistency") -> None:
    """Raise a ValueError naming ``name`` unless ``schedule`` is one of :data:`PASS_SCHEDULES`."""
    if schedule not in PASS_SCHEDULES:
        raise ValueError(f"{name} must be one of {list(PASS_SCHEDULES)}, got {schedule!r}")


def routed_passes(run: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                  inputs: dict[str, torch.Tensor], router: Router, schedule: str
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``run`` under the pass ``schedule``; returns (output of pass 1, of pass 2 or None).

    Args:
        run: ``inputs -> output`` whose first dim is the batch (``(B, ...)``).
        inputs: model inputs, each ``(B, ...)``; ``paired`` concatenates them with themselves.
        router: the model's router (its passes select the routes).
        schedule: one of :data:`PASS_SCHEDULES`.
    """
    check_schedule(schedule)
    if schedule == "paired":
        first, second = paired_pass(run, inputs, router)
        return first, second
    with router.use_passes(0):
        first = run(inputs)
    if schedule == "off":
        return first, None
    with router.use_passes(1):
        return first, run(inputs)


def paired_pass(run: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                inputs: dict[str, torch.Tensor], router: Router) -> torch.Tensor:
    """Both passes in one forward over ``cat(inputs, inputs)``: ``(2, B, ...)``, pass 1 first.

    A free view of the forward's ``(2B, ...)`` output, so a loss over both passes can take it
    whole (one gradient buffer, no concatenation in the backward).
    """
    with router.use_passes(0, 1):
        out = run({k: torch.cat([v, v]) for k, v in inputs.items()})
    return out.unflatten(0, (2, -1))


#: ``(model, batch, router, loss_scale) -> AdaMixLossOutput``: a task family's routed forward;
#: ``model`` is the training engine or the plain module, ``loss_scale`` a 0-dim tensor.
ForwardFn = Callable[[Any, dict[str, torch.Tensor], Router, torch.Tensor], AdaMixLossOutput]


@dataclass
class TrainTask:
    """What the shared training loop needs from a task family.

    model: the backbone, not yet injected (the loop injects AdaMix with a seeded RNG).
    dataset: indexable examples; ``collate`` turns a list of them into a batch of tensors.
    count_targets: the loss-carrying units of a batch (target tokens, or examples; a tensor on
        the batch's device or an int), which the loop sums over ranks so the loss is a mean over
        the global batch.
    forward: the routed forward and loss of one micro-batch (:data:`ForwardFn`).
    finish: rank 0, after a finished run: (output_dir) -> None (samples, dev evaluation).
    evaluate: (module in eval mode, router) -> dev metrics under the served (merged) policy,
        for evaluations during training; every rank calls it on the whole dev split (dev sets
        are small, and under ZeRO-3 every rank must join every forward).
    selection_metric: the key of ``evaluate``'s metrics that best-checkpoint selection maximises.
    """

    model: nn.Module
    dataset: Sequence[Any]
    collate: Callable[[list[Any]], dict[str, torch.Tensor]]
    count_targets: Callable[[dict[str, torch.Tensor]], torch.Tensor | int]
    forward: ForwardFn
    finish: Callable[[Path], None] | None = None
    evaluate: Callable[[nn.Module, Router], dict[str, float]] | None = None
    selection_metric: str | None = None
