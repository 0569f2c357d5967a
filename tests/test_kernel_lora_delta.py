"""The Triton routed LoRA delta (adamix_ds/kernels/lora_delta.py) against float64 torch.

Oracle: ``routed_lora_delta_reference`` (tests/kernel_references.py) evaluated in float64 on the
*same* (already rounded) inputs, differentiated by autograd; the reference itself is checked
against ``LoRAExperts.forward``. Without a GPU the kernel runs under the Triton interpreter, which
must be switched on before triton is first imported (Triton wraps its own library then):
``tests/conftest.py`` does that. With a GPU the same cases run compiled on CUDA, plus bfloat16.

Tolerances: the per-dtype normwise table of ``tests/kernel_tolerance.py``.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed; the kernel cannot run")

from adamix_ds.experts import LoRAExperts
from adamix_ds.kernels import lora_delta, triton_takes, use_kernels
from adamix_ds.kernels.lora_delta import routed_lora_delta
from tests.kernel_references import routed_lora_delta_reference
from tests.kernel_tolerance import assert_close_to_float64, skip_unless_kernels_run

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
skip_unless_kernels_run(lora_delta.INTERPRETED)

DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
SCALE = 2.0   # alpha / r


_close = assert_close_to_float64  # tests/kernel_tolerance.py: the per-dtype table


def _experts(n: int, d_in: int, d_out: int, r: int, m_a: int, m_b: int, seed: int = 0,
             lead: tuple[int, ...] = ()) -> tuple[torch.Tensor, ...]:
    """float64 x (n, *lead, d_in), A (m_a, d_in, r), B (m_b, r, d_out), with O(1) outputs.

    B is random (not LoRA's zero init) so that dx and dA are not trivially zero.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *lead, d_in, generator=g, dtype=torch.float64)
    a = (torch.rand(m_a, d_in, r, generator=g, dtype=torch.float64) * 2 - 1) / d_in ** 0.5
    b = torch.randn(m_b, r, d_out, generator=g, dtype=torch.float64) / r ** 0.5
    return x, a, b


def _check_case(n: int, d_in: int, d_out: int, r: int, route: tuple[tuple[int, int], ...],
                m_a: int, m_b: int, dtype: torch.dtype) -> None:
    """Output and dx, dA, dB of the kernel vs the float64 reference; unrouted experts get 0."""
    x, a, b = _experts(n, d_in, d_out, r, m_a, m_b)
    go = torch.randn(n, d_out, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = [t.to(DEVICE, dtype).requires_grad_() for t in (x, a, b)]
    refs = [t.to(dtype).double().requires_grad_() for t in (x, a, b)]   # same rounded inputs
    got = routed_lora_delta(*ours, route, SCALE)
    got.backward(go.to(DEVICE, dtype))
    want = routed_lora_delta_reference(*refs, route, SCALE)
    want.backward(go.to(dtype).double())
    assert got.dtype == dtype and got.shape == (n, d_out)
    _close(got.cpu(), want.detach(), dtype, "delta")
    for name, t, ref in zip(("dx", "dA", "dB"), ours, refs, strict=True):
        _close(t.grad.cpu(), ref.grad, dtype, name)
    for name, t, used in (("dA", ours[1], {j for j, _ in route}),
                          ("dB", ours[2], {k for _, k in route})):
        for i in set(range(t.shape[0])) - used:
            assert torch.count_nonzero(t.grad[i]) == 0, f"{name}[{i}] of an unrouted expert"


# rows 1 / 37 / 130 are not multiples of any row block; 130 = 2 x 65 puts a segment boundary
# inside a block; (200, 136, r=5) is not a multiple of any tile either (masks on every axis)
CASES = {
    "n1-r4-one-seg": (1, 768, 768, 4, ((2, 1),), 4, 4),
    "n37-r8-shared-up": (37, 768, 1024, 8, ((1, 0),), 4, 1),
    "n130-r16-two-seg-shared-up": (130, 1024, 768, 16, ((1, 0), (3, 0)), 4, 1),
    "n38-r64-two-seg": (38, 1024, 1024, 64, ((0, 2), (3, 1)), 4, 4),
    "n37-r48": (37, 768, 768, 48, ((2, 3),), 4, 4),
    "odd-dims-shared-down": (22, 200, 136, 5, ((0, 1), (0, 2)), 1, 3),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES), ids=str)
def test_delta_and_grads_match_float64_reference(case: str, dtype: torch.dtype) -> None:
    _check_case(*CASES[case], dtype=dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpt2_large_and_xl_widths(dtype: torch.dtype) -> None:
    _check_case(37, 1280, 1600, 16, ((1, 2),), 3, 3, dtype)
    _check_case(26, 1600, 1280, 64, ((0, 0), (2, 0)), 3, 1, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_c_attn_q_and_v_slices_in_place(dtype: torch.dtype) -> None:
    """GPT-2's fused c_attn: out (B, T, 3d) = x @ W, then Q += delta_q, V += delta_v in place.

    K is untouched bit for bit, ``out`` is the caller's tensor, and the gradients reach x and W
    through the in-place updates (autograd's CopySlices over the flattened view).
    """
    d, r = 768, 4
    x, a_q, b_q = _experts(4, d, d, r, 3, 1, seed=2, lead=(3,))          # (B=4, T=3, d)
    _, a_v, b_v = _experts(1, d, d, r, 3, 1, seed=3)
    w = torch.randn(d, 3 * d, generator=torch.Generator().manual_seed(4),
                    dtype=torch.float64) / d ** 0.5
    go = torch.randn(4, 3, 3 * d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    routes = {"q": ((2, 0), (0, 0)), "v": ((1, 0), (1, 0))}

    def add(out: torch.Tensor, xx: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
            route: tuple[tuple[int, int], ...], cols: tuple[int, int],
            triton_path: bool) -> torch.Tensor:
        if triton_path:
            return routed_lora_delta(xx, a, b, route, SCALE, out=out, out_slice=cols)
        out[..., cols[0]:cols[1]] += routed_lora_delta_reference(xx, a, b, route, SCALE)
        return out

    def run(ts: list[torch.Tensor], triton_path: bool) -> tuple[torch.Tensor, torch.Tensor]:
        xx, ww, aq, bq, av, bv = ts
        base = xx @ ww
        k_before = base[..., d:2 * d].detach().clone()
        out = add(base, xx, aq, bq, routes["q"], (0, d), triton_path)
        out = add(out, xx, av, bv, routes["v"], (2 * d, 3 * d), triton_path)
        assert out is base
        return out, k_before

    leaves = (x, w, a_q, b_q, a_v, b_v)
    ours = [t.to(DEVICE, dtype).requires_grad_() for t in leaves]
    refs = [t.to(dtype).double().requires_grad_() for t in leaves]
    got, k_before = run(ours, True)
    assert torch.equal(got[..., d:2 * d].detach(), k_before), "K slice changed"
    got.backward(go.to(DEVICE, dtype))
    want, _ = run(refs, False)
    want.backward(go.to(dtype).double())
    _close(got.detach().cpu(), want.detach(), dtype, "c_attn out")
    for name, t, ref in zip(("dx", "dW", "dA_q", "dB_q", "dA_v", "dB_v"), ours, refs, strict=True):
        _close(t.grad.cpu(), ref.grad, dtype, name)


@pytest.mark.parametrize("needs", ["x", "ab", "xab", "none"])
def test_partial_grads_and_no_grad(needs: str) -> None:
    """Frozen x (weight grads only: the h-only kernel path), frozen experts, and no_grad."""
    x, a, b = _experts(16, 64, 48, 4, 2, 2, seed=6)
    route = ((1, 0), (0, 1))
    ours = [
        t.float().to(DEVICE).requires_grad_(n in needs)
        for t, n in zip((x, a, b), "xab", strict=True)
    ]
    refs = [t.float().double().requires_grad_() for t in (x, a, b)]
    with torch.set_grad_enabled(needs != "none"):
        got = routed_lora_delta(*ours, route, SCALE)
    want = routed_lora_delta_reference(*refs, route, SCALE)
    _close(got.detach().cpu(), want.detach(), torch.float32, "delta")
    if needs == "none":
        assert got.grad_fn is None
        return
    got.sum().backward()
    want.sum().backward()
    for t, ref, n in zip(ours, refs, "xab", strict=True):
        if n in needs:
            _close(t.grad.cpu(), ref.grad, torch.float32, f"d{n}")
        else:
            assert t.grad is None


def test_column_groups_split_the_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU's column split (grid axis 1, h written once) forced on the interpreter too."""
    monkeypatch.setattr(lora_delta, "_column_groups", lambda *args: 2)
    _check_case(5, 96, 1000, 8, ((0, 1),), 2, 2, torch.float32)
    x, a, b = (t.float().to(DEVICE) for t in _experts(6, 96, 1000, 8, 2, 2, seed=7))
    out = torch.zeros(6, 1400, device=DEVICE)
    routed_lora_delta(x, a, b, ((1, 0), (0, 1)), SCALE, out=out, out_slice=(300, 1300))
    want = routed_lora_delta_reference(x.double().cpu(), a.double().cpu(), b.double().cpu(),
                                       ((1, 0), (0, 1)), SCALE)
    _close(out[:, 300:1300].cpu(), want, torch.float32, "split out slice")
    assert torch.count_nonzero(out[:, :300]) == 0 and torch.count_nonzero(out[:, 1300:]) == 0


def test_reference_is_lora_experts_forward() -> None:
    """The torch reference computes LoRAExperts' routed update, the delta and the slice add."""
    experts = LoRAExperts(12, 9, 3, num_experts=4, share="up", scale=SCALE).double()
    torch.nn.init.normal_(experts.lora_b)
    x = torch.randn(4, 5, 12, dtype=torch.float64)
    with use_kernels("torch"):
        for route in (((2, 0),), ((1, 0), (3, 0))):
            want = experts(x, route)
            args = (x, experts.lora_a, experts.lora_b, route, SCALE)
            torch.testing.assert_close(routed_lora_delta_reference(*args), want, rtol=0, atol=0)
            out = torch.ones(4, 5, 20, dtype=torch.float64)
            experts.add_into(out, x, route, start=11)
            torch.testing.assert_close(out[..., 11:], 1 + want, rtol=0, atol=0)
            assert torch.all(out[..., :11] == 1)


def test_dispatch_decides_once() -> None:
    """triton_takes: torch mode never, auto only on CUDA with one dtype, triton mode or an error;
    float64 (no kernel dtype) stays in torch under auto and is refused under triton."""
    x, a, b = (t.float().to(DEVICE) for t in _experts(4, 8, 6, 2, 2, 1))
    with use_kernels("torch"):
        assert not triton_takes(x, a, b, rank=2)
    with use_kernels("auto"):
        assert triton_takes(x, a, b, rank=2) is CUDA
        assert not triton_takes(x, a.double(), b, rank=2)     # autocast-like mix stays in torch
        assert not triton_takes(x.double(), a.double(), b.double(), rank=2)
    with use_kernels("triton"):
        assert triton_takes(x, a, b, rank=2)
        with pytest.raises(RuntimeError, match="differ in dtype"):
            triton_takes(x, a.double(), b, rank=2)
        with pytest.raises(RuntimeError, match="float64"):
            triton_takes(x.double(), a.double(), b.double(), rank=2)
        with pytest.raises(RuntimeError, match="above"):
            triton_takes(x, a, b, rank=256)
        with pytest.raises(RuntimeError, match="not contiguous"):
            triton_takes(x, a, b, rank=2, out=torch.zeros(10, 4, device=DEVICE).T)


def test_bad_arguments_are_refused() -> None:
    x, a, b = (t.float() for t in _experts(4, 8, 6, 2, 2, 1))
    with pytest.raises(IndexError, match="route pair"):
        routed_lora_delta(x, a, b, ((2, 0),), SCALE)    # kernel would read OOB
    with pytest.raises(IndexError, match="route pair"):
        routed_lora_delta(x, a, b, ((0, 1),), SCALE)
    with pytest.raises(ValueError, match="segments"):
        routed_lora_delta(x[:3], a, b, ((0, 0), (1, 0)), SCALE)
    with pytest.raises(ValueError, match="out_slice"):
        routed_lora_delta(x, a, b, ((0, 0),), SCALE, out=torch.zeros(4, 10), out_slice=(5, 10))
    with pytest.raises(ValueError, match="d_in"):
        routed_lora_delta(x[:, :5], a, b, ((0, 0),), SCALE)
    with pytest.raises(TypeError, match="differ"):
        routed_lora_delta(x, a.double(), b, ((0, 0),), SCALE)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="bfloat16 needs the compiled kernel on a CUDA GPU "
                                     "(the interpreter's bf16 arithmetic is not the GPU's)")
def test_cuda_bf16_auto_dispatch_and_decode_shapes() -> None:
    """On CUDA the default dispatch is Triton; bf16 runs tensor-core dots (h rounded to bf16)."""
    assert not lora_delta.INTERPRETED, "run without TRITON_INTERPRET to test the compiled kernel"
    x, a, b = _experts(8, 1024, 1024, 8, 4, 1, seed=8)
    xs, as_, bs = (t.cuda().bfloat16() for t in (x, a, b))
    route = ((3, 0), (1, 0))
    with use_kernels("auto"):
        assert triton_takes(xs, as_, bs, rank=8)
    got = routed_lora_delta(xs, as_, bs, route, SCALE)
    want = routed_lora_delta_reference(*(t.double() for t in (xs, as_, bs)), route, SCALE)
    _close(got.cpu(), want.cpu(), torch.bfloat16, "bf16 delta")
    for n in (1, 2, 4096):                                   # decode (column split) to training
        _check_case(n, 1024, 768, 16, ((1, 0), (2, 0)) if n % 2 == 0 else ((1, 0),), 4, 1,
                    torch.bfloat16)
