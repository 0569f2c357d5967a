"""Activation checkpointing that replays each block's routes and dropout masks.

Checkpointing keeps only each Transformer block's inputs in the forward and recomputes the block
during backward. An AdaMix layer inside the block asks the router for its experts, and by then the
router has moved on: the pass context of the forward (``use_passes(0, 1)`` for the paired pass,
``(1,)`` for the second sequential pass) has closed, and in a loop that advances the router before
backward the step would differ too. So each checkpointed call snapshots the router's forward state
and the recompute runs inside :meth:`Router.replaying` of that snapshot (PyTorch's non-reentrant
``checkpoint`` takes a ``context_fn`` for exactly this). Dropout masks replay because
``checkpoint`` restores the RNG state (``preserve_rng_state``, its default).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

from torch import nn

from .routing import Router


def route_replay(router: Router
                 ) -> Callable[[], tuple[AbstractContextManager, AbstractContextManager]]:
    """A ``context_fn`` for ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``:
    called at each checkpointed forward, it returns (forward context, recompute context)."""
    def context_fn() -> tuple[AbstractContextManager, AbstractContextManager]:
        return contextlib.nullcontext(), router.replaying(router.forward_state())
    return context_fn


def enable_activation_checkpointing(model: nn.Module, router: Router) -> None:
    """Checkpoint every block of a Hugging Face model (its ``activation_checkpointing_enable``,
    non-reentrant) with the router's routes replayed in the recompute. Call it after AdaMix is
    injected and before the model is wrapped (``deepspeed.initialize``)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"train.gradient_checkpointing: {type(model).__name__} does not support "
                         "Hugging Face gradient checkpointing")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={
        "use_reentrant": False, "context_fn": route_replay(router)})
    if getattr(model.config, "use_cache", False):
        model.config.use_cache = False  # a KV cache is useless in training and HF refuses it here
