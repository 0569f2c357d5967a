"""Inference-time policies that need more than one forward: the logit-ensemble ablation.

``merged`` / ``fixed`` / ``random`` are single forwards under ``router.use_inference(mode)``;
``ensemble`` averages the probabilities of T routed passes. The T passes run as one batched forward
over T copies of the batch (segment t routed with ensemble member t), the same segment mechanism
the paired consistency pass uses.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .routing import Router


def _repeat_batch(value: Any, times: int) -> Any:
    """T copies of a batch tensor stacked along dim 0: [x; x; ...]."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value.repeat(times, *([1] * (value.dim() - 1)))
    return value


@torch.no_grad()
def ensemble_probs(model: nn.Module, router: Router, num_passes: int, batched: bool = True,
                   **inputs: Any) -> torch.Tensor:
    """Mean over ``num_passes`` randomly routed passes of softmax(logits), in float32.

    Args:
        model: an injected model in eval mode returning ``.logits`` (B, ..., V).
        batched: one forward over T copies of the batch (faster, T x activation memory) or a loop.
        inputs: the model's keyword inputs, batch-first tensors.
    Returns:
        (B, ..., V) probabilities. The router's eval stream is advanced afterwards, so the next
        call draws a fresh ensemble.
    """
    if model.training:
        raise ValueError("ensemble_probs needs model.eval(): training mode routes by step")
    if num_passes < 1:
        raise ValueError(f"num_passes must be >= 1, got {num_passes}")
    with router.use_inference("ensemble"):
        if batched:
            with router.use_passes(*range(num_passes)):
                logits = model(
                    **{k: _repeat_batch(v, num_passes) for k, v in inputs.items()}
                ).logits
            probs = logits.float().softmax(-1).unflatten(0, (num_passes, -1)).mean(0)
        else:
            probs = 0
            for member in range(num_passes):
                with router.use_passes(member):
                    probs = probs + model(**inputs).logits.float().softmax(-1)
            probs = probs / num_passes
    router.advance_eval()
    return probs
