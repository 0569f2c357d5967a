"""Inference policies of an AdaMix model, shared by NLU prediction and NLG decoding.

The paper's ablations (its Table 6):

* ``merged``: the experts averaged into one module (Eq. 3); the default and the served model;
* ``fixed``: one expert served alone (expert 0 unless ``expert`` says which);
* ``random``: one random route per call, drawn from the router's eval stream (``route_draw``
  picks the draw, so K draws give K random sub-networks of the mixture);
* ``ensemble``: T randomly routed members whose probabilities are averaged.

The T members run as one batched forward over T member-major copies of the batch (segment t
routed with member t), the segment mechanism of the paired consistency pass:
:func:`repeat_members` builds the copies and :func:`member_mean` averages the outputs back.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .config import INFERENCE_MODES
from .inject import adamix_layers
from .routing import Router


def experts_missing(model: nn.Module, router: Router | None) -> str | None:
    """Why ``model`` cannot route among experts (merged / folded layers, no AdaMix layers or no
    router), or None when every policy can run."""
    layers = adamix_layers(model)
    single = [name for name, layer in layers.items()
              if layer.merged_mode is not None or getattr(layer, "folded", False)]
    if single:
        return f"merged/folded layers such as {single[0]}"
    if router is None or not layers:
        return "no AdaMix experts"
    return None


@contextlib.contextmanager
def inference_policy(model: nn.Module, router: Router | None, policy: str,
                     ensemble_passes: int = 1, route_draw: int = 0, expert: int = 0
                     ) -> Iterator[int]:
    """Route ``model`` with one inference policy; yields the number of ensemble members T.

    Inside the block the model expects ``repeat_members(x, T)`` inputs (T = 1 except for
    ``ensemble``). ``expert``: which expert ``fixed`` serves.

    Raises:
        ValueError: an unknown policy, ``ensemble_passes`` without ``ensemble``, or a policy that
            needs the experts on a model that has none (merged / folded layers, a PEFT model, no
            router).
    """
    if policy not in INFERENCE_MODES:
        raise ValueError(f"inference policy must be one of {list(INFERENCE_MODES)}, "
                         f"got {policy!r}")
    if policy != "ensemble" and ensemble_passes != 1:
        raise ValueError(f"ensemble_passes={ensemble_passes} needs the 'ensemble' policy, "
                         f"not {policy!r}")
    if ensemble_passes < 1:
        raise ValueError(f"ensemble_passes must be >= 1, got {ensemble_passes}")
    if policy != "merged" and (missing := experts_missing(model, router)):
        raise ValueError(f"inference policy {policy!r} routes among the experts, but the model "
                         f"has {missing}: load the unmerged mixture checkpoint")
    if router is None:
        yield 1
        return
    saved_draw, saved_expert = router.eval_draw, router.fixed_expert
    router.eval_draw, router.fixed_expert = route_draw, expert
    members = ensemble_passes if policy == "ensemble" else 1
    try:
        with router.use_inference(policy), router.use_passes(*range(members)):
            yield members
    finally:
        router.eval_draw, router.fixed_expert = saved_draw, saved_expert


def repeat_members(value: Any, members: int) -> Any:
    """``(B, ...)`` -> ``(members * B, ...)``: T member-major copies [x; x; ...] of a batch
    tensor; anything else (a 0-dim tensor, a flag) comes back unchanged."""
    if members == 1 or not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    return value.repeat(members, *([1] * (value.dim() - 1)))


def member_mean(values: torch.Tensor, members: int) -> torch.Tensor:
    """``(members * N, ...)`` -> ``(N, ...)``: the mean over the member-major segments."""
    return values if members == 1 else values.unflatten(0, (members, -1)).mean(0)


def member_mean_probs(logits: torch.Tensor, members: int) -> torch.Tensor:
    """``(members * N, ..., V)`` logits -> ``(N, ..., V)`` mean of the members' softmax, in
    float32 (float64 logits stay float64)."""
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return member_mean(wide.softmax(-1), members)


@torch.no_grad()
def ensemble_probs(model: nn.Module, router: Router, num_passes: int, batched: bool = True,
                   **inputs: Any) -> torch.Tensor:
    """Mean over ``num_passes`` randomly routed members of softmax(logits), in float32 or wider.

    Args:
        model: an injected model in eval mode returning ``.logits`` (B, ..., V).
        batched: one forward over T copies of the batch (faster, T x activation memory) or a loop.
        inputs: the model's keyword inputs, batch-first tensors.
    Returns:
        (B, ..., V) probabilities. The members come from the router's current eval draw, which is
        advanced afterwards, so the next call draws a fresh ensemble.
    """
    if model.training:
        raise ValueError("ensemble_probs needs model.eval(): training mode routes by step")
    with inference_policy(model, router, "ensemble", num_passes, router.eval_draw) as members:
        if batched:
            logits = model(**{k: repeat_members(v, members) for k, v in inputs.items()}).logits
            probs = member_mean_probs(logits, members)
        else:
            probs = 0
            for member in range(members):
                with router.use_passes(member):
                    probs = probs + model(**inputs).logits.float().softmax(-1)
            probs = probs / members
    router.advance_eval()
    return probs
