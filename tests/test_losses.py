"""Tests for adamix_ds.losses.

Oracles are independent of the code under test: plain Python loops in float64,
``torch.nn.functional.cross_entropy``, hand-derived gradient formulas, and
``torch.autograd.gradcheck``. ``consistency_kl_reference`` (tests/loss_references.py) is checked
against the Python loop before it is used as an oracle for the chunked path.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from adamix_ds.losses import (
    KL_MODES,
    AdaMixLossOutput,
    _row_blocks,
    adamix_loss,
    adamix_loss_stacked,
    consistency_kl,
    label_smoothed_cross_entropy,
)
from tests.loss_references import consistency_kl_reference

IGNORE = -100
LOW_PRECISION = (torch.bfloat16, torch.float16)

# Per-dtype relative tolerances for the *value*:
#   "same_input": chunked vs reference on the very same (rounded) inputs; both
#                 upcast to float32, so only summation order differs.
#   "vs_fp64":    low-precision inputs vs the float64 value of the unrounded
#                 logits; dominated by rounding the logits (bf16 has 8 bits).
VALUE_RTOL: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"same_input": 1e-12, "vs_fp64": 1e-12},
    torch.float32: {"same_input": 1e-5, "vs_fp64": 1e-5},
    torch.float16: {"same_input": 1e-5, "vs_fp64": 1e-2},
    torch.bfloat16: {"same_input": 1e-5, "vs_fp64": 5e-2},
}
# Gradients are written in the inputs' dtype, so they carry its rounding.
GRAD_TOL: dict[torch.dtype, tuple[float, float]] = {  # (rtol, atol)
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-7),
    torch.float16: (2e-3, 1e-6),
    torch.bfloat16: (1.6e-2, 1e-5),
}


# --------------------------------------------------------------------------
# Independent float64 Python oracles
# --------------------------------------------------------------------------
def _py_log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(z - m) for z in row))
    return [z - lse for z in row]


def _py_label_smoothed_ce(
    logits: torch.Tensor, labels: torch.Tensor, eps: float, ignore: int = IGNORE
) -> float:
    rows = logits.double().reshape(-1, logits.shape[-1]).tolist()
    labs = labels.reshape(-1).tolist()
    total, count = 0.0, 0
    for row, y in zip(rows, labs, strict=True):
        if y == ignore:
            continue
        logp = _py_log_softmax(row)
        nll = -logp[y]
        smooth = -sum(logp) / len(logp)
        total += (1.0 - eps) * nll + eps * smooth
        count += 1
    return total / count if count else 0.0


def _py_consistency(lp: torch.Tensor, lq: torch.Tensor, mask: torch.Tensor | None) -> float:
    """mean over masked tokens of 0.5*(sum p log(p/q) + sum q log(q/p))."""
    vocab = lp.shape[-1]
    rows_p = lp.double().reshape(-1, vocab).tolist()
    rows_q = lq.double().reshape(-1, vocab).tolist()
    keep = [True] * len(rows_p) if mask is None else mask.reshape(-1).tolist()
    total, count = 0.0, 0
    for zp, zq, k in zip(rows_p, rows_q, keep, strict=True):
        if not k:
            continue
        logp, logq = _py_log_softmax(zp), _py_log_softmax(zq)
        kl_pq = sum(math.exp(a) * (a - b) for a, b in zip(logp, logq, strict=True))
        kl_qp = sum(math.exp(b) * (b - a) for a, b in zip(logp, logq, strict=True))
        total += 0.5 * (kl_pq + kl_qp)
        count += 1
    return total / count if count else 0.0


def _py_closed_form_grads(
    lp: torch.Tensor, lq: torch.Tensor, mask: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-derived gradients from the spec, token by token, in float64."""
    vocab = lp.shape[-1]
    rows_p = lp.double().reshape(-1, vocab).tolist()
    rows_q = lq.double().reshape(-1, vocab).tolist()
    keep = mask.reshape(-1).tolist()
    n = sum(keep)
    gp, gq = [], []
    for zp, zq, k in zip(rows_p, rows_q, keep, strict=True):
        if not k:
            gp.append([0.0] * vocab)
            gq.append([0.0] * vocab)
            continue
        logp, logq = _py_log_softmax(zp), _py_log_softmax(zq)
        p = [math.exp(a) for a in logp]
        q = [math.exp(b) for b in logq]
        if mode == "stopgrad":
            rp = [pk - qk for pk, qk in zip(p, q, strict=True)]
            rq = [qk - pk for pk, qk in zip(p, q, strict=True)]
        else:
            d = [a - b for a, b in zip(logp, logq, strict=True)]
            kl_pq = sum(pk * dk for pk, dk in zip(p, d, strict=True))
            kl_qp = sum(qk * -dk for qk, dk in zip(q, d, strict=True))
            rp = [pk * (dk - kl_pq) + (pk - qk) for pk, qk, dk in zip(p, q, d, strict=True)]
            rq = [qk * (-dk - kl_qp) + (qk - pk) for pk, qk, dk in zip(p, q, d, strict=True)]
        gp.append([0.5 * g / n for g in rp])
        gq.append([0.5 * g / n for g in rq])
    shape = lp.shape
    return torch.tensor(gp, dtype=torch.float64).reshape(shape), torch.tensor(
        gq, dtype=torch.float64
    ).reshape(shape)


def _pair(
    shape: tuple[int, ...], vocab: int, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated logit tensors (like two stochastic passes of one model)."""
    g = torch.Generator().manual_seed(seed)
    a = 2.0 * torch.randn(*shape, vocab, generator=g, dtype=torch.float64)
    b = a + torch.randn(*shape, vocab, generator=g, dtype=torch.float64)
    return a.to(dtype), b.to(dtype)


def _mask(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(*shape, generator=g) < 0.6
    m.reshape(-1)[0] = True  # at least one token
    m.reshape(-1)[-1] = False  # at least one padding token
    return m


def _labels(
    shape: tuple[int, ...], vocab: int, seed: int, ignore_frac: float = 0.3
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, vocab, shape, generator=g)
    y[torch.rand(*shape, generator=g) < ignore_frac] = IGNORE
    y.reshape(-1)[0] = 1
    return y


# --------------------------------------------------------------------------
# Label-smoothed cross entropy
# --------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_ce_matches_python_loop_with_ignored_tokens(eps: float, chunk: int) -> None:
    logits, _ = _pair((3, 5), 11, seed=1)
    labels = _labels((3, 5), 11, seed=2)
    assert (labels == IGNORE).any()
    got = label_smoothed_cross_entropy(logits, labels, smoothing=eps, chunk_tokens=chunk)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_py_label_smoothed_ce(logits, labels, eps), rel=1e-12)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_ce_matches_torch_label_smoothing_convention(eps: float) -> None:
    # torch's label_smoothing puts eps/V on every class (target included) and
    # averages over non-ignored tokens: the same convention as ours, checked
    # with and without ignored tokens, for value and gradient.
    base, _ = _pair((4, 6), 13, seed=3, dtype=torch.float32)
    for labels in (
        torch.randint(0, 13, (4, 6), generator=torch.Generator().manual_seed(4)),
        _labels((4, 6), 13, seed=5),
    ):
        x1 = base.clone().requires_grad_(True)
        x2 = base.clone().requires_grad_(True)
        ours = label_smoothed_cross_entropy(x1, labels, smoothing=eps, chunk_tokens=5)
        ref = F.cross_entropy(
            x2.reshape(-1, 13), labels.reshape(-1), label_smoothing=eps, ignore_index=IGNORE
        )
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
        ours.backward()
        ref.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-7)


def test_ce_gradcheck_float64() -> None:
    logits, _ = _pair((2, 4), 5, seed=6)
    labels = _labels((2, 4), 5, seed=7)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: label_smoothed_cross_entropy(z, labels, smoothing=0.2, chunk_tokens=3), (logits,)
    )


def test_ce_all_ignored_is_zero_with_zero_grad() -> None:
    logits = torch.randn(2, 3, 7, requires_grad=True)
    labels = torch.full((2, 3), IGNORE)
    loss = label_smoothed_cross_entropy(logits, labels, smoothing=0.1)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_ce_low_precision_upcasts(dtype: torch.dtype) -> None:
    logits, _ = _pair((5, 3), 40, seed=8, dtype=dtype)
    labels = _labels((5, 3), 40, seed=9)
    got = label_smoothed_cross_entropy(logits, labels, smoothing=0.1, chunk_tokens=4)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(
        _py_label_smoothed_ce(logits, labels, 0.1), rel=VALUE_RTOL[dtype]["same_input"]
    )


def test_ce_rejects_out_of_range_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        label_smoothed_cross_entropy(torch.randn(3, 4), torch.tensor([0, -1, 2]))


# --------------------------------------------------------------------------
# Consistency KL: value
# --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", KL_MODES)
def test_consistency_zero_for_identical_inputs(mode: str) -> None:
    a, _ = _pair((3, 4), 9, seed=10, dtype=torch.float32)
    a.requires_grad_(True)
    loss = consistency_kl(a, a.detach().clone(), mode=mode, chunk_tokens=5)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


def test_consistency_symmetric_in_arguments() -> None:
    a, b = _pair((3, 5), 8, seed=11)
    m = _mask((3, 5), seed=12)
    assert consistency_kl(a, b, m, chunk_tokens=4).item() == pytest.approx(
        consistency_kl(b, a, m, chunk_tokens=4).item(), rel=1e-13
    )


@pytest.mark.parametrize("use_mask", [False, True])
def test_reference_matches_python_loop(use_mask: bool) -> None:
    # Validates the oracle itself before it is used below.
    a, b = _pair((3, 7), 6, seed=13)
    m = _mask((3, 7), seed=14) if use_mask else None
    for mode in KL_MODES:
        assert consistency_kl_reference(a, b, m, mode=mode).item() == pytest.approx(
            _py_consistency(a, b, m), rel=1e-12
        )


@pytest.mark.parametrize("mode", KL_MODES)
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
@pytest.mark.parametrize("shape", [(13,), (3, 5)])
def test_chunked_matches_loop_and_reference(
    mode: str, use_mask: bool, chunk: int, shape: tuple[int, ...]
) -> None:
    a, b = _pair(shape, 10, seed=15 + chunk)
    m = _mask(shape, seed=16) if use_mask else None
    got = consistency_kl(a, b, m, mode=mode, chunk_tokens=chunk)
    assert got.item() == pytest.approx(_py_consistency(a, b, m), rel=1e-12)
    torch.testing.assert_close(
        got, consistency_kl_reference(a, b, m, mode=mode), rtol=1e-12, atol=0
    )


@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
@pytest.mark.parametrize("mode", KL_MODES)
def test_low_precision_value_and_grad(dtype: torch.dtype, mode: str) -> None:
    a64, b64 = _pair((3, 7), 50, seed=17)
    m = _mask((3, 7), seed=18)
    a, b = a64.to(dtype).requires_grad_(True), b64.to(dtype).requires_grad_(True)
    ra, rb = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)

    got = consistency_kl(a, b, m, mode=mode, chunk_tokens=4)
    ref = consistency_kl_reference(ra, rb, m, mode=mode)
    assert got.dtype == torch.float32
    tol = VALUE_RTOL[dtype]
    assert got.item() == pytest.approx(ref.item(), rel=tol["same_input"])
    assert got.item() == pytest.approx(_py_consistency(a, b, m), rel=tol["same_input"])
    assert got.item() == pytest.approx(_py_consistency(a64, b64, m), rel=tol["vs_fp64"])

    got.backward()
    ref.backward()
    rtol, atol = GRAD_TOL[dtype]
    assert a.grad.dtype == dtype and b.grad.dtype == dtype
    torch.testing.assert_close(a.grad, ra.grad, rtol=rtol, atol=atol)
    torch.testing.assert_close(b.grad, rb.grad, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------
# Consistency KL: gradients
# --------------------------------------------------------------------------
def test_symmetric_gradcheck_float64() -> None:
    a, b = _pair((2, 4), 5, seed=19)
    m = _mask((2, 4), seed=20)
    assert (~m).any()
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, y: consistency_kl(x, y, m, mode="symmetric", chunk_tokens=3), (a, b)
    )


@pytest.mark.parametrize("mode", KL_MODES)
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_grads_match_closed_form_and_reference(mode: str, chunk: int) -> None:
    a, b = _pair((3, 5), 7, seed=21)
    m = _mask((3, 5), seed=22)
    x, y = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    consistency_kl(x, y, m, mode=mode, chunk_tokens=chunk).backward()

    want_p, want_q = _py_closed_form_grads(a, b, m, mode)
    torch.testing.assert_close(x.grad, want_p, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(y.grad, want_q, rtol=1e-10, atol=1e-13)

    rx, ry = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    consistency_kl_reference(rx, ry, m, mode=mode).backward()
    torch.testing.assert_close(x.grad, rx.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(y.grad, ry.grad, rtol=1e-10, atol=1e-13)

    # Padding tokens get exactly zero gradient.
    assert torch.all(x.grad[~m] == 0) and torch.all(y.grad[~m] == 0)
    assert x.grad[m].abs().sum() > 0


def test_stopgrad_grad_is_half_p_minus_q_over_n() -> None:
    # Direct, vectorised statement of the stopgrad closed form.
    a, b = _pair((4, 3), 6, seed=23)
    m = _mask((4, 3), seed=24)
    n = int(m.sum())
    x, y = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    consistency_kl(x, y, m, mode="stopgrad", chunk_tokens=2).backward()
    p, q = a.softmax(-1), b.softmax(-1)
    want = 0.5 * (p - q) / n * m.unsqueeze(-1)
    torch.testing.assert_close(x.grad, want, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(y.grad, -want, rtol=1e-12, atol=1e-15)


def test_stopgrad_is_not_the_true_gradient() -> None:
    # Guards against the two modes silently being the same computation.
    a, b = _pair((5,), 4, seed=25)
    grads = {}
    for mode in KL_MODES:
        x = a.clone().requires_grad_(True)
        consistency_kl(x, b, mode=mode).backward()
        grads[mode] = x.grad
    assert not torch.allclose(grads["stopgrad"], grads["symmetric"])


def test_grad_only_for_inputs_that_need_it() -> None:
    a, b = _pair((4,), 5, seed=26)
    x = a.clone().requires_grad_(True)
    consistency_kl(x, b, mode="symmetric").backward()
    assert x.grad is not None and b.grad is None


def test_non_contiguous_inputs() -> None:
    a, b = _pair((6, 4), 5, seed=27)
    x, y = a.transpose(0, 1).requires_grad_(True), b.transpose(0, 1)  # (4, 6, V), non-contiguous
    assert not x.is_contiguous()
    m = _mask((4, 6), seed=28)
    got = consistency_kl(x, y, m, chunk_tokens=3)
    assert got.item() == pytest.approx(_py_consistency(x.detach(), y, m), rel=1e-12)
    got.backward()
    want_p, _ = _py_closed_form_grads(x.detach(), y, m, "stopgrad")
    torch.testing.assert_close(x.grad, want_p, rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------
# Consistency KL: edge cases and validation
# --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", KL_MODES)
@pytest.mark.parametrize("fn", [consistency_kl, consistency_kl_reference])
def test_empty_mask_gives_zero_and_zero_grads(mode: str, fn) -> None:
    x = torch.randn(2, 3, 5, requires_grad=True)
    y = torch.randn(2, 3, 5, requires_grad=True)
    loss = fn(x, y, torch.zeros(2, 3, dtype=torch.bool), mode=mode)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(y.grad, torch.zeros_like(y))


def test_unknown_mode_raises() -> None:
    x = torch.randn(2, 3)
    for fn in (consistency_kl, consistency_kl_reference):
        with pytest.raises(ValueError, match=r"mode.*stopgrad.*symmetric"):
            fn(x, x, mode="js")
    with pytest.raises(ValueError, match="mode"):
        adamix_loss(x, None, torch.tensor([0, 1]), 1.0, mode="js")


def test_shape_mismatch_raises_with_both_shapes() -> None:
    for fn in (consistency_kl, consistency_kl_reference):
        with pytest.raises(ValueError, match=r"logits_p.*\(2, 3\).*logits_q.*\(2, 4\)"):
            fn(torch.randn(2, 3), torch.randn(2, 4))


def test_bad_mask_and_chunk_raise() -> None:
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="mask"):
        consistency_kl(x, x, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        consistency_kl(x, x, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_tokens"):
        consistency_kl(x, x, chunk_tokens=0)


# --------------------------------------------------------------------------
# Combined AdaMix loss
# --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", KL_MODES)
def test_adamix_loss_combines_terms(mode: str) -> None:
    a, b = _pair((3, 4), 9, seed=29)
    labels = _labels((3, 4), 9, seed=30)
    w, eps = 0.7, 0.1
    out = adamix_loss(a, b, labels, consistency_weight=w, smoothing=eps, mode=mode, chunk_tokens=5)
    assert isinstance(out, AdaMixLossOutput)

    task = _py_label_smoothed_ce(a, labels, eps)  # pass 1 only
    cons = _py_consistency(a, b, labels != IGNORE)  # padding excluded
    assert out.task_loss.item() == pytest.approx(task, rel=1e-12)
    assert out.consistency.item() == pytest.approx(cons, rel=1e-12)
    assert out.loss.item() == pytest.approx(task + w * cons, rel=1e-12)


def test_adamix_loss_single_pass_and_grads() -> None:
    a, b = _pair((2, 5), 6, seed=31)
    labels = _labels((2, 5), 6, seed=32)
    x = a.clone().requires_grad_(True)
    out = adamix_loss(x, None, labels, consistency_weight=3.0)
    assert out.consistency.item() == 0.0
    assert out.loss.item() == pytest.approx(_py_label_smoothed_ce(a, labels, 0.0), rel=1e-12)

    # Gradient of the combined loss = CE grad (torch) + w * closed-form consistency grad.
    x = a.clone().requires_grad_(True)
    y = b.clone().requires_grad_(True)
    adamix_loss(x, y, labels, consistency_weight=0.5, smoothing=0.2).loss.backward()
    xr = a.clone().requires_grad_(True)
    F.cross_entropy(
        xr.reshape(-1, 6), labels.reshape(-1), label_smoothing=0.2, ignore_index=IGNORE
    ).backward()
    cons_p, cons_q = _py_closed_form_grads(a, b, labels != IGNORE, "stopgrad")
    torch.testing.assert_close(x.grad, xr.grad + 0.5 * cons_p, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(y.grad, 0.5 * cons_q, rtol=1e-10, atol=1e-13)


def _label_layout(layout: str, shape: tuple[int, int], vocab: int, seed: int) -> torch.Tensor:
    """Labels whose loss-carrying tokens form NLG-like runs, scattered tokens, all or none."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, vocab, shape, generator=g)
    if layout == "runs":          # a context and padding around each sequence's targets
        for i in range(shape[0]):
            start = 1 + i % 3
            y[i, :start] = IGNORE
            y[i, start + 5 + i:] = IGNORE
    elif layout == "scattered":
        y[torch.rand(*shape, generator=g) < 0.5] = IGNORE
    elif layout == "none":
        y[:] = IGNORE
    return y


def _reference_loss_and_grads(a: torch.Tensor, b: torch.Tensor | None, labels: torch.Tensor,
                              w: float, eps: float, mode: str
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Plain autograd in float64: F.cross_entropy + the consistency-KL oracle."""
    x = a.detach().double().requires_grad_()
    y = None if b is None else b.detach().double().requires_grad_()
    vocab = a.shape[-1]
    flat = labels.reshape(-1)
    keep = flat != IGNORE
    if not bool(keep.any()):
        return torch.zeros((), dtype=torch.float64), torch.zeros_like(x), (
            None if y is None else torch.zeros_like(y))
    task = F.cross_entropy(x.reshape(-1, vocab)[keep], flat[keep], label_smoothing=eps)
    loss = task
    if y is not None:
        loss = loss + w * consistency_kl_reference(
            x.reshape(-1, vocab)[keep], y.reshape(-1, vocab)[keep], mode=mode)
    grads = torch.autograd.grad(loss, (x,) if y is None else (x, y))
    return loss.detach(), grads[0], (grads[1] if y is not None else None)


@pytest.mark.parametrize("mode", KL_MODES)
@pytest.mark.parametrize("layout", ["runs", "scattered", "all", "none"])
@pytest.mark.parametrize("reuse_logits", [False, True])
@pytest.mark.parametrize("chunk", [3, 64])
def test_adamix_loss_and_stacked_match_autograd(mode: str, layout: str, reuse_logits: bool,
                                                chunk: int) -> None:
    shape, vocab, w, eps = (4, 12), 7, 100.0, 0.1
    a, b = _pair(shape, vocab, seed=41)
    labels = _label_layout(layout, shape, vocab, seed=42)
    want_loss, want_a, want_b = _reference_loss_and_grads(a, b, labels, w, eps, mode)

    x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
    # reuse_logits overwrites its inputs: hand it copies that join the graph
    xi, yi = (x.clone(), y.clone()) if reuse_logits else (x, y)
    out = adamix_loss(xi, yi, labels, w, smoothing=eps, mode=mode, chunk_tokens=chunk,
                      reuse_logits=reuse_logits)
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), want_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, want_a, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y.grad, want_b, rtol=1e-10, atol=1e-12)

    both = torch.stack([a, b]).requires_grad_()
    stacked = both.clone() if reuse_logits else both
    out = adamix_loss_stacked(stacked, labels, w, smoothing=eps, mode=mode, chunk_tokens=chunk,
                              reuse_logits=reuse_logits)
    (3.0 * out.loss).backward()  # the backward scales the stored gradient by its input
    torch.testing.assert_close(out.loss.detach(), want_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(both.grad[0], 3.0 * want_a, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(both.grad[1], 3.0 * want_b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adamix_loss_low_precision_gradients_within_dtype_tolerance(dtype: torch.dtype) -> None:
    shape, vocab = (3, 10), 50
    a, b = _pair(shape, vocab, seed=43, dtype=dtype)
    labels = _label_layout("runs", shape, vocab, seed=44)
    _, want_a, want_b = _reference_loss_and_grads(a, b, labels, 1.0, 0.1, "stopgrad")
    x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
    adamix_loss(x, y, labels, 1.0, smoothing=0.1, chunk_tokens=4).loss.backward()
    rtol, atol = GRAD_TOL[dtype]
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.double(), want_a, rtol=rtol, atol=atol)
    torch.testing.assert_close(y.grad.double(), want_b, rtol=rtol, atol=atol)


def test_adamix_loss_backward_runs_once() -> None:
    a, b = _pair((2, 3), 5, seed=45)
    x = a.clone().requires_grad_()
    out = adamix_loss(x, b, _labels((2, 3), 5, seed=46), 1.0)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once"):
        out.loss.backward()


def test_row_blocks_cover_rows_and_mark_contiguous_ranges() -> None:
    rows = torch.tensor([*range(2, 40), 50, 52, 54, *range(60, 100)])
    blocks = _row_blocks(rows, chunk=16)
    assert [i for s, e, _ in blocks for i in range(s, e)] == list(range(rows.numel()))
    assert all(e - s <= 16 for s, e, _ in blocks)
    for s, e, first in blocks:
        if first is not None:
            assert rows[s:e].tolist() == list(range(first, first + e - s))
    assert all(first is not None for *_, first in blocks)  # runs here average > 16 rows
    scattered = torch.arange(0, 200, 2)  # runs of one row: gathered, fixed chunks
    assert {first for *_, first in _row_blocks(scattered, chunk=16)} == {None}
    assert _row_blocks(torch.tensor([], dtype=torch.int64), chunk=8) == []


# --------------------------------------------------------------------------
# Memory: what is saved for backward, and how big the float32 temporaries get
# --------------------------------------------------------------------------
def _saved_for_backward(fn) -> list[torch.Tensor]:
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


@pytest.mark.parametrize("mode", KL_MODES)
@pytest.mark.parametrize("reuse_logits", [False, True])
def test_saved_for_backward_is_one_logits_sized_gradient_per_input(mode: str,
                                                                   reuse_logits: bool) -> None:
    tokens, vocab = 48, 32
    x = torch.randn(tokens, vocab, dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn(tokens, vocab, dtype=torch.bfloat16, requires_grad=True)
    labels = _labels((tokens,), vocab, seed=33)
    inputs = {x.data_ptr(), y.data_ptr()}
    xs, ys = (x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_())

    saved = _saved_for_backward(
        lambda: adamix_loss(xs if reuse_logits else x, ys if reuse_logits else y, labels, 1.0,
                            smoothing=0.1, mode=mode, chunk_tokens=8, reuse_logits=reuse_logits)
    )
    assert saved, "hook saw nothing: the check would be vacuous"
    big = [t for t in saved if t.numel() > tokens]
    # One gradient per input, in the logits' dtype (never a (tokens, V) float32 tensor) ...
    assert len(big) == 2
    for t in big:
        assert t.shape == (tokens, vocab) and t.dtype == torch.bfloat16
    # ... held in the logits' own storage with reuse_logits, in fresh buffers without.
    if reuse_logits:
        assert {t.data_ptr() for t in big} == {xs.data_ptr(), ys.data_ptr()}
    else:
        assert not ({t.data_ptr() for t in big} & inputs)

    # Teeth: the plain-autograd reference does save (N, V) float32 tensors.
    ref_saved = _saved_for_backward(lambda: consistency_kl_reference(x, y, mode=mode))
    assert any(t.dtype == torch.float32 and t.numel() == tokens * vocab for t in ref_saved)


class _Float32PeakRecorder(TorchDispatchMode):
    """Records the largest float32 tensor produced by any op while active."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.max_numel = max(self.max_numel, t.numel())
        return out


@pytest.mark.parametrize("mode", KL_MODES)
def test_float32_temporaries_are_bounded_by_chunk(mode: str) -> None:
    tokens, vocab, chunk = 64, 32, 8
    x = torch.randn(tokens, vocab, dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn(tokens, vocab, dtype=torch.bfloat16, requires_grad=True)
    labels = _labels((tokens,), vocab, seed=34)

    rec = _Float32PeakRecorder()
    with rec:
        out = adamix_loss(x, y, labels, 1.0, smoothing=0.1, mode=mode, chunk_tokens=chunk)
        out.loss.backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16
    assert 0 < rec.max_numel <= chunk * vocab

    # Teeth: the unchunked reference does create (tokens, V) float32 tensors.
    rec_ref = _Float32PeakRecorder()
    with rec_ref:
        consistency_kl_reference(x, y, mode=mode).backward()
    assert rec_ref.max_numel >= tokens * vocab
