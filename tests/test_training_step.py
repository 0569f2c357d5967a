"""Tests for adamix_ds.tasks.nlg (one AdaMix training forward), pure torch on CPU.

Oracles: a float64 Python loop for label-smoothed CE and the symmetric KL over the target tokens
of hand-shifted logits (each pass computed separately with ``router.use_passes``), hand-counted
target tokens, and the arithmetic of a global token mean over two simulated ranks.
No deepspeed, no torch.distributed.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from adamix_ds import AdaMixConfig, inject_adamix
from adamix_ds.inject import adaptation_parameters
from adamix_ds.tasks.nlg import adamix_forward, count_target_tokens
from tests.models import VOCAB, tiny_model

IGNORE = -100
STEP = 3            # router step used throughout (routes of pass 0 and 1 differ there, checked)
EPS = 0.1           # label smoothing
WEIGHT = 2.5        # consistency weight


def _build(method: str, share: str, mode: str = "stopgrad"):
    """Tiny GPT-2 + AdaMix with random (non-zero) experts, every dropout off, train mode."""
    model = tiny_model("gpt2", seed=0)
    cfg = AdaMixConfig(method=method, num_experts=4, share=share, rank=4, alpha=8.0,
                       lora_dropout=0.0, targets=("q", "v"), bottleneck=6,
                       consistency_weight=WEIGHT, consistency_mode=mode, routing_seed=7)
    router = inject_adamix(model, cfg).router
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():   # LoRA B / adapters start at ~0: make the experts matter
        for p in adaptation_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0       # GPT-2's SDPA path reads attn_dropout.p
    model.train()
    router.advance(STEP)
    return model, router, cfg


def _batch(lengths=(9, 6, 4, 8), contexts=(3, 2, 1, 5), seed=5):
    """Right-padded batch; labels = input_ids on the completion, -100 on context and padding."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE)
    for i, (n, c) in enumerate(zip(lengths, contexts, strict=True)):
        ids[i, :n] = torch.randint(1, VOCAB, (n,), generator=g)
        mask[i, :n] = 1
        labels[i, c:n] = ids[i, c:n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _zero_grads(model):
    for p in model.parameters():
        p.grad = None


def _run(model, batch, router, cfg, consistency, **kw):
    _zero_grads(model)
    out = adamix_forward(model, batch, router, cfg, consistency, label_smoothing=EPS, **kw)
    out.loss.backward()
    return out, _grads(model)


def _reference(model, batch, router, mode):
    """(loss, CE, KL) from pass-0 / pass-1 logits: hand shift, float64 loops; differentiable."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with router.use_passes(0):
        l1 = model(**inputs).logits.double()
    with router.use_passes(1):
        l2 = model(**inputs).logits.double()
    labels = batch["labels"]
    ce_terms, kl_terms = [], []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])          # position t predicts token t + 1
            if y == IGNORE:
                continue
            lp = torch.log_softmax(l1[b, t], dim=-1)
            lq = torch.log_softmax(l2[b, t], dim=-1)
            ce_terms.append(-(1 - EPS) * lp[y] - EPS * lp.mean())
            tp = lp.detach() if mode == "stopgrad" else lp   # targets are constants in stopgrad
            tq = lq.detach() if mode == "stopgrad" else lq
            kl_pq = (tp.exp() * (tp - lq)).sum()
            kl_qp = (tq.exp() * (tq - lp)).sum()
            kl_terms.append(0.5 * (kl_pq + kl_qp))
    ce = torch.stack(ce_terms).mean()
    kl = torch.stack(kl_terms).mean()
    return ce + WEIGHT * kl, ce, kl


def _close(a, b, tol=1e-5):
    a, b = (x.detach() if isinstance(x, torch.Tensor) else x for x in (a, b))
    assert abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b))), (float(a), float(b))


def _grads_close(g1, g2, tol=1e-5):
    assert g1.keys() == g2.keys() and g1
    for name in g1:
        torch.testing.assert_close(g1[name].double(), g2[name].double(), rtol=tol, atol=tol,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("method,share", [("lora", "up"), ("adapter", "down")])
def test_paired_equals_sequential(method, share):
    """With dropout off, one forward over cat(batch, batch) (paired) gives the same loss, task
    loss, consistency and gradients of every trainable tensor as two forwards (sequential);
    both use the routes of the current step, leave router.step alone, and the two passes really
    route differently (so the equality is not trivial)."""
    model, router, cfg = _build(method, share)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
    batch = _batch()
    assert any(router.pair(k, STEP, 0) != router.pair(k, STEP, 1) for k in range(router.num_keys))

    paired, g_paired = _run(model, batch, router, cfg, "paired")
    assert router.step == STEP and router.passes == (0,)
    sequential, g_seq = _run(model, batch, router, cfg, "sequential")
    assert router.step == STEP and router.passes == (0,)

    assert float(paired.consistency.detach()) > 1e-3   # the two passes differ
    for field in ("loss", "task_loss", "consistency"):
        _close(getattr(paired, field), getattr(sequential, field))
    _grads_close(g_paired, g_seq)
    assert any(float(g.abs().max()) > 0 for g in g_paired.values())


@pytest.mark.parametrize("fused_loss", [False, True], ids=["logits", "fused"])
@pytest.mark.parametrize("consistency,mode", [("paired", "stopgrad"), ("sequential", "symmetric")])
def test_loss_matches_float64_reference(consistency, mode, fused_loss):
    """loss = CE(pass 0, shifted labels, label smoothing) + w * symmetric KL(pass 0, pass 1) over
    target tokens, computed independently in float64 from per-pass logits; the gradients of the
    trainable tensors match the reference's too (stopgrad: KL targets are constants). The same
    with fused_loss (hidden states -> chunked CE + KL, no full logits)."""
    model, router, cfg = _build("lora", "none" if not fused_loss else "up", mode)
    batch = _batch()
    out, grads = _run(model, batch, router, cfg, consistency, fused_loss=fused_loss)

    _zero_grads(model)
    ref_loss, ref_ce, ref_kl = _reference(model, batch, router, mode)
    ref_loss.backward()
    ref_grads = _grads(model)

    _close(out.task_loss, ref_ce)
    _close(out.consistency, ref_kl)
    _close(out.loss, ref_loss)
    _close(out.loss, float(ref_ce.detach()) + cfg.consistency_weight * float(ref_kl.detach()))
    _grads_close(grads, ref_grads, tol=2e-5)


def test_fused_loss_needs_a_bias_free_linear_head():
    model, router, cfg = _build("lora", "up")
    model.lm_head.bias = nn.Parameter(torch.zeros(VOCAB))
    with pytest.raises(ValueError, match="bias-free nn.Linear LM head; GPT2LMHeadModel"):
        adamix_forward(model, _batch(), router, cfg, "paired", fused_loss=True)


class _CountingModel:
    """Wraps a model and counts forward calls (and the batch sizes they saw)."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, **kwargs):
        self.calls.append(kwargs["input_ids"].shape[0])
        return self.model(**kwargs)


def test_consistency_off_is_one_pass_with_ce_only():
    """consistency='off': a single forward of the plain batch, consistency 0, loss = CE of pass 0
    (float64 reference); paired is one doubled forward and sequential two plain ones."""
    model, router, cfg = _build("lora", "none")
    batch = _batch()
    _, ref_ce, _ = _reference(model, batch, router, "stopgrad")
    counts = {}
    for consistency in ("off", "paired", "sequential"):
        wrapped = _CountingModel(model)
        out = adamix_forward(wrapped, batch, router, cfg, consistency, label_smoothing=EPS)
        counts[consistency] = wrapped.calls
        if consistency == "off":
            assert float(out.consistency) == 0.0
            _close(out.task_loss, ref_ce)
            _close(out.loss, ref_ce)
    assert counts == {"off": [4], "paired": [8], "sequential": [4, 4]}


def test_invalid_consistency_raises_naming_allowed_values():
    """An unknown consistency mode is a ValueError listing paired / sequential / off."""
    model, router, cfg = _build("lora", "up")
    with pytest.raises(ValueError) as err:
        adamix_forward(model, _batch(), router, cfg, "both")
    for word in ("paired", "sequential", "off", "both"):
        assert word in str(err.value)


def test_loss_scale_multiplies_every_term():
    """loss_scale s gives s x (float64 reference) for loss, task loss and consistency."""
    model, router, cfg = _build("lora", "none")
    batch = _batch()
    ref_loss, ref_ce, ref_kl = _reference(model, batch, router, "stopgrad")
    s = 0.37
    with torch.no_grad():
        out = adamix_forward(model, batch, router, cfg, "paired", EPS, loss_scale=s)
    _close(out.loss, s * float(ref_loss.detach()))
    _close(out.task_loss, s * float(ref_ce.detach()))
    _close(out.consistency, s * float(ref_kl.detach()))


def test_count_target_tokens_hand_example():
    """Only labels[:, 1:] carry loss after the causal shift: the first label never counts."""
    labels = torch.tensor([[-100, 5, 6, -100],
                           [7, -100, 8, 9],
                           [3, -100, -100, -100]])
    # shifted: [5, 6, -100], [-100, 8, 9], [-100, -100, -100]  -> 4 tokens
    assert count_target_tokens(labels) == 4
    assert count_target_tokens(torch.full((2, 5), -100)) == 0
    assert count_target_tokens(_batch()["labels"]) == (9 - 3) + (6 - 2) + (4 - 1) + (8 - 5)


def _rows(batch, rows, trim):
    half = {k: v[rows] for k, v in batch.items()}
    if trim:   # a rank collates its own rows: padded only to its own longest example
        width = int(half["attention_mask"].sum(1).max())
        half = {k: v[:, :width] for k, v in half.items()}
    return half


@pytest.mark.parametrize("consistency", ["paired"])
def test_global_token_normalisation_two_ranks_equal_one(consistency):
    """Two 'ranks' each holding half of a batch (different numbers of target tokens) and scaling
    their local token mean by n_local * world / n_global: the mean over ranks of their losses and
    of their gradients (what data parallelism averages) equals the full batch's token mean on one
    rank, i.e. 2 ranks x b == 1 rank x 2b.

    In paired mode the route segments are the two copies of the batch, not rows: a rank's forward
    over cat(half, half) routes its rows with pass 0 then pass 1 of the same step, exactly as the
    full batch's cat(full, full) routes those rows, so the halves see the same routes (a row's
    output depends only on its own tokens: dropout off, causal attention, right padding)."""
    model, router, cfg = _build("lora", "none")
    full = _batch()
    out_full, g_full = _run(model, full, router, cfg, consistency)
    ref_loss, _, _ = _reference(model, full, router, "stopgrad")
    _close(out_full.loss, ref_loss)   # the full batch is the mean over all its target tokens

    world = 2
    halves = [_rows(full, [0, 1], trim=True), _rows(full, [2, 3], trim=True)]
    n_local = [count_target_tokens(h["labels"]) for h in halves]
    n_global = count_target_tokens(full["labels"])
    assert n_local == [6 + 4, 3 + 3] and sum(n_local) == n_global   # unequal shares
    outs, grads = [], []
    for half, n in zip(halves, n_local, strict=True):
        out, g = _run(model, half, router, cfg, consistency, loss_scale=n * world / n_global)
        outs.append(out)
        grads.append(g)
    for field in ("loss", "task_loss", "consistency"):
        _close(
            sum(float(getattr(o, field).detach()) for o in outs) / world, getattr(out_full, field)
        )
    _grads_close({k: (grads[0][k] + grads[1][k]) / world for k in g_full}, g_full)
    # Without the scale, the plain mean of the two local means would be wrong here.
    unscaled = (float(outs[0].loss.detach()) / (n_local[0] * world / n_global)
                + float(outs[1].loss.detach()) / (n_local[1] * world / n_global)) / world
    assert not math.isclose(unscaled, float(out_full.loss.detach()), rel_tol=1e-3)
