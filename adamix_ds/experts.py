"""Stacked expert weights: one Parameter of shape (M, ...) per projection.

Why stacked and not a ModuleList of M small modules: every step then touches the *same* parameters
whatever the route (ZeRO-3 gathers one tensor per projection and never sees rank-dependent module
sets), and merging is a reduction over dim 0. Only the routed slice enters the matmul, so a training
forward costs the FLOPs of a single module.

Conventions (row-major ``x @ W`` like torchtune's ``GroupedExperts``):
    down projection  (M_down, d_in, r)   LoRA A / adapter W_down
    up projection    (M_up,   r, d_out)  LoRA B / adapter W_up
A shared side has M = 1.

A *route* is a tuple with one ``(down_index, up_index)`` pair per batch segment: the leading batch
dimension is split into ``len(route)`` equal segments (1 normally, 2 for the paired consistency
pass). ``route=None`` means the merged module (Eq. 3: mean of the stacked weights).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .kernels.dispatch import triton_takes
from .routing import Route

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
}


def experts_per_side(num_experts: int, share: str) -> tuple[int, int]:
    """(M_down, M_up): the shared side keeps a single module."""
    return (1 if share == "down" else num_experts, 1 if share == "up" else num_experts)


def _copy_first_expert(*stacks: torch.Tensor) -> None:
    """Overwrite experts 1..M-1 of each (M, ...) stack with expert 0 (``expert_init="copy"``)."""
    with torch.no_grad():
        for stack in stacks:
            stack[1:] = stack[:1]


def _segments(x: torch.Tensor, route: Route) -> list[torch.Tensor]:
    """Split x (B, ...) into len(route) equal batch segments."""
    if x.shape[0] % len(route):
        raise ValueError(f"batch {x.shape[0]} does not split into {len(route)} route segments")
    return list(x.chunk(len(route), dim=0)) if len(route) > 1 else [x]


def shared_up_expert(route: Route) -> int | None:
    """The up expert every segment of ``route`` uses, or None when the segments differ."""
    ups = {k for _, k in route}
    return next(iter(ups)) if len(ups) == 1 else None


def routed_lora_down(x: torch.Tensor, lora_a: torch.Tensor, route: Route, scale: float
                     ) -> torch.Tensor:
    """``scale * x_s @ A[j_s]`` per segment s: x (B, ..., d_in) -> (B, ..., r). The scale is
    applied here, on r columns, rather than on the d_out columns of the update."""
    hs = [xs @ lora_a[j] for xs, (j, _) in zip(_segments(x, route), route, strict=True)]
    return (hs[0] if len(hs) == 1 else torch.cat(hs, dim=0)) * scale


def routed_lora_update(x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, route: Route,
                       scale: float) -> torch.Tensor:
    """The eager routed LoRA update: x (B, ..., d_in) -> scale * (x_s @ A[j_s]) @ B[k_s] per
    segment s, (B, ..., d_out); lora_a (M_down, d_in, r), lora_b (M_up, r, d_out). When every
    segment uses the same B (a shared up side), the up projection is one matmul over the whole
    batch instead of one per segment and a concatenation of d_out-wide outputs."""
    h = routed_lora_down(x, lora_a, route, scale)                       # (B, ..., r)
    up = shared_up_expert(route)
    if up is not None:
        return h @ lora_b[up]
    outs = [hs @ lora_b[k] for hs, (_, k) in zip(_segments(h, route), route, strict=True)]
    return torch.cat(outs, dim=0)


def routed_adapter_eager(h: torch.Tensor, down_weight: torch.Tensor, down_bias: torch.Tensor,
                         up_weight: torch.Tensor, up_bias: torch.Tensor, route: Route,
                         activation: str) -> torch.Tensor:
    """The eager routed Houlsby adapter, residual included: h (B, ..., d) -> (B, ..., d) with
    ``h_s + act(h_s @ Wd[j] + bd[j]) @ Wu[k] + bu[k]`` per segment s."""
    act = ACTIVATIONS[activation]
    outs = [hs + act(hs @ down_weight[j] + down_bias[j]) @ up_weight[k] + up_bias[k]
            for hs, (j, k) in zip(_segments(h, route), route, strict=True)]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


class LoRAExperts(nn.Module):
    """M LoRA experts for one projection (or one output slice of a fused projection).

    ``forward(x, route)`` returns only the low-rank update ``scale * x @ A[j] @ B[k]``; the caller
    adds it to the frozen base output and applies input dropout.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, num_experts: int,
                 share: str, scale: float, init: str = "copy") -> None:
        super().__init__()
        self.init = init
        n_down, n_up = experts_per_side(num_experts, share)
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.scale = scale
        self.lora_a = nn.Parameter(torch.empty(n_down, in_features, rank))   # (M_down, d_in, r)
        self.lora_b = nn.Parameter(torch.empty(n_up, rank, out_features))    # (M_up, r, d_out)
        self.reset_parameters()

    @property
    def num_down(self) -> int:
        return self.lora_a.shape[0]

    @property
    def num_up(self) -> int:
        return self.lora_b.shape[0]

    def reset_parameters(self) -> None:
        # A as nn.Linear's default (kaiming_uniform, a=sqrt(5)) on an (r, d_in) weight, which is
        # U(-1/sqrt(d_in), 1/sqrt(d_in)); B = 0 so the adapted model starts equal to the base.
        bound = 1.0 / math.sqrt(self.in_features)
        # All M slices are drawn in either mode, so expert 0 is the same draw in both.
        nn.init.uniform_(self.lora_a, -bound, bound)
        nn.init.zeros_(self.lora_b)
        if self.init == "copy":
            _copy_first_expert(self.lora_a)

    def merged_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 3: (mean_j A_j (d_in, r), mean_k B_k (r, d_out))."""
        return self.lora_a.mean(0), self.lora_b.mean(0)

    def delta_weight(self) -> torch.Tensor:
        """The merged update as a dense (d_in, d_out) matrix, scale included."""
        a, b = self.merged_weights()
        return self.scale * (a @ b)

    def forward(self, x: torch.Tensor, route: Route | None) -> torch.Tensor:
        """x: (B, ..., d_in) -> (B, ..., d_out) update for the routed (or merged) experts."""
        if route is None:
            a, b = self.merged_weights()
            return ((x @ a) * self.scale) @ b
        if triton_takes(x, self.lora_a, self.lora_b, rank=self.rank):
            from .kernels.lora_delta import routed_lora_delta  # deferred: triton is optional
            return routed_lora_delta(x, self.lora_a, self.lora_b, route, self.scale)
        return routed_lora_update(x, self.lora_a, self.lora_b, route, self.scale)

    def add_into(self, out: torch.Tensor, x: torch.Tensor, route: Route | None,
                 start: int) -> torch.Tensor:
        """``out[..., start:start + d_out] += forward(x, route)``; returns the updated ``out``.

        out: (B, ..., d_total) base projection output; x: (B, ..., d_in). On the Triton path the
        update is one kernel that accumulates into the slice (no (B, T, d_out) delta tensor, no
        separate add); elsewhere the delta is computed and added.
        """
        if route is not None and triton_takes(x, self.lora_a, self.lora_b, rank=self.rank,
                                              out=out):
            from .kernels.lora_delta import routed_lora_delta  # deferred: triton is optional
            return routed_lora_delta(x, self.lora_a, self.lora_b, route, self.scale, out=out,
                                     out_slice=(start, start + self.out_features))
        whole = self.out_features == out.shape[-1]
        up = shared_up_expert(route) if route is not None else None
        if whole and up is not None and x.dtype == out.dtype:
            # one up matmul that adds the base output in its epilogue: no (B, T, d_out) delta
            h = routed_lora_down(x, self.lora_a, route, self.scale)       # (B, ..., r)
            return torch.addmm(out.flatten(0, -2), h.flatten(0, -2),
                               self.lora_b[up]).view_as(out)
        delta = self.forward(x, route).to(out.dtype)
        if whole:
            return out + delta
        # in place is autograd-safe: the base matmul does not save its output
        out[..., start:start + self.out_features] += delta
        return out

    def param_count_merged(self) -> int:
        """Parameters of the single module that serves at inference."""
        return self.rank * (self.in_features + self.out_features)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, r={self.rank}, "
                f"down={self.num_down}, up={self.num_up}, scale={self.scale:g}")


class AdapterExperts(nn.Module):
    """M Houlsby adapters: ``h + act(h @ W_down[j] + b_down[j]) @ W_up[k] + b_up[k]``."""

    def __init__(self, features: int, bottleneck: int, num_experts: int, share: str,
                 activation: str, init: str = "copy") -> None:
        super().__init__()
        self.init = init
        n_down, n_up = experts_per_side(num_experts, share)
        self.features, self.bottleneck, self.activation = features, bottleneck, activation
        self.act = ACTIVATIONS[activation]
        self.down_weight = nn.Parameter(torch.empty(n_down, features, bottleneck))  # (M_down, d, b)
        self.down_bias = nn.Parameter(torch.empty(n_down, bottleneck))             # (M_down, b)
        self.up_weight = nn.Parameter(torch.empty(n_up, bottleneck, features))     # (M_up, b, d)
        self.up_bias = nn.Parameter(torch.empty(n_up, features))                   # (M_up, d)
        self.reset_parameters()

    @property
    def num_down(self) -> int:
        return self.down_weight.shape[0]

    @property
    def num_up(self) -> int:
        return self.up_weight.shape[0]

    def reset_parameters(self) -> None:
        # Houlsby et al.: near-identity start, weights ~ truncated N(0, 1e-3^2), zero biases.
        for weight in (self.down_weight, self.up_weight):
            nn.init.trunc_normal_(weight, std=1e-3, a=-2e-3, b=2e-3)
        nn.init.zeros_(self.down_bias)
        nn.init.zeros_(self.up_bias)
        if self.init == "copy":
            _copy_first_expert(self.down_weight, self.up_weight)

    def merged_weights(self) -> tuple[torch.Tensor, ...]:
        """Eq. 3: the mean of each stacked tensor over its experts."""
        return tuple(p.mean(0) for p in (self.down_weight, self.down_bias,
                                         self.up_weight, self.up_bias))

    def forward(self, h: torch.Tensor, route: Route | None) -> torch.Tensor:
        """h: (B, ..., d) -> (B, ..., d), residual included."""
        if route is None:
            wd, bd, wu, bu = self.merged_weights()
            return h + self.act(h @ wd + bd) @ wu + bu
        params = (self.down_weight, self.down_bias, self.up_weight, self.up_bias)
        if triton_takes(h, *params, rank=self.bottleneck):
            from .kernels.routed_adapter import routed_adapter  # deferred: triton is optional
            return routed_adapter(h, *params, route, self.activation)
        return routed_adapter_eager(h, *params, route, self.activation)

    def param_count_merged(self) -> int:
        return 2 * self.features * self.bottleneck + self.bottleneck + self.features

    def extra_repr(self) -> str:
        return (f"d={self.features}, b={self.bottleneck}, act={self.activation}, "
                f"down={self.num_down}, up={self.num_up}")
