"""A whole AdaMix training step with ``--kernels triton`` equals ``--kernels torch``: loss and
every expert gradient (GPT-2: LoRA on the Q / V slices of c_attn, or Houlsby adapters; paired
consistency pass, two routes). On CPU the kernels run under the Triton interpreter."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # same rule as tests/test_kernel_lora_delta.py
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from adamix_ds import AdaMixConfig, inject_adamix
from adamix_ds.kernels import kernel_mode, set_kernel_mode, use_kernels
from adamix_ds.tasks.nlg import adamix_forward
from tests.models import tiny_model, tokens

CONFIGS = {
    "lora": AdaMixConfig(method="lora", num_experts=4, rank=4, alpha=16, targets=("q", "v"),
                         share="up", lora_dropout=0.0, consistency_weight=10.0, routing_seed=3),
    "adapter": AdaMixConfig(method="adapter", num_experts=4, bottleneck=8, share="up",
                            activation="gelu", consistency_weight=10.0, routing_seed=3),
}


def _step(mode: str, method: str = "lora") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = tiny_model("gpt2", seed=4)
    cfg = CONFIGS[method]
    router = inject_adamix(model, cfg).router
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        # B / adapter weights start at (near) 0: give them values so no gradient is trivially 0
        if "lora_b" in name or "up_weight" in name or "down_weight" in name:
            torch.nn.init.normal_(p, std=0.2)
    model.train()
    ids = tokens(batch=3, seq=9)
    labels = ids.clone()
    labels[:, :3] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with use_kernels(mode):
        out = adamix_forward(model, batch, router, cfg, "paired", label_smoothing=0.1)
        out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_triton_step_equals_torch_step(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import adamix_ds.kernels.lora_delta as lora_delta
    import adamix_ds.kernels.routed_adapter as routed_adapter

    module, name = {"lora": (lora_delta, "routed_lora_delta"),
                    "adapter": (routed_adapter, "routed_adapter")}[method]
    calls: list = []
    real = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    loss_torch, grads_torch = _step("torch", method)
    assert calls == []  # the torch mode never enters the kernel wrapper
    loss_triton, grads_triton = _step("triton", method)
    assert calls  # the kernel entry (Triton only) ran for the routed layers
    torch.testing.assert_close(loss_triton, loss_torch, rtol=1e-5, atol=1e-6)
    assert grads_triton.keys() == grads_torch.keys() and grads_torch
    for name, want in grads_torch.items():
        scale = want.abs().max().item() or 1.0
        torch.testing.assert_close(grads_triton[name], want, rtol=2e-5, atol=2e-5 * scale,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_mode_validation_and_restore() -> None:
    with pytest.raises(ValueError, match="kernel mode must be one of"):
        set_kernel_mode("cuda")
    before = kernel_mode()
    with use_kernels("torch"):
        assert kernel_mode() == "torch"
    assert kernel_mode() == before
