"""The wrappers that sit in the model: a frozen base projection + stacked experts + the router.

``AdaMixLoRA`` wraps an ``nn.Linear`` or GPT-2's ``Conv1D`` and adds routed LoRA updates to one or
more output slices (GPT-2's fused ``c_attn``: the Q and V thirds, K untouched).
``AdaMixAdapter`` wraps a projection and applies routed Houlsby adapters to its output.
Both hold their experts in ``self.experts`` (a ModuleDict), so ``adapter_params()`` and checkpoint
names are uniform: ``<module>.experts.<slice>.<tensor>``.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .experts import AdapterExperts, LoRAExperts
from .routing import Route, Router

BaseProjection = nn.Linear | Conv1D


def projection_shape(base: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an nn.Linear (weight (out, in)) or a GPT-2 Conv1D (weight (in, out))."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if isinstance(base, Conv1D):
        # a ZeRO-3 partitioned weight is empty here; DeepSpeed keeps the full shape in ds_shape
        d_in, d_out = getattr(base.weight, "ds_shape", base.weight.shape)
        assert d_out == base.nf, "Conv1D stores its weight as (in, out)"
        return d_in, d_out
    raise TypeError(f"AdaMix can adapt nn.Linear or transformers Conv1D, not {type(base).__name__}")


class AdaMixLayer(nn.Module):
    """Common part: the frozen base module, the experts, routing keys, merge state."""

    def __init__(self, base: nn.Module, router: Router) -> None:
        super().__init__()
        self.base = base
        self.router = router
        self.experts = nn.ModuleDict()
        self.keys: dict[str, int] = {}
        self.merged_mode: str | None = None  # set by merging.merge_experts

    def adapter_params(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The adaptation parameters (names relative to this layer)."""
        return self.experts.named_parameters(prefix="experts")

    def inference_param_count(self) -> int:
        """Parameters of the single merged module that serves at inference."""
        return sum(e.param_count_merged() for e in self.experts.values())

    def route(self, slice_name: str) -> Route | None:
        """This forward's route for one slice; a merged layer has one module and no route."""
        if self.merged_mode is not None:
            return None
        return self.router.route(self.keys[slice_name], self.training)

    def _register(self, name: str, slice_name: str, experts: nn.Module) -> None:
        self.experts[slice_name] = experts
        self.keys[slice_name] = self.router.register(f"{name}:{slice_name}", experts.num_down,
                                                     experts.num_up)


class AdaMixLoRA(AdaMixLayer):
    """base(x) + scale * dropout(x) @ A[j] @ B[k] on each adapted output slice.

    Args:
        base: frozen nn.Linear or Conv1D.
        slices: slice name -> (start, stop) of the base's output features it adapts.
        name: the module's name in the model (routing-key label, error messages).
    """

    def __init__(self, base: nn.Module, slices: dict[str, tuple[int, int]], rank: int,
                 num_experts: int, share: str, alpha: float, dropout: float, router: Router,
                 name: str, init: str = "copy") -> None:
        super().__init__(base, router)
        d_in, d_out = projection_shape(base)
        self.slices = dict(slices)
        for slice_name, (start, stop) in self.slices.items():
            if not 0 <= start < stop <= d_out:
                raise ValueError(f"{name}: slice {slice_name}={start}:{stop} outside 0:{d_out}")
            self._register(name, slice_name, LoRAExperts(d_in, stop - start, rank, num_experts,
                                                         share, alpha / rank, init))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.folded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)                                   # (B, T, d_out)
        if self.folded:
            return out
        x = self.dropout(x)
        for slice_name, (start, _) in self.slices.items():
            # out[..., start:stop] += scale * x A[j] B[k]: one fused kernel per slice on Triton
            out = self.experts[slice_name].add_into(out, x, self.route(slice_name), start)
        return out

    # --- folding the merged update into the base weight (serving with zero overhead) --------
    def _add_delta(self, weight: torch.Tensor, sign: float) -> None:
        """weight += sign * the merged update, slice by slice, in place (weight: the base's
        layout, Conv1D (d_in, d_out) or Linear (d_out, d_in))."""
        for slice_name, (start, stop) in self.slices.items():
            delta = self.experts[slice_name].delta_weight().to(weight.dtype)  # (d_in, d_slice)
            if isinstance(self.base, Conv1D):
                weight[:, start:stop] += sign * delta
            else:
                weight[start:stop, :] += sign * delta.T

    @torch.no_grad()
    def folded_weight(self) -> torch.Tensor:
        """A new tensor: the base weight with the merged update added (the layer is unchanged)."""
        if self.folded:
            raise RuntimeError("layer is folded: its base weight already holds the update")
        weight = self.base.weight.detach().clone()
        self._add_delta(weight, +1.0)
        return weight

    @torch.no_grad()
    def fold(self) -> None:
        """Add the merged (Eq. 3) update into the base weight and skip the branch."""
        if self.folded:
            raise RuntimeError("layer is already folded")
        self._add_delta(self.base.weight.data, +1.0)
        self.folded = True

    @torch.no_grad()
    def unfold(self) -> None:
        """Subtract the folded update again (exact up to rounding)."""
        if not self.folded:
            raise RuntimeError("layer is not folded")
        self._add_delta(self.base.weight.data, -1.0)
        self.folded = False


class AdaMixAdapter(AdaMixLayer):
    """Routed Houlsby adapter on the output of ``base``: y = base(x); y + adapter(y)."""

    def __init__(self, base: nn.Module, bottleneck: int, num_experts: int, share: str,
                 activation: str, router: Router, name: str, init: str = "copy") -> None:
        super().__init__(base, router)
        _, d_out = projection_shape(base)
        self.slices = {"adapter": (0, d_out)}
        self._register(name, "adapter",
                       AdapterExperts(d_out, bottleneck, num_experts, share, activation,
                                      init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)                                     # (B, T, d)
        return self.experts["adapter"](h, self.route("adapter"))  # residual inside
