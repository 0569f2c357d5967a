"""Activation checkpointing with AdaMix layers inside the checkpointed blocks.

Oracle: the same model, batch, routes and RNG seed without checkpointing. Recomputation must
reproduce every block exactly, so the loss and every expert's gradient agree to float32 rounding
(1e-6), for the paired and sequential pass schedules, LoRA and adapters, with dropout on in the
backbone and the LoRA branch (the masks must replay too). A spy on ``Router.route`` shows what
the recomputed forwards asked for: the same (key, step, passes) lookups and the same experts as
the forward, in the same order.
"""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from adamix_ds.checkpointing import enable_activation_checkpointing
from adamix_ds.config import AdaMixConfig
from adamix_ds.inject import adaptation_parameters, inject_adamix
from adamix_ds.routing import Router
from adamix_ds.tasks.nlg import adamix_forward

VOCAB = 97
SEED = 3


def build(method: str, checkpointing: bool) -> tuple[torch.nn.Module, Router, AdaMixConfig]:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=VOCAB,
                                       n_positions=32, resid_pdrop=0.1, attn_pdrop=0.1,
                                       embd_pdrop=0.1))
    cfg = AdaMixConfig(method=method, num_experts=4, rank=4, bottleneck=8, targets=["q", "v"],
                       lora_dropout=0.1, consistency_weight=10.0, expert_init="independent")
    router = inject_adamix(model, cfg).router
    # B / the adapters' up start at 0: give them values so that every expert gets a gradient
    with torch.no_grad():
        for p in adaptation_parameters(model).values():
            p.normal_(0, 0.2)
    router.advance(5)
    if checkpointing:
        enable_activation_checkpointing(model, router)
    return model.train(), router, cfg


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (3, 12), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def loss_and_grads(method: str, schedule: str, checkpointing: bool
                   ) -> tuple[float, dict[str, torch.Tensor], list[tuple]]:
    model, router, cfg = build(method, checkpointing)
    lookups: list[tuple] = []
    route = router.route

    def spy(key: int, training: bool):
        result = route(key, training)
        lookups.append((key, router.step, router.passes, result))
        return result

    router.route = spy
    torch.manual_seed(SEED)  # dropout masks
    out = adamix_forward(model, batch(), router, cfg, schedule, label_smoothing=0.1)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in adaptation_parameters(model).items()}
    return out.loss.item(), grads, lookups


@pytest.mark.parametrize("method", ["lora", "adapter"])
@pytest.mark.parametrize("schedule", ["paired", "sequential"])
def test_checkpointed_loss_and_expert_gradients_equal_the_plain_run(method, schedule):
    loss, grads, _ = loss_and_grads(method, schedule, checkpointing=False)
    loss_ckpt, grads_ckpt, _ = loss_and_grads(method, schedule, checkpointing=True)
    assert loss_ckpt == pytest.approx(loss, rel=1e-6, abs=1e-6)
    assert grads.keys() == grads_ckpt.keys() and grads
    for name, grad in grads.items():
        assert grad.abs().max() > 0, f"{name} got no gradient: the check would be vacuous"
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("schedule", ["paired", "sequential"])
def test_recomputed_forward_looks_up_the_forwards_routes(schedule):
    _, _, plain = loss_and_grads("lora", schedule, checkpointing=False)
    _, _, ckpt = loss_and_grads("lora", schedule, checkpointing=True)
    # every adapted projection is looked up once per forward; recomputation adds one per block
    forwards = 1 if schedule == "paired" else 2
    keys = 3 * 2  # 3 layers x (q, v)
    assert len(plain) == forwards * keys
    assert len(ckpt) == 2 * len(plain)
    first = ckpt[:len(plain)]
    assert first == plain  # the checkpointed forward routes as the plain one
    recomputed = ckpt[len(plain):]
    # backward recomputes the blocks last to first; within a block the lookups keep their order
    by_pass_and_key = lambda r: (r[2], r[0])  # noqa: E731
    assert sorted(recomputed, key=by_pass_and_key) == sorted(plain, key=by_pass_and_key)
    passes_seen = {r[2] for r in recomputed}
    assert passes_seen == ({(0, 1)} if schedule == "paired" else {(0,), (1,)})


def test_routes_replay_although_the_router_moved_on_before_backward():
    """A loop that advances the router before backward (or any state change between forward
    and backward) still gets the forward's experts in the recompute."""
    runs = [build("lora", checkpointing=True), build("lora", checkpointing=False)]
    grads = []
    for model, router, cfg in runs:
        torch.manual_seed(SEED)
        out = adamix_forward(model, batch(), router, cfg, "paired")
        router.advance()  # before backward: the recompute must not see this step's routes
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in adaptation_parameters(model).items()})
    for name, grad in grads[1].items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grads[0][name], grad, rtol=1e-6, atol=1e-6, msg=name)


def test_a_model_without_checkpointing_support_is_refused():
    with pytest.raises(ValueError, match="does not support"):
        enable_activation_checkpointing(torch.nn.Linear(2, 2), Router())
