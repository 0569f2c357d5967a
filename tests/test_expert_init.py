"""Expert initialisation: ``copy`` (the authors' code: one module deep-copied into every expert)
against ``independent`` (each expert its own draw).

Oracles: under ``copy`` every routed forward at step 0 equals the merged (Eq. 3) module's, with
the merged module written out as a float64 matmul of the stored tensors, and this holds for
every (down, up) route and every sharing mode; under ``independent`` the routes differ and the
merged LoRA A's norm is near 1/sqrt(M) of one expert's (the mean of M i.i.d. zero-mean draws).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adamix_ds import AdaMixConfig, inject_adamix
from adamix_ds.config import ConfigError
from adamix_ds.experts import AdapterExperts, LoRAExperts
from tests.models import tiny_model, tokens

M, D_IN, D_OUT, R, B = 8, 24, 16, 4, 6


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 5, D_IN, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


@pytest.mark.parametrize("share", ["up", "down", "none"])
def test_copy_lora_experts_identical_and_equal_to_merged(share: str) -> None:
    torch.manual_seed(0)
    experts = LoRAExperts(D_IN, D_OUT, R, M, share, scale=2.0, init="copy").double()
    with torch.no_grad():  # B = 0 would make every update zero: give it values, same per expert
        experts.lora_b.copy_(torch.randn(1, R, D_OUT, dtype=torch.float64).expand_as(
            experts.lora_b))
    for j in range(experts.num_down):
        assert torch.equal(experts.lora_a[j], experts.lora_a[0])
    x = _x()
    a_mean = experts.lora_a.detach().mean(0)
    b_mean = experts.lora_b.detach().mean(0)
    merged_ref = 2.0 * (x @ a_mean @ b_mean)
    for j in range(experts.num_down):
        for k in range(experts.num_up):
            torch.testing.assert_close(experts(x, [(j, k)]), merged_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(experts(x, None), merged_ref, rtol=1e-12, atol=1e-12)


def test_independent_lora_experts_differ_and_merged_norm_shrinks() -> None:
    torch.manual_seed(0)
    experts = LoRAExperts(256, D_OUT, R, M, "up", scale=2.0, init="independent").double()
    a = experts.lora_a.detach()
    assert not torch.equal(a[0], a[1])
    ratio = a.mean(0).norm().item() / a[0].norm().item()
    assert abs(ratio - 1 / math.sqrt(M)) < 0.05, ratio


def test_expert_zero_is_the_same_draw_in_both_modes() -> None:
    torch.manual_seed(3)
    copied = LoRAExperts(D_IN, D_OUT, R, M, "up", scale=1.0, init="copy")
    torch.manual_seed(3)
    independent = LoRAExperts(D_IN, D_OUT, R, M, "up", scale=1.0, init="independent")
    assert torch.equal(copied.lora_a[0], independent.lora_a[0])


@pytest.mark.parametrize("share", ["up", "none"])
def test_copy_adapter_routes_equal_merged(share: str) -> None:
    torch.manual_seed(0)
    experts = AdapterExperts(D_IN, B, M, share, "gelu", init="copy").double()
    h = _x(1)
    wd, bd, wu, bu = (p.detach().mean(0) for p in (experts.down_weight, experts.down_bias,
                                                    experts.up_weight, experts.up_bias))
    ref = h + F.gelu(h @ wd + bd) @ wu + bu
    assert not torch.allclose(ref, h)  # the adapter is not the identity
    for j in range(experts.num_down):
        for k in range(experts.num_up):
            torch.testing.assert_close(experts(h, [(j, k)]), ref, rtol=1e-12, atol=1e-12)
    independent = AdapterExperts(D_IN, B, M, share, "gelu", init="independent").double()
    outs = [independent(h, [(j, 0)]) for j in range(2)]
    assert not torch.allclose(outs[0], outs[1])


def test_default_is_copy_and_bad_value_is_named() -> None:
    assert AdaMixConfig().expert_init == "copy"
    with pytest.raises(ConfigError, match="expert_init"):
        AdaMixConfig(expert_init="same")


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_injected_model_routes_equal_merged_at_step_zero(method: str) -> None:
    """Through a GPT-2: every training route gives the merged model's logits before training
    (LoRA B set to one shared non-zero value first, so the update is not trivially zero)."""
    model = tiny_model("gpt2").double()
    for module in model.modules():  # the backbone's own dropout would make passes differ
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    ids = tokens()
    with torch.no_grad():
        base = model(input_ids=ids).logits
    cfg = AdaMixConfig(method=method, num_experts=4, rank=2, bottleneck=4, share="none",
                       lora_dropout=0.0)
    router = inject_adamix(model, cfg).router
    if method == "lora":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("lora_b"):
                    p.copy_(torch.randn(p.shape[1:], dtype=p.dtype).expand_as(p) * 0.5)
    model.eval()
    with torch.no_grad():
        merged = model(input_ids=ids).logits
        assert not torch.allclose(merged, base)  # the adaptation changes the output
        model.train()
        for _ in range(3):
            routed = model(input_ids=ids).logits
            torch.testing.assert_close(routed, merged, rtol=1e-10, atol=1e-10)
            router.advance()
