"""The chunked fused LM-head loss against the plain computation: logits = h @ W^T, then
``adamix_ds.losses.adamix_loss`` (itself checked against float64 references and gradcheck)."""
from __future__ import annotations

import pytest
import torch

from adamix_ds.losses import adamix_loss, fused_adamix_lm_loss


def _inputs(dtype: torch.dtype, tokens: int = 37, d: int = 24, vocab: int = 53, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h1 = torch.randn(tokens, d, generator=g, dtype=dtype, requires_grad=True)
    h2 = (h1.detach() + 0.3 * torch.randn(tokens, d, generator=g, dtype=dtype)).requires_grad_()
    weight = (0.5 * torch.randn(vocab, d, generator=g, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    labels[::4] = -100  # ignored positions carry no loss and get zero gradient
    return h1, h2, weight, labels


@pytest.mark.parametrize("mode", ["stopgrad", "symmetric"])
@pytest.mark.parametrize("chunk", [1, 8, 1000, None])
@pytest.mark.parametrize("two_passes", [True, False])
def test_values_and_gradients_equal_the_plain_loss(mode: str, chunk: int, two_passes: bool) -> None:
    h1, h2, weight, labels = _inputs(torch.float64)
    plain = adamix_loss(h1 @ weight.T, h2 @ weight.T if two_passes else None, labels, 7.0,
                        smoothing=0.1, mode=mode)
    plain_grads = torch.autograd.grad(plain.loss, (h1, h2, weight), allow_unused=True)
    fused = fused_adamix_lm_loss(h1, h2 if two_passes else None, weight, labels, 7.0,
                                 smoothing=0.1, mode=mode, chunk_tokens=chunk)
    fused_grads = torch.autograd.grad(fused[0], (h1, h2, weight), allow_unused=True)
    for got, want in zip(fused, (plain.loss, plain.task_loss, plain.consistency), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        if want is None:
            assert got is None or torch.count_nonzero(got) == 0
        else:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert torch.count_nonzero(fused_grads[0][::4]) == 0


def test_float32_within_float32_tolerance_and_frozen_head() -> None:
    h1, h2, weight, labels = _inputs(torch.float32, tokens=64, d=32, vocab=300)
    weight.requires_grad_(False)  # the usual case: the LM head is frozen
    plain = adamix_loss(h1 @ weight.T, h2 @ weight.T, labels, 100.0, smoothing=0.1)
    want = torch.autograd.grad(plain.loss, (h1, h2))
    fused = fused_adamix_lm_loss(h1, h2, weight, labels, 100.0, smoothing=0.1, chunk_tokens=16)
    got = torch.autograd.grad(fused[0], (h1, h2))
    torch.testing.assert_close(fused[0], plain.loss, rtol=1e-5, atol=1e-6)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_bad_shapes_name_the_problem() -> None:
    h1, h2, weight, labels = _inputs(torch.float32)
    with pytest.raises(ValueError, match="labels"):
        fused_adamix_lm_loss(h1, h2, weight, labels[:-1], 1.0)
    with pytest.raises(ValueError, match="head of width"):
        fused_adamix_lm_loss(h1[:, :-1], None, weight, labels, 1.0)
    with pytest.raises(ValueError, match="mode"):
        fused_adamix_lm_loss(h1, h2, weight, labels, 1.0, mode="kl")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="peak-memory check needs a GPU")
def test_peak_memory_quarter_of_plain_on_gpu() -> None:
    """At 8 x 512 tokens x 50,257 words the fused loss's peak memory is at most a quarter of the
    plain version's."""
    torch.manual_seed(0)
    tokens, d, vocab = 8 * 512, 1024, 50257
    h1 = torch.randn(tokens, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    h2 = torch.randn(tokens, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(vocab, d, device="cuda", dtype=torch.bfloat16) * 0.02
    labels = torch.randint(0, vocab, (tokens,), device="cuda")

    def peak(fn) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    plain = peak(lambda: adamix_loss(h1 @ weight.T, h2 @ weight.T, labels, 100.0, 0.1).loss)
    fused = peak(lambda: fused_adamix_lm_loss(h1, h2, weight, labels, 100.0, 0.1)[0])
    assert fused * 4 <= plain, (fused, plain)
