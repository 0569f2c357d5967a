"""The per-chunk loss math against plain autograd in float64: ``F.cross_entropy`` for the
smoothed NLL and the consistency-KL oracle of ``tests/loss_references.py`` for the KL terms."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adamix_ds.fused_lm_loss import MAX_CHUNK_ROWS, MIN_CHUNK_ROWS, default_chunk_rows
from adamix_ds.loss_terms import (
    adamix_chunk_,
    consistency_terms,
    log_softmax_,
    smoothed_nll,
    smoothed_nll_grad_,
)
from tests.loss_references import consistency_kl_reference


def _logits(rows: int = 6, vocab: int = 11, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    zp = 2.0 * torch.randn(rows, vocab, generator=g, dtype=torch.float64)
    return zp, zp + torch.randn(rows, vocab, generator=g, dtype=torch.float64)


def test_log_softmax_in_place() -> None:
    z, _ = _logits()
    want = F.log_softmax(z, dim=-1)
    got = log_softmax_(z)
    assert got.data_ptr() == z.data_ptr()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_smoothed_nll_and_gradient_match_cross_entropy(eps: float) -> None:
    z, _ = _logits()
    targets = torch.tensor([0, 3, 10, 3, 5, 1])
    z_ref = z.clone().requires_grad_()
    want = F.cross_entropy(z_ref, targets, reduction="none", label_smoothing=eps)
    (want_grad,) = torch.autograd.grad(want.sum(), z_ref)
    log_p = log_softmax_(z.clone())
    torch.testing.assert_close(smoothed_nll(log_p, targets, eps), want.detach(),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(smoothed_nll_grad_(log_p, targets, eps), want_grad,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["stopgrad", "symmetric"])
@pytest.mark.parametrize(("grad_p", "grad_q"), [(True, True), (True, False), (False, True),
                                                (False, False)])
def test_consistency_terms_match_autograd(mode: str, grad_p: bool, grad_q: bool) -> None:
    zp, zq = _logits()
    rows = zp.shape[0]
    ref_p, ref_q = zp.clone().requires_grad_(), zq.clone().requires_grad_()
    # the oracle is 0.5 * mean over rows; the terms are per-row sums of both KLs
    ref = consistency_kl_reference(ref_p, ref_q, mode=mode) * 2 * rows
    want_gp, want_gq = torch.autograd.grad(ref, (ref_p, ref_q))
    log_p, log_q = F.log_softmax(zp, -1), F.log_softmax(zq, -1)
    want_rows = ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)
    both, g_p, g_q = consistency_terms(log_p, log_q, mode == "symmetric", grad_p, grad_q)
    torch.testing.assert_close(both, want_rows, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(both.sum(), ref.detach(), rtol=1e-12, atol=1e-12)
    for got, want, asked in ((g_p, want_gp, grad_p), (g_q, want_gq, grad_q)):
        if asked:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        else:
            assert got is None


@pytest.mark.parametrize("mode", ["stopgrad", "symmetric"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("two_passes", [False, True])
def test_adamix_chunk_matches_autograd(mode: str, eps: float, in_place: bool,
                                       two_passes: bool) -> None:
    """Values and the gradients of task_scale * sum(nll) + kl_scale * sum(both), written into
    fresh buffers or over the logits themselves, against F.cross_entropy + the KL oracle."""
    z1, z2 = _logits(seed=7)
    targets = torch.tensor([0, 3, 10, 3, 5, 1])
    task_scale, kl_scale = 0.3, 0.7
    r1, r2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    nll_want = F.cross_entropy(r1, targets, reduction="none", label_smoothing=eps)
    total = task_scale * nll_want.sum()
    if two_passes:
        both_want = consistency_kl_reference(r1, r2, mode=mode) * 2 * z1.shape[0]
        total = total + kl_scale * both_want
    grads = torch.autograd.grad(total, (r1, r2), allow_unused=True)

    a, b = z1.clone(), z2.clone()
    out_1 = a if in_place else torch.empty_like(a)
    out_2 = (b if in_place else torch.empty_like(b)) if two_passes else None
    nll, both = adamix_chunk_(a, b if two_passes else None, targets, eps, mode == "symmetric",
                              task_scale, kl_scale, out_1, out_2,
                              torch.empty_like(a) if two_passes else None)
    torch.testing.assert_close(nll, nll_want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_1, grads[0], rtol=1e-10, atol=1e-12)
    if two_passes:
        torch.testing.assert_close(both.sum(), both_want.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out_2, grads[1], rtol=1e-10, atol=1e-12)
    else:
        assert both is None


def test_default_chunk_rows_keeps_a_chunk_at_an_eighth_of_the_head() -> None:
    # GPT-2 medium head in float32: 1,024 * 4 / (8 * 4) = 128 rows
    assert default_chunk_rows(50257, 1024, torch.float32) == 128
    # a d = 4,096 head in bf16 (2 bytes) with float32 chunks: 4,096 * 2 / (8 * 4) = 256
    assert default_chunk_rows(128256, 4096, torch.bfloat16) == 256
    # not a power of two: rounded down (d 768 -> 96 -> 64)
    assert default_chunk_rows(50257, 768, torch.float32) == 64
    assert default_chunk_rows(100, 8, torch.float32) == MIN_CHUNK_ROWS
    assert default_chunk_rows(100, 1 << 20, torch.float32) == MAX_CHUNK_ROWS
