"""The fused Triton routed Houlsby adapter (adamix_ds/kernels/routed_adapter.py) against float64.

Oracle: ``routed_adapter_reference`` (tests/kernel_references.py) evaluated in float64 on the
*same* (already rounded) inputs and differentiated by autograd; the reference itself is checked
against ``AdapterExperts.forward``. Without a GPU the kernels run under the Triton interpreter,
which must be switched on before triton is first imported: ``tests/conftest.py`` does that. With
a GPU the same cases run compiled on CUDA, plus bfloat16.

Tolerances: the per-dtype normwise table of ``tests/kernel_tolerance.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed; the kernels cannot run")

from adamix_ds.experts import AdapterExperts
from adamix_ds.kernels import routed_adapter as ra
from adamix_ds.kernels import triton_takes, use_kernels
from adamix_ds.kernels.routed_adapter import LaunchConfig, gpu_config, routed_adapter
from tests.kernel_references import routed_adapter_reference
from tests.kernel_tolerance import assert_close_to_float64, skip_unless_kernels_run

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
skip_unless_kernels_run(ra.INTERPRETED)

F32, F16 = torch.float32, torch.float16
NAMES = ("x", "down_weight", "down_bias", "up_weight", "up_bias")


_close = assert_close_to_float64  # tests/kernel_tolerance.py: the per-dtype table


def _inputs(lead: tuple[int, ...], d: int, b: int, n_down: int, n_up: int,
            seed: int = 0) -> list[torch.Tensor]:
    """float64 x (*lead, d) and stacked parameters scaled so that h, y and every gradient are O(1)
    (Houlsby's near-zero init would make the branch, and the test, vanish next to the residual)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*lead, d, generator=g, dtype=torch.float64),
            torch.randn(n_down, d, b, generator=g, dtype=torch.float64) / d ** 0.5,
            torch.randn(n_down, b, generator=g, dtype=torch.float64) * 0.5,
            torch.randn(n_up, b, d, generator=g, dtype=torch.float64) / b ** 0.5,
            torch.randn(n_up, d, generator=g, dtype=torch.float64) * 0.5]


def _check(lead: tuple[int, ...], d: int, b: int, route: tuple[tuple[int, int], ...],
           n_down: int, n_up: int, activation: str, dtype: torch.dtype,
           config: LaunchConfig | None = None) -> None:
    """y and all five gradients vs the float64 reference; unrouted experts get exactly 0."""
    base = _inputs(lead, d, b, n_down, n_up)
    go = torch.randn(*lead, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = [t.to(DEVICE, dtype).requires_grad_() for t in base]
    refs = [t.to(dtype).double().requires_grad_() for t in base]   # the same rounded inputs
    with use_kernels("triton"):
        assert triton_takes(ours[0], *ours[1:], rank=b), "the case must run the kernels"
    got = routed_adapter(*ours, route, activation, config=config)
    got.backward(go.to(DEVICE, dtype))
    want = routed_adapter_reference(*refs, route, activation)
    want.backward(go.to(dtype).double())
    assert got.dtype == dtype and got.shape == ours[0].shape
    _close(got.detach().cpu(), want.detach(), dtype, "y")
    for name, t, ref in zip(NAMES, ours, refs, strict=True):
        assert t.grad.dtype == dtype and t.grad.shape == t.shape
        _close(t.grad.cpu(), ref.grad, dtype, f"d{name}")
    for side, used in ((slice(1, 3), {j for j, _ in route}), (slice(3, 5), {k for _, k in route})):
        for name, t in zip(NAMES[side], ours[side], strict=True):
            unused = [e for e in range(t.shape[0]) if e not in used]
            assert torch.count_nonzero(t.grad[unused]) == 0, f"d{name} leaked into {unused}"


# (leading dims, d, bottleneck, route, (M_down, M_up), activation, dtype). Rows 1 / 37 / 130 are
# not multiples of any row block; 2 x 65 makes the segment boundary fall inside a row block.
CASES = {
    "rows1-b4-gelu_tanh": ((1,), 768, 4, ((2, 1),), (4, 4), "gelu_tanh", F32),
    "rows37-b48-relu-fp16": ((37,), 1024, 48, ((0, 3),), (4, 4), "relu", F16),
    "rows130-2seg-b64-gelu": ((2, 65), 768, 64, ((1, 2), (3, 0)), (4, 4), "gelu", F32),
    "rows130-2seg-shared_up-b16-fp16": ((2, 65), 1024, 16, ((1, 0), (3, 0)), (4, 1), "gelu_tanh",
                                        F16),
    "rows74-2seg-shared_down-b8-relu": ((2, 37), 1024, 8, ((0, 2), (0, 1)), (1, 4), "relu", F32),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_reference(case: str) -> None:
    lead, d, b, route, (n_down, n_up), act, dtype = CASES[case]
    _check(lead, d, b, route, n_down, n_up, act, dtype)


@pytest.mark.parametrize("dtype", [F32, F16])
def test_gpu_tiles_odd_width(dtype: torch.dtype) -> None:
    """The GPU tile sizes (the interpreter defaults to larger ones), d = 200 not a multiple of the
    64-wide column tiles, the same expert pair on both segments."""
    _check((2, 37), 200, 48, ((3, 1), (3, 1)), 4, 4, "gelu", dtype, gpu_config(48, dtype))


def test_row_split_weight_reduction() -> None:
    """Weight gradients reduced over 4 row splits of 16-row blocks: 65 rows per segment are
    5 blocks, split 32 + 32 + 1 + an empty split that must contribute zeros."""
    _check((2, 65), 200, 8, ((0, 1), (2, 3)), 4, 4, "gelu_tanh", F32,
           LaunchConfig(block_m=16, block_k=64, block_n=64, block_b=16, splits=4))


def test_three_segments() -> None:
    """An ensemble-style route with S = 3 (two launches: segments 0-1, then 2)."""
    _check((6, 5), 200, 4, ((0, 1), (1, 1), (2, 0)), 3, 2, "relu", F32)


@pytest.mark.slow
@pytest.mark.parametrize("d,b,act,dtype,n_up", [(1280, 64, "gelu_tanh", F32, 4),
                                                (1600, 48, "gelu", F16, 1)])
def test_wide_models(d: int, b: int, act: str, dtype: torch.dtype, n_up: int) -> None:
    """GPT-2 large / XL widths, paired segments."""
    _check((2, 65), d, b, ((1, 0), (2, n_up - 1)), 4, n_up, act, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="bfloat16 needs a GPU: the interpreter's bf16 arithmetic "
                                     "is not faithful")
@pytest.mark.parametrize("act", ["relu", "gelu", "gelu_tanh"])
def test_bfloat16_cuda(act: str) -> None:
    _check((2, 65), 1024, 64, ((1, 2), (3, 0)), 4, 4, act, torch.bfloat16)


# Compiles (no launch) the three kernels for sm_90 in a process without the interpreter: it catches
# what the interpreter accepts but a GPU build rejects (dot tiles < 16, mixed-dtype dot operands,
# non-constexpr control flow). The divisibility hints are what Triton itself derives at launch
# for 16-aligned pointers and d.
AOT_SCRIPT = r"""
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import adamix_ds.kernels.routed_adapter as ra
assert not ra.INTERPRETED
FP32_BUFFERS = {"h_ptr", "dh_ptr", "pwd_ptr", "pwu_ptr", "pbu_ptr"}
for dtype, dt, b in ((torch.bfloat16, "bf16", 64), (torch.float16, "fp16", 8),
                     (torch.float32, "fp32", 64)):
    cfg = ra.gpu_config(b, dtype)
    common = dict(ACT=2, UPCAST=False, INPUT_PRECISION=ra._input_precision(dtype),
                  BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_B=cfg.block_b)
    for kernel, extra in ((ra._fwd_kernel, dict(SAVE_H=True, BLOCK_K=cfg.block_k)),
                          (ra._bwd_rows_kernel, dict(COMPUTE_DX=True)),
                          (ra._bwd_weights_kernel, {})):
        consts = {**common, **extra}
        sig = {n: "constexpr" if n in consts else
               ("*fp32" if n in FP32_BUFFERS else "*" + dt) if n.endswith("_ptr") else "i32"
               for n in kernel.arg_names}
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names)
                 if n.endswith("_ptr") or n == "D"}
        triton.compile(ASTSource(kernel, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": cfg.num_warps})
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90() -> None:
    pytest.importorskip("triton.backends.nvidia", reason="triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", AOT_SCRIPT], cwd=Path(__file__).parents[1],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


def test_partial_grads_and_no_grad() -> None:
    """Frozen experts (dx only), frozen input (weight grads only, no dx) and a no-grad forward
    (no saved pre-activation) each match the reference."""
    base = _inputs((37,), 200, 16, 2, 2)
    route = ((1, 0),)
    go = torch.randn(37, 200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want_in = [t.clone().requires_grad_() for t in base]
    want = routed_adapter_reference(*want_in, route, "gelu")
    want.backward(go)
    for trainable in ({0}, {1, 2, 3, 4}):
        ours = [t.float().to(DEVICE).requires_grad_(i in trainable) for i, t in enumerate(base)]
        routed_adapter(*ours, route, "gelu").backward(go.float().to(DEVICE))
        for i, (t, ref) in enumerate(zip(ours, want_in, strict=True)):
            if i in trainable:
                _close(t.grad.cpu(), ref.grad, F32, f"d{NAMES[i]}")
            else:
                assert t.grad is None
    with torch.no_grad():
        got = routed_adapter(*[t.float().to(DEVICE) for t in base], route, "gelu")
    _close(got.cpu(), want.detach(), F32, "y (no grad)")


@pytest.mark.parametrize("share", ["none", "up", "down"])
@pytest.mark.parametrize("act", ["relu", "gelu", "gelu_tanh"])
def test_reference_is_adapter_experts(act: str, share: str) -> None:
    """The oracle computes what the library's module computes, for one and two segments."""
    torch.manual_seed(0)
    experts = AdapterExperts(12, 3, 4, share, act).double()
    with torch.no_grad():
        for p in experts.parameters():
            p.normal_()
    h = torch.randn(4, 5, 12, dtype=torch.float64)
    params = (experts.down_weight, experts.down_bias, experts.up_weight, experts.up_bias)
    last_down, last_up = experts.num_down - 1, experts.num_up - 1
    for route in (((last_down, 0),), ((0, last_up), (last_down, 0))):
        torch.testing.assert_close(routed_adapter_reference(h, *params, route, act),
                                   experts(h, route), rtol=1e-13, atol=1e-13)


def test_dispatch_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernel mode torch never reaches the kernels; bad inputs are refused before any launch."""
    x, wd, bd, wu, bu = [t.float() for t in _inputs((4,), 32, 4, 2, 2)]

    def no_kernel(*args: object, **kwargs: object) -> None:
        raise AssertionError("the Triton path ran")

    experts = AdapterExperts(32, 4, 2, "none", "relu")
    with torch.no_grad():
        for p, t in zip((experts.down_weight, experts.down_bias, experts.up_weight,
                         experts.up_bias), (wd, bd, wu, bu), strict=True):
            p.copy_(t)
    with monkeypatch.context() as patch, use_kernels("torch"):
        patch.setattr(ra.RoutedAdapter, "apply", no_kernel)
        patch.setattr(ra, "_forward", no_kernel)
        torch.testing.assert_close(experts(x, ((1, 1),)),
                                   routed_adapter_reference(x, wd, bd, wu, bu, ((1, 1),), "relu"))
    with use_kernels("triton"), pytest.raises(RuntimeError, match="above"):
        triton_takes(x, wd, rank=ra.MAX_BOTTLENECK + 1)
    with pytest.raises(ValueError, match="bottleneck"):
        big = torch.zeros(2, 32, ra.MAX_BOTTLENECK + 1)
        routed_adapter(x, big, big[:, 0], big.transpose(1, 2), bu, ((0, 0),), "relu")
    with pytest.raises(IndexError, match="outside"):
        routed_adapter(x, wd, bd, wu, bu, ((2, 0),), "relu")
    with pytest.raises(ValueError, match="route segments"):
        routed_adapter(x, wd, bd, wu, bu, ((0, 0),) * 3, "relu")
    with pytest.raises(ValueError, match="activation"):
        routed_adapter(x, wd, bd, wu, bu, ((0, 0),), "swish")
    with pytest.raises(ValueError, match="shapes"):
        routed_adapter(x, wd, bd, wu[:, :, :16], bu, ((0, 0),), "relu")
    with pytest.raises(TypeError, match="dtype"):
        routed_adapter(x.double(), wd, bd, wu, bu, ((0, 0),), "relu")
