"""Inference policies on an injected model: merged / fixed / random / ensemble really differ, and
the ensemble is the mean of the members' probabilities."""
from __future__ import annotations

import torch

from adamix_ds import AdaMixConfig, adaptation_parameters, inject_adamix
from adamix_ds.inference import ensemble_probs
from tests.models import tiny_model, tokens


def _model(num_experts: int = 4):
    model = tiny_model("gpt2")
    report = inject_adamix(model, AdaMixConfig(num_experts=num_experts, rank=4, share="none",
                                               lora_dropout=0.0))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adaptation_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval(), report.router


def test_ensemble_is_mean_of_member_probabilities():
    """Reference: a float64 loop over members, each a separate forward routed as member t."""
    model, router = _model()
    ids = tokens(batch=3)
    start = router.eval_draw
    got = ensemble_probs(model, router, 3, input_ids=ids)
    assert router.eval_draw == start + 1, "the next call must draw a fresh ensemble"
    router.eval_draw = start
    members = []
    with router.use_inference("ensemble"), torch.no_grad():
        for t in range(3):
            with router.use_passes(t):
                members.append(model(input_ids=ids).logits.double().softmax(-1))
    reference = torch.stack(members).mean(0)
    torch.testing.assert_close(got.double(), reference, atol=1e-6, rtol=0)
    assert (members[0] - members[1]).abs().max() > 1e-4, "members must route differently"
    router.eval_draw = start
    looped = ensemble_probs(model, router, 3, batched=False, input_ids=ids)
    torch.testing.assert_close(looped, got, atol=1e-6, rtol=0)


def test_policies_give_different_outputs():
    model, router = _model()
    ids = tokens()
    outs = {}
    with torch.no_grad():
        for mode in ("merged", "fixed", "random"):
            with router.use_inference(mode):
                outs[mode] = model(input_ids=ids).logits.softmax(-1)
    outs["ensemble"] = ensemble_probs(model, router, 4, input_ids=ids)
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert (outs[a] - outs[b]).abs().max() > 1e-4, f"{a} == {b}"


def test_random_policy_changes_only_when_advanced():
    model, router = _model()
    ids = tokens()
    with router.use_inference("random"), torch.no_grad():
        first = model(input_ids=ids).logits
        assert torch.equal(model(input_ids=ids).logits, first), "fixed within one draw"
        changed = False
        for _ in range(4):
            router.advance_eval()
            changed |= not torch.allclose(model(input_ids=ids).logits, first)
    assert changed


def test_single_expert_ensemble_equals_merged():
    model, router = _model(num_experts=1)
    ids = tokens()
    with torch.no_grad():
        merged = model(input_ids=ids).logits.float().softmax(-1)
    torch.testing.assert_close(ensemble_probs(model, router, 3, input_ids=ids), merged,
                               atol=1e-6, rtol=0)
