"""The merge contract (after peft's ``_test_merge_layers``), on real HF architectures:

unmerged (eval, merged policy) == merged == folded into base == unfolded == saved and reloaded
== exported to PEFT and loaded by the real ``peft`` library; and the adaptation really changes the
output (no zero-init pass hides a broken path).
"""
from __future__ import annotations

import copy

import pytest
import torch

from adamix_ds import (
    AdaMixConfig,
    adamix_layers,
    adaptation_parameters,
    fold_lora,
    inject_adamix,
    merge_experts,
    unfold_lora,
)
from adamix_ds.checkpoint import export_peft, load_adaptation, save_adaptation
from adamix_ds.merging import product_factors, svd_truncate
from tests.models import logits, tiny_model, tokens

ATOL = 2e-5  # float32 logits of a 2-layer model

LORA_CASES = [
    ("gpt2", ("q", "v"), "up"),          # the paper's setting: Q/V slices of the fused c_attn
    ("gpt2", ("q", "v", "o"), "none"),   # mixed PEFT ranks (c_attn 2r, c_proj r) -> rank_pattern
    ("gpt2", ("k",), "down"),
    ("llama", ("q", "v"), "up"),         # nn.Linear projections
    ("llama", ("q", "k", "v", "o", "ffn_gate", "ffn_in", "ffn_out"), "none"),
]
ADAPTER_CASES = [("gpt2", "ffn", "up"), ("gpt2", "attn+ffn", "none"), ("bert", "ffn", "down"),
                 ("llama", "ffn", "up")]


def _randomise(model: torch.nn.Module, seed: int = 3) -> None:
    """Non-zero experts (B starts at zero) so every path visibly changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adaptation_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _fresh(arch: str, cfg: AdaMixConfig) -> torch.nn.Module:
    model = tiny_model(arch)
    inject_adamix(model, cfg)
    return model.eval()


def _assert_reload_matches(model, arch, cfg, directory, ids, expected) -> None:
    """Save the adaptation, load it into a freshly built and injected backbone, compare logits."""
    save_adaptation(model, directory, cfg)
    reloaded = _fresh(arch, cfg)
    load_adaptation(reloaded, directory, cfg)
    torch.testing.assert_close(logits(reloaded, ids), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch,targets,share", LORA_CASES)
def test_lora_merge_contract(arch, targets, share, tmp_path):
    from peft import PeftModel

    ids = tokens()
    base_out = logits(tiny_model(arch), ids)
    cfg = AdaMixConfig(method="lora", num_experts=3, rank=4, alpha=8.0, share=share,
                       targets=targets, lora_dropout=0.1)
    model = _fresh(arch, cfg)
    _randomise(model)
    unmerged = logits(model, ids)
    assert (unmerged - base_out).abs().max() > 1e-3, "adaptation must change the output"

    _assert_reload_matches(model, arch, cfg, tmp_path / "mixture", ids, unmerged)

    export_peft(model, tmp_path / "peft", cfg)
    peft_model = PeftModel.from_pretrained(tiny_model(arch), str(tmp_path / "peft")).eval()
    torch.testing.assert_close(logits(peft_model, ids), unmerged, atol=ATOL, rtol=0)

    merge_experts(model, "average")
    torch.testing.assert_close(logits(model, ids), unmerged, atol=ATOL, rtol=0)
    _assert_reload_matches(model, arch, cfg, tmp_path / "merged", ids, unmerged)

    weights_before = {n: m.base.weight.clone() for n, m in adamix_layers(model).items()}
    fold_lora(model)
    for name, layer in adamix_layers(model).items():
        assert not torch.equal(layer.base.weight, weights_before[name]), f"{name} not folded"
    torch.testing.assert_close(logits(model, ids), unmerged, atol=ATOL, rtol=0)
    unfold_lora(model)
    for name, layer in adamix_layers(model).items():
        torch.testing.assert_close(layer.base.weight, weights_before[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(model, ids), unmerged, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch,placement,share", ADAPTER_CASES)
def test_adapter_merge_contract(arch, placement, share, tmp_path):
    ids = tokens()
    base_out = logits(tiny_model(arch), ids)
    cfg = AdaMixConfig(method="adapter", num_experts=4, bottleneck=6, share=share,
                       placement=placement)
    model = _fresh(arch, cfg)
    _randomise(model)
    unmerged = logits(model, ids)
    assert (unmerged - base_out).abs().max() > 1e-3

    _assert_reload_matches(model, arch, cfg, tmp_path / "mixture", ids, unmerged)

    merge_experts(model, "average")
    torch.testing.assert_close(logits(model, ids), unmerged, atol=ATOL, rtol=0)
    _assert_reload_matches(model, arch, cfg, tmp_path / "merged", ids, unmerged)

    with pytest.raises(ValueError, match="nonlinear"):
        fold_lora(model)
    with pytest.raises(ValueError, match="Houlsby"):
        export_peft(model, tmp_path / "peft", cfg)


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_merged_model_has_inference_param_count(method):
    """After merging, the adaptation holds exactly the 'inference_params' the report promised."""
    cfg = AdaMixConfig(method=method, num_experts=5, rank=2, bottleneck=3, share="up")
    model = tiny_model("gpt2")
    report = inject_adamix(model, cfg)
    merge_experts(model, "average")
    assert sum(p.numel() for p in adaptation_parameters(model).values()) == report.inference_params


def test_shared_side_makes_average_exact():
    """With the up side shared and equal downs, every routed forward equals the merged one."""
    cfg = AdaMixConfig(method="lora", num_experts=4, rank=3, share="up", lora_dropout=0.0)
    model = tiny_model("gpt2")
    report = inject_adamix(model, cfg)
    _randomise(model)
    with torch.no_grad():
        for layer in adamix_layers(model).values():
            for experts in layer.experts.values():
                experts.lora_a.copy_(experts.lora_a[:1].expand_as(experts.lora_a))
    ids = tokens()
    merged = logits(model, ids)
    model.train()
    for module in model.modules():  # routed experts in training, but no backbone dropout noise
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # GPT-2's SDPA path reads attn_dropout.p whenever training
    for _ in range(3):
        torch.testing.assert_close(logits(model, ids), merged, atol=ATOL, rtol=0)
        report.router.advance()


def test_product_merge_equals_mean_of_expert_products():
    """'product' keeps (1/M) sum_j A_j B_j exactly; reference: a float64 loop over experts."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 11, 3, generator=g), torch.randn(5, 3, 7, generator=g)
    ref = sum(a[j].double() @ b[j].double() for j in range(5)) / 5
    fa, fb = product_factors(a, b, 5)
    assert fa.shape == (11, 15) and fb.shape == (15, 7)
    torch.testing.assert_close(fa.double() @ fb.double(), ref, atol=1e-5, rtol=0)
    # A shared up side (M_up = 1) is reused by every expert.
    fa, fb = product_factors(a, b[:1], 5)
    ref_shared = sum(a[j].double() for j in range(5)) @ b[0].double() / 5
    torch.testing.assert_close(fa.double() @ fb.double(), ref_shared, atol=1e-5, rtol=0)


def test_svd_truncation_is_the_best_rank_r_approximation():
    """Eckart-Young: the rank-r factors' error is the norm of the discarded singular values."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(12, 10, generator=g), torch.randn(10, 9, generator=g)
    delta = a.double() @ b.double()
    sv = torch.linalg.svdvals(delta)
    ta, tb = svd_truncate(a, b, 4)
    assert ta.shape == (12, 4) and tb.shape == (4, 9)
    err = torch.linalg.matrix_norm(delta - ta.double() @ tb.double())
    torch.testing.assert_close(err, sv[4:].square().sum().sqrt(), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("mode", ["product", "product_svd"])
def test_product_merges_through_model_and_peft(mode, tmp_path):
    """Unshared LoRA: the merged model applies (1/M) sum_j s A_j B_j (or its rank-r truncation),
    checked on one layer against a float64 reference, and the PEFT export reproduces the model."""
    from peft import PeftModel

    cfg = AdaMixConfig(method="lora", num_experts=3, rank=2, alpha=4.0, share="none",
                       targets=("q", "v"), lora_dropout=0.0)
    model = _fresh("llama", cfg)
    _randomise(model)
    layer = adamix_layers(model)["model.layers.0.self_attn.q_proj"]
    experts = layer.experts["all"]
    ref = sum(experts.lora_a[j].double() @ experts.lora_b[j].double() for j in range(3)) / 3
    merge_experts(model, mode)
    merged = layer.experts["all"]
    got = merged.lora_a[0].double() @ merged.lora_b[0].double()
    if mode == "product":
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    else:
        assert merged.rank == 2
        err = torch.linalg.matrix_norm(ref - got)
        torch.testing.assert_close(err, torch.linalg.svdvals(ref)[2:].square().sum().sqrt(),
                                   atol=1e-4, rtol=1e-4)
    ids = tokens()
    out = logits(model, ids)
    _assert_reload_matches(model, "llama", cfg, tmp_path / "m", ids, out)
    export_peft(model, tmp_path / "peft", cfg)
    peft_model = PeftModel.from_pretrained(tiny_model("llama"), str(tmp_path / "peft")).eval()
    torch.testing.assert_close(logits(peft_model, ids), out, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bf16_merged_and_folded_agree_with_unmerged_within_bf16_rounding(arch):
    """In bf16 the merge and the fold add rounding of their own (a folded weight is rounded once
    more after the update is added). Oracle: the same weights in float64, unmerged. Each bf16
    path's error must stay within a small multiple of what bf16 itself costs the unmerged model,
    and the adaptation must stay visible (a fold that rounds the update away would fail)."""
    ids = tokens()
    cfg = AdaMixConfig(method="lora", num_experts=3, rank=4, alpha=8.0, targets=("q", "v"))
    model = _fresh(arch, cfg)
    _randomise(model)
    reference = logits(copy.deepcopy(model).double(), ids)
    effect = (reference - logits(tiny_model(arch).double(), ids)).abs().max()
    model = model.to(torch.bfloat16)
    errors = {"unmerged": (logits(model, ids).double() - reference).abs().max()}
    merge_experts(model, "average")
    errors["merged"] = (logits(model, ids).double() - reference).abs().max()
    fold_lora(model)
    errors["folded"] = (logits(model, ids).double() - reference).abs().max()
    scale = reference.abs().max()
    assert errors["unmerged"] < 2 ** -5 * scale, errors  # 8 significant bits, a few layers deep
    for path in ("merged", "folded"):
        assert errors[path] <= 3 * errors["unmerged"] + 2 ** -8 * scale, (path, errors)
    assert max(errors.values()) < 0.2 * effect, (errors, effect)
