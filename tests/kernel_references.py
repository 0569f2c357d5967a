"""Plain-torch references for the Triton ops of ``adamix_ds.kernels``: the tests' oracles.

Differentiable by autograd in any dtype (float64 for the oracles); each is checked against the
expert layer it stands for (``LoRAExperts`` / ``AdapterExperts`` with a route).
"""
from __future__ import annotations

import torch

from adamix_ds.experts import ACTIVATIONS
from adamix_ds.routing import Route


def _segments(x: torch.Tensor, route: Route) -> list[torch.Tensor]:
    if x.shape[0] % len(route):
        raise ValueError(f"batch {x.shape[0]} does not split into {len(route)} route segments")
    return list(x.chunk(len(route), dim=0)) if len(route) > 1 else [x]


def routed_lora_delta_reference(x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
                                route: Route, scale: float) -> torch.Tensor:
    """x (B, ..., d_in) -> (B, ..., d_out), scale * (x_s @ A[j_s]) @ B[k_s] on segment s."""
    outs = [scale * ((xs @ lora_a[j]) @ lora_b[k])
            for xs, (j, k) in zip(_segments(x, route), route, strict=True)]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


def routed_adapter_reference(x: torch.Tensor, down_weight: torch.Tensor, down_bias: torch.Tensor,
                             up_weight: torch.Tensor, up_bias: torch.Tensor, route: Route,
                             activation: str) -> torch.Tensor:
    """x (B, ..., d) -> y of x's shape: xs + act(xs @ Wd[j] + bd[j]) @ Wu[k] + bu[k] per segment."""
    act = ACTIVATIONS[activation]
    outs = [xs + act(xs @ down_weight[j] + down_bias[j]) @ up_weight[k] + up_bias[k]
            for xs, (j, k) in zip(_segments(x, route), route, strict=True)]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
