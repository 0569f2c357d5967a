"""Merging the experts into one module for serving, and folding LoRA updates into the base.

Modes (``merge_experts(model, mode)``):
* ``average`` -- the paper's Eq. 3: mean of the down matrices and mean of the up matrices (and
  biases). For LoRA this is E_j[A_j] E_k[B_k], the expected update under independent random routing
  of the two sides; it is exact (equals every routed update) when one side is shared and the
  other's experts are equal.
* ``product`` -- LoRA only: the mean of the per-expert updates (1/M) sum_j A_j B_j, kept exactly.
  It is stored as factors of rank M*r ([A_1 .. A_M], [B_1; ..; B_M] / M), whose product *is* the
  full delta, at a fraction of the dense matrix's size while M*r < min(d_in, d_out).
* ``product_svd`` -- the same delta truncated to rank r by SVD (best rank-r approximation).
After merging, each layer holds a single expert (M = 1), so routing is trivial.
"""
from __future__ import annotations

import torch
from torch import nn

from .experts import AdapterExperts, LoRAExperts
from .inject import adamix_layers
from .layers import AdaMixLoRA

MERGE_MODES = ("average", "product", "product_svd")


def product_factors(lora_a: torch.Tensor, lora_b: torch.Tensor, num_experts: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of (1/M) sum_j A_j B_j.

    Args:
        lora_a: (M_down, d_in, r); lora_b: (M_up, r, d_out); a shared side has M = 1 and is
            reused by every expert j.
    Returns:
        (d_in, M*r) and (M*r, d_out).
    """
    a = torch.cat([lora_a[j % lora_a.shape[0]] for j in range(num_experts)], dim=1)
    b = torch.cat([lora_b[j % lora_b.shape[0]] for j in range(num_experts)], dim=0)
    return a, b / num_experts


def svd_truncate(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors (d_in, rank), (rank, d_out) of a @ b: U sqrt(S), sqrt(S) V^T."""
    delta = (a.double() @ b.double())
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(a.dtype), (root[:, None] * vh[:rank]).to(b.dtype)


def _merged_lora(experts: LoRAExperts, mode: str) -> LoRAExperts:
    num_experts = max(experts.num_down, experts.num_up)
    if mode == "average":
        a, b = experts.merged_weights()
    else:
        a, b = product_factors(experts.lora_a, experts.lora_b, num_experts)
        if mode == "product_svd":
            a, b = svd_truncate(a, b, experts.rank)
    merged = LoRAExperts(experts.in_features, experts.out_features, a.shape[1], 1, "none",
                         experts.scale)
    merged.lora_a.data = a[None].detach().clone()
    merged.lora_b.data = b[None].detach().clone()
    return merged.to(experts.lora_a.device)


def _merged_adapter(experts: AdapterExperts) -> AdapterExperts:
    merged = AdapterExperts(experts.features, experts.bottleneck, 1, "none", experts.activation)
    for name, value in zip(("down_weight", "down_bias", "up_weight", "up_bias"),
                           experts.merged_weights(), strict=True):
        getattr(merged, name).data = value[None].detach().clone()
    return merged.to(experts.down_weight.device)


@torch.no_grad()
def merge_experts(model: nn.Module, mode: str = "average") -> None:
    """Replace every layer's M experts by one merged module, in place."""
    if mode not in MERGE_MODES:
        raise ValueError(f"merge mode must be one of {list(MERGE_MODES)}, got {mode!r}")
    layers = adamix_layers(model)
    if not layers:
        raise ValueError("model has no AdaMix layers to merge")
    for name, layer in layers.items():
        if layer.merged_mode is not None:
            raise ValueError(f"{name} is already merged ({layer.merged_mode})")
        if isinstance(layer, AdaMixLoRA) and layer.folded:
            raise ValueError(f"{name} is folded; unfold before merging")
        for slice_name, experts in list(layer.experts.items()):
            if isinstance(experts, LoRAExperts):
                new = _merged_lora(experts, mode)
            elif mode == "average":
                new = _merged_adapter(experts)
            else:
                raise ValueError(f"merge mode {mode!r} applies to LoRA only; adapters are "
                                 "nonlinear and merge by 'average' (Eq. 3)")
            new.requires_grad_(experts.lora_a.requires_grad if isinstance(experts, LoRAExperts)
                               else experts.down_weight.requires_grad)
            layer.experts[slice_name] = new
        layer.merged_mode = mode


def _lora_layers(model: nn.Module) -> dict[str, AdaMixLoRA]:
    layers = {n: m for n, m in adamix_layers(model).items() if isinstance(m, AdaMixLoRA)}
    if not layers:
        raise ValueError("folding needs LoRA layers; Houlsby adapters are nonlinear and cannot be "
                         "folded into the base weights (merge them instead)")
    return layers


def fold_lora(model: nn.Module) -> None:
    """Add each layer's merged update into its base weight: serving then costs nothing extra."""
    for layer in _lora_layers(model).values():
        layer.fold()


def unfold_lora(model: nn.Module) -> None:
    """Undo :func:`fold_lora` (exact up to floating-point rounding)."""
    for layer in _lora_layers(model).values():
        layer.unfold()
