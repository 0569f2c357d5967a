"""Routed Houlsby adapter, fused: ``y = x + act(x @ Wd[j] + bd[j]) @ Wu[k] + bu[k]`` per segment.

Semantics are those of ``adamix_ds.experts.AdapterExperts.forward`` (routed branch):
    x            (N, d)          rows (leading dims flattened; the batch dim is outermost, so each
                                 route segment is a contiguous block of N / S rows)
    down_weight  (M_down, d, b)  stacked W_down (M_down = 1 when the down side is shared)
    down_bias    (M_down, b)
    up_weight    (M_up, b, d)    stacked W_up (M_up = 1 when the up side is shared)
    up_bias      (M_up, d)
    route        ((j_0, k_0), ...)  one (down, up) expert pair per equal segment, S = len(route)
    activation   "relu" | "gelu" (erf) | "gelu_tanh"
    y            (N, d)          residual included

Why a kernel: the bottleneck b is small (4..64), so the activation ``act(x @ Wd[j] + bd[j])`` of a
block of rows fits in registers. One program reads its x rows, builds that (BLOCK_M, b) block, then
applies the up projection, bias and residual and writes y: no (N, d) temporaries and no separate
bias / activation / residual passes, which is what the eager path pays for (matmul, add, act,
matmul, add, add). The only extra write is the (N, b) fp32 pre-activation saved for the backward
(b / d of y's size; skipped when no gradient is needed). The residual re-reads the program's own
x block right after the down loop; that block is BLOCK_M * d elements (128 KB at 64 x 1024 bf16),
so on a GPU the re-read is expected to hit L2 rather than HBM (benchmarks/bench_kernels.py
reports the achieved bandwidth).

Backward (all heavy parts are Triton; torch only does O(b * d) bookkeeping):
    _bwd_rows_kernel    row blocks:  da = g @ Wu[k]^T, dh = da * act'(h)  (kept in registers),
                                     dx = g + dh @ Wd[j]^T; writes dx (N, d) and dh (N, b) fp32.
    _bwd_weights_kernel column tiles x row splits (deterministic, no atomics):
                                     dWu = act(h)^T @ g, dbu = sum g, dWd = x^T @ dh
                                     as fp32 partials (splits, S, ...), summed by torch.
    torch                            dbd = sum dh (N x b, tiny); per-segment results are added into
                                     zero (M, ...) gradients at the routed indices (a shared side,
                                     M = 1, or a repeated index gets both segments' sums).

``routed_adapter`` always runs the kernels (CUDA tensors, or CPU ones under the interpreter enabled
with TRITON_INTERPRET=1 before triton is first imported) and refuses inputs they cannot take;
:func:`adamix_ds.kernels.triton_takes` decides whether a layer calls it or stays in torch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .dispatch import MAX_RANK
from .utils import INTERPRETED, KERNEL_DTYPES, Route, check_route, num_sms, tile, tl, triton

# Kernel activation codes (constexpr, so each activation compiles its own branch-free kernel).
_ACT_CODES = {"relu": 0, "gelu": 1, "gelu_tanh": 2}
MAX_BOTTLENECK = MAX_RANK  # the (BLOCK_M, b) activation block lives in registers


if triton is not None:

    @triton.jit
    def _act(h, ACT: tl.constexpr):
        """act(h) in fp32; act(0) = 0 for all three, so padded columns / rows stay zero."""
        if ACT == 0:
            out = tl.maximum(h, 0.0)
        elif ACT == 1:
            out = 0.5 * h * (1.0 + tl.erf(h * 0.7071067811865476))
        else:
            # 0.5 * (1 + tanh(u)) == sigmoid(2u): no tanh primitive needed and no cancellation
            # near u = 0 (1 + tanh(u) would lose bits there).
            u = 0.7978845608028654 * (h + 0.044715 * h * h * h)
            out = h * tl.sigmoid(2.0 * u)
        return out

    @triton.jit
    def _act_grad(h, ACT: tl.constexpr):
        """d act / d h in fp32 (relu'(0) = 0, as torch)."""
        if ACT == 0:
            out = tl.where(h > 0.0, 1.0, 0.0)
        elif ACT == 1:
            cdf = 0.5 * (1.0 + tl.erf(h * 0.7071067811865476))
            pdf = 0.3989422804014327 * tl.exp(-0.5 * h * h)
            out = cdf + h * pdf
        else:
            u = 0.7978845608028654 * (h + 0.044715 * h * h * h)
            s = tl.sigmoid(2.0 * u)
            du = 0.7978845608028654 * (1.0 + 0.134145 * h * h)
            out = s + h * (2.0 * s * (1.0 - s)) * du
        return out

    @triton.jit
    def _operand(t, IO_DTYPE: tl.constexpr, UPCAST: tl.constexpr):
        """A tl.dot operand: rounded to the storage dtype (tensor cores take bf16/fp16 on the GPU);
        upcast to fp32 under the interpreter, whose bf16 arithmetic is not faithful."""
        t = t.to(IO_DTYPE)
        if UPCAST:
            t = t.to(tl.float32)
        return t

    @triton.jit
    def _segment_tile(wd_ptr, wu_ptr, row_start, seg_rows, j0, k0, j1, k1, D, B,
                      BLOCK_M: tl.constexpr, BLOCK_B: tl.constexpr):
        """This program's rows and experts, for a grid (row blocks, segments).

        Returns (j, k, rows, rmask, cb, bmask, wd_base, wu_base): the segment's down / up expert,
        the BLOCK_M global row indices (int64: N * D may pass 2**31) and their mask, the BLOCK_B
        bottleneck columns and their mask, and the pointers to Wd[j] (D, B) and Wu[k] (B, D).
        """
        seg = tl.program_id(1)
        j = j0 + seg * (j1 - j0)
        k = k0 + seg * (k1 - k0)
        local = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = local < seg_rows
        rows = (row_start + seg * seg_rows + local).to(tl.int64)
        cb = tl.arange(0, BLOCK_B)
        bmask = cb < B
        wd_base = wd_ptr + j.to(tl.int64) * D * B
        wu_base = wu_ptr + k.to(tl.int64) * B * D
        return j, k, rows, rmask, cb, bmask, wd_base, wu_base

    # Expert indices are not specialised (1 and multiples of 16 would each compile a kernel).
    @triton.jit(do_not_specialize=["j0", "k0", "j1", "k1"])
    def _fwd_kernel(
        x_ptr, wd_ptr, bd_ptr, wu_ptr, bu_ptr, y_ptr, h_ptr,
        row_start, seg_rows, j0, k0, j1, k1, D, B,
        ACT: tl.constexpr, SAVE_H: tl.constexpr, UPCAST: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
    ):
        """Grid (cdiv(seg_rows, BLOCK_M), segments in this launch (1 or 2)).

        x, y (N, D); wd (M_down, D, B); bd (M_down, B); wu (M_up, B, D); bu (M_up, D), all
        contiguous in one dtype; h (N, B) fp32 pre-activation, written when SAVE_H.
        Expert indices arrive as scalars (j0, k0) / (j1, k1) for program_id(1) = 0 / 1: no route
        table has to be copied to the device per call (no sync, CUDA-graph safe).
        """
        IO_DTYPE: tl.constexpr = x_ptr.dtype.element_ty
        j, k, rows, rmask, cb, bmask, wd_base, wu_base = _segment_tile(
            wd_ptr, wu_ptr, row_start, seg_rows, j0, k0, j1, k1, D, B, BLOCK_M, BLOCK_B)

        # Down projection: h = x @ Wd[j], BLOCK_K columns of x at a time.
        h = tl.zeros((BLOCK_M, BLOCK_B), dtype=tl.float32)
        for c0 in range(0, D, BLOCK_K):
            ck = c0 + tl.arange(0, BLOCK_K)
            kmask = ck < D
            xt = tl.load(x_ptr + rows[:, None] * D + ck[None, :],
                         mask=rmask[:, None] & kmask[None, :], other=0.0)
            wd = tl.load(wd_base + ck[:, None] * B + cb[None, :],
                         mask=kmask[:, None] & bmask[None, :], other=0.0)
            h = tl.dot(_operand(xt, IO_DTYPE, UPCAST), _operand(wd, IO_DTYPE, UPCAST), h,
                       input_precision=INPUT_PRECISION)
        h += tl.load(bd_ptr + j * B + cb, mask=bmask, other=0.0).to(tl.float32)[None, :]
        if SAVE_H:
            tl.store(h_ptr + rows[:, None] * B + cb[None, :], h,
                     mask=rmask[:, None] & bmask[None, :])
        # Padded bottleneck columns hold act(bd = 0) = 0 and meet zero Wu rows: they add nothing.
        a = _operand(_act(h, ACT), IO_DTYPE, UPCAST)

        # Up projection + bias + residual, BLOCK_N output columns at a time.
        for c0 in range(0, D, BLOCK_N):
            cn = c0 + tl.arange(0, BLOCK_N)
            nmask = cn < D
            wu = tl.load(wu_base + cb[:, None] * D + cn[None, :],
                         mask=bmask[:, None] & nmask[None, :], other=0.0)
            out = tl.dot(a, _operand(wu, IO_DTYPE, UPCAST), input_precision=INPUT_PRECISION)
            out += tl.load(bu_ptr + k * D + cn, mask=nmask, other=0.0).to(tl.float32)[None, :]
            xmask = rmask[:, None] & nmask[None, :]
            x_res = tl.load(x_ptr + rows[:, None] * D + cn[None, :], mask=xmask, other=0.0)
            out += x_res.to(tl.float32)
            tl.store(y_ptr + rows[:, None] * D + cn[None, :], out.to(IO_DTYPE), mask=xmask)

    @triton.jit(do_not_specialize=["j0", "k0", "j1", "k1"])
    def _bwd_rows_kernel(
        g_ptr, wd_ptr, wu_ptr, h_ptr, dx_ptr, dh_ptr,
        row_start, seg_rows, j0, k0, j1, k1, D, B,
        ACT: tl.constexpr, COMPUTE_DX: tl.constexpr, UPCAST: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
    ):
        """Grid as the forward. g, dx (N, D) in the I/O dtype; h, dh (N, B) fp32.

        dh = (g @ Wu[k]^T) * act'(h) is written for the weight gradients; dx = g + dh @ Wd[j]^T
        (the identity term is the residual) when COMPUTE_DX.
        """
        IO_DTYPE: tl.constexpr = g_ptr.dtype.element_ty
        _j, _k, rows, rmask, cb, bmask, wd_base, wu_base = _segment_tile(
            wd_ptr, wu_ptr, row_start, seg_rows, j0, k0, j1, k1, D, B, BLOCK_M, BLOCK_B)
        hmask = rmask[:, None] & bmask[None, :]

        # da = g @ Wu[k]^T: Wu is loaded as (BLOCK_B, BLOCK_N) tiles (contiguous along d) and
        # transposed in registers rather than gathered with a stride of D.
        da = tl.zeros((BLOCK_M, BLOCK_B), dtype=tl.float32)
        for c0 in range(0, D, BLOCK_N):
            cn = c0 + tl.arange(0, BLOCK_N)
            nmask = cn < D
            g = tl.load(g_ptr + rows[:, None] * D + cn[None, :],
                        mask=rmask[:, None] & nmask[None, :], other=0.0)
            wu = tl.load(wu_base + cb[:, None] * D + cn[None, :],
                         mask=bmask[:, None] & nmask[None, :], other=0.0)
            da = tl.dot(_operand(g, IO_DTYPE, UPCAST), tl.trans(_operand(wu, IO_DTYPE, UPCAST)),
                        da, input_precision=INPUT_PRECISION)
        h = tl.load(h_ptr + rows[:, None] * B + cb[None, :], mask=hmask, other=0.0)
        dh = da * _act_grad(h, ACT)
        tl.store(dh_ptr + rows[:, None] * B + cb[None, :], dh, mask=hmask)

        if COMPUTE_DX:
            dh_op = _operand(dh, IO_DTYPE, UPCAST)
            for c0 in range(0, D, BLOCK_N):
                cn = c0 + tl.arange(0, BLOCK_N)
                nmask = cn < D
                wd = tl.load(wd_base + cn[:, None] * B + cb[None, :],
                             mask=nmask[:, None] & bmask[None, :], other=0.0)
                dx = tl.dot(dh_op, tl.trans(_operand(wd, IO_DTYPE, UPCAST)),
                            input_precision=INPUT_PRECISION)
                xmask = rmask[:, None] & nmask[None, :]
                g = tl.load(g_ptr + rows[:, None] * D + cn[None, :], mask=xmask, other=0.0)
                dx += g.to(tl.float32)
                tl.store(dx_ptr + rows[:, None] * D + cn[None, :], dx.to(IO_DTYPE), mask=xmask)

    @triton.jit
    def _bwd_weights_kernel(
        x_ptr, g_ptr, h_ptr, dh_ptr, pwd_ptr, pwu_ptr, pbu_ptr,
        seg_rows, chunk_rows, D, B,
        ACT: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
    ):
        """Grid (cdiv(D, BLOCK_N), S, splits): reductions over rows of one segment.

        Program (n, s, p) sums rows [p * chunk_rows, (p + 1) * chunk_rows) of segment s into
        pwd[p, s] (D, B) = x^T @ dh, pwu[p, s] (B, D) = act(h)^T @ g, pbu[p, s] (D,) = sum g,
        restricted to its BLOCK_N columns of d. Splitting rows gives a GPU enough programs when
        D / BLOCK_N is small; writing partials (summed by the caller) keeps it deterministic.
        """
        pid_n = tl.program_id(0)
        seg = tl.program_id(1)
        split = tl.program_id(2)
        n_segs = tl.num_programs(1)
        IO_DTYPE: tl.constexpr = g_ptr.dtype.element_ty

        cn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = cn < D
        cb = tl.arange(0, BLOCK_B)
        bmask = cb < B
        lo = split * chunk_rows
        hi = tl.minimum(lo + chunk_rows, seg_rows)
        seg_base = seg.to(tl.int64) * seg_rows

        acc_wu = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        acc_wd = tl.zeros((BLOCK_N, BLOCK_B), dtype=tl.float32)
        acc_bu = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for r0 in range(lo, hi, BLOCK_M):
            local = r0 + tl.arange(0, BLOCK_M)
            rmask = local < hi
            rows = seg_base + local
            xmask = rmask[:, None] & nmask[None, :]
            hmask = rmask[:, None] & bmask[None, :]
            g = tl.load(g_ptr + rows[:, None] * D + cn[None, :], mask=xmask, other=0.0)
            x = tl.load(x_ptr + rows[:, None] * D + cn[None, :], mask=xmask, other=0.0)
            h = tl.load(h_ptr + rows[:, None] * B + cb[None, :], mask=hmask, other=0.0)
            dh = tl.load(dh_ptr + rows[:, None] * B + cb[None, :], mask=hmask, other=0.0)
            # act(h) is recomputed (cheap, b columns) instead of stored by the forward.
            a = _operand(_act(h, ACT), IO_DTYPE, UPCAST)
            g_op = _operand(g, IO_DTYPE, UPCAST)
            acc_wu = tl.dot(tl.trans(a), g_op, acc_wu, input_precision=INPUT_PRECISION)
            acc_wd = tl.dot(tl.trans(_operand(x, IO_DTYPE, UPCAST)),
                            _operand(dh, IO_DTYPE, UPCAST), acc_wd,
                            input_precision=INPUT_PRECISION)
            acc_bu += tl.sum(g.to(tl.float32), axis=0)

        part = (split * n_segs + seg).to(tl.int64)
        tl.store(pwu_ptr + part * B * D + cb[:, None] * D + cn[None, :], acc_wu,
                 mask=bmask[:, None] & nmask[None, :])
        tl.store(pwd_ptr + part * D * B + cn[:, None] * B + cb[None, :], acc_wd,
                 mask=nmask[:, None] & bmask[None, :])
        tl.store(pbu_ptr + part * D + cn, acc_bu, mask=nmask)


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes; every tl.dot dimension is >= 16 (GPUs reject smaller tiles).

    block_m   rows per program (forward and dx);  block_k / block_n  d-columns per step;
    block_b   the bottleneck padded to a power of two >= 16;  splits  row splits of the
    weight-gradient reduction (None: enough programs to fill the GPU);  num_warps  per program.
    """
    block_m: int = 64
    block_k: int = 64
    block_n: int = 64
    block_b: int = 16
    splits: int | None = None
    num_warps: int = 8


def gpu_config(bottleneck: int, dtype: torch.dtype) -> LaunchConfig:
    """The GPU tiles, chosen from register reports (``ptxas -v`` on the sm_90 PTX, AOT-compiled on
    a CPU machine; not timed): with 8 warps the three kernels use <= 150 registers and do not
    spill for bf16 / fp16 up to b = 64 (4 warps reached 255 and spilled); fp32 "ieee" dots are
    not tensor-core dots and spill at 64 rows x b = 64, so fp32 takes 32 rows there."""
    block_b = tile(bottleneck)
    block_m = 32 if dtype == torch.float32 and block_b >= 64 else 64
    return LaunchConfig(block_m=block_m, block_b=block_b)


def default_config(bottleneck: int, dtype: torch.dtype) -> LaunchConfig:
    """``gpu_config``, except under the interpreter: its cost is per tile operation, not per
    element, so it takes the largest tiles (about 5x faster on the test shapes)."""
    config = gpu_config(bottleneck, dtype)
    if INTERPRETED:
        config = LaunchConfig(block_m=128, block_k=256, block_n=256, block_b=config.block_b)
    return config


def _segment_pairs(route: Route) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(first segment, (j0, k0, j1, k1)) per kernel launch; a launch covers <= 2 segments (the
    paired consistency pass is one launch; an S-member ensemble takes ceil(S / 2))."""
    pairs = []
    for first in range(0, len(route), 2):
        (j0, k0), (j1, k1) = route[first], route[min(first + 1, len(route) - 1)]
        pairs.append((first, (int(j0), int(k0), int(j1), int(k1))))
    return pairs


def _input_precision(dtype: torch.dtype) -> str:
    """fp32 dots follow torch's own matmul setting (full fp32 unless TF32 was allowed); the
    setting does not apply to 16-bit operands."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _forward(x: torch.Tensor, down_weight: torch.Tensor, down_bias: torch.Tensor,
             up_weight: torch.Tensor, up_bias: torch.Tensor, route: Route, activation: str,
             config: LaunchConfig, save_h: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the forward kernel: x (N, d) contiguous -> (y (N, d), h (N, b) fp32 or None)."""
    n_rows, d = x.shape
    b = down_weight.shape[-1]
    seg_rows = n_rows // len(route)
    y = torch.empty_like(x)
    h = torch.empty((n_rows, b), device=x.device, dtype=torch.float32) if save_h else None
    for first, (j0, k0, j1, k1) in _segment_pairs(route):
        grid = (triton.cdiv(seg_rows, config.block_m), min(2, len(route) - first))
        _fwd_kernel[grid](
            x, down_weight, down_bias, up_weight, up_bias, y, y if h is None else h,
            first * seg_rows, seg_rows, j0, k0, j1, k1, d, b,
            ACT=_ACT_CODES[activation], SAVE_H=save_h, UPCAST=INTERPRETED,
            INPUT_PRECISION=_input_precision(x.dtype),
            BLOCK_M=config.block_m, BLOCK_K=config.block_k, BLOCK_N=config.block_n,
            BLOCK_B=config.block_b, num_warps=config.num_warps)
    return y, h


class RoutedAdapter(torch.autograd.Function):
    """Triton forward / backward of the routed adapter on (N, d) rows (see the module docstring).

    ``apply(x, down_weight, down_bias, up_weight, up_bias, route, activation, config)`` with
    x (N, d) contiguous; returns y (N, d). Gradients: dx (N, d) and full-size stacked gradients,
    zero at experts the route did not select. Saves x, the two weights and h (N, b) fp32.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, down_weight: torch.Tensor, down_bias: torch.Tensor,
                up_weight: torch.Tensor, up_bias: torch.Tensor, route: Route, activation: str,
                config: LaunchConfig) -> torch.Tensor:
        y, h = _forward(x, down_weight, down_bias, up_weight, up_bias, route, activation, config,
                        save_h=True)
        ctx.save_for_backward(x, down_weight, up_weight, h)
        ctx.route, ctx.activation, ctx.config = tuple(route), activation, config
        ctx.num_down, ctx.num_up = down_weight.shape[0], up_weight.shape[0]
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, down_weight, up_weight, h = ctx.saved_tensors
        route, config, act = ctx.route, ctx.config, _ACT_CODES[ctx.activation]
        need_dx = ctx.needs_input_grad[0]
        need_w = any(ctx.needs_input_grad[1:5])
        g = grad_y.contiguous()
        n_rows, d = x.shape
        b = h.shape[1]
        n_segs = len(route)
        seg_rows = n_rows // n_segs
        precision = _input_precision(x.dtype)

        dx = torch.empty_like(x) if need_dx else None
        dh = torch.empty((n_rows, b), device=x.device, dtype=torch.float32)
        for first, (j0, k0, j1, k1) in _segment_pairs(route):
            grid = (triton.cdiv(seg_rows, config.block_m), min(2, n_segs - first))
            _bwd_rows_kernel[grid](
                g, down_weight, up_weight, h, dx if need_dx else g, dh,
                first * seg_rows, seg_rows, j0, k0, j1, k1, d, b,
                ACT=act, COMPUTE_DX=need_dx, UPCAST=INTERPRETED, INPUT_PRECISION=precision,
                BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_B=config.block_b,
                num_warps=config.num_warps)
        if not need_w:
            return dx, None, None, None, None, None, None, None

        n_tiles = triton.cdiv(d, config.block_n)
        row_blocks = triton.cdiv(seg_rows, config.block_m)
        splits = config.splits or triton.cdiv(2 * num_sms(x.device), n_tiles * n_segs)
        splits = max(1, min(splits, row_blocks))
        chunk_rows = triton.cdiv(row_blocks, splits) * config.block_m
        f32 = dict(device=x.device, dtype=torch.float32)
        pwd = torch.empty((splits, n_segs, d, b), **f32)
        pwu = torch.empty((splits, n_segs, b, d), **f32)
        pbu = torch.empty((splits, n_segs, d), **f32)
        _bwd_weights_kernel[(n_tiles, n_segs, splits)](
            x, g, h, dh, pwd, pwu, pbu, seg_rows, chunk_rows, d, b,
            ACT=act, UPCAST=INTERPRETED, INPUT_PRECISION=precision,
            BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_B=config.block_b,
            num_warps=config.num_warps)
        seg_wd, seg_wu, seg_bu = pwd.sum(0), pwu.sum(0), pbu.sum(0)   # (S, d, b), (S, b, d), (S, d)
        seg_bd = dh.view(n_segs, seg_rows, b).sum(1)                    # (S, b)

        # Accumulate per-segment sums at the routed indices in a fixed order (deterministic even
        # when both segments hit the same expert, e.g. a shared side).
        dwd = torch.zeros((ctx.num_down, d, b), **f32)
        dbd = torch.zeros((ctx.num_down, b), **f32)
        dwu = torch.zeros((ctx.num_up, b, d), **f32)
        dbu = torch.zeros((ctx.num_up, d), **f32)
        for s, (j, k) in enumerate(route):
            dwd[j] += seg_wd[s]
            dbd[j] += seg_bd[s]
            dwu[k] += seg_wu[s]
            dbu[k] += seg_bu[s]
        dt = down_weight.dtype
        return dx, dwd.to(dt), dbd.to(dt), dwu.to(dt), dbu.to(dt), None, None, None


def routed_adapter(x: torch.Tensor, down_weight: torch.Tensor, down_bias: torch.Tensor,
                   up_weight: torch.Tensor, up_bias: torch.Tensor, route: Route, activation: str,
                   config: LaunchConfig | None = None) -> torch.Tensor:
    """The routed Houlsby adapter with its residual on the Triton kernels, differentiable in all
    five tensors.

    x (B, ..., d) on CUDA (or on CPU under the interpreter); down_weight (M_down, d, b);
    down_bias (M_down, b); up_weight (M_up, b, d); up_bias (M_up, d); route: one (down, up) pair
    per equal segment of the leading dim (for the merged module pass the means with a leading 1
    and route ((0, 0),)). All tensors share one dtype (tl.dot takes equal operands). Returns y of
    x's shape.

    Raises:
        ValueError / IndexError: an unknown activation, shapes or a route that do not fit, or a
            bottleneck above :data:`MAX_BOTTLENECK`.
        RuntimeError: Triton missing, or CPU tensors without the interpreter.
        TypeError: the tensors differ in dtype, or it is not fp32 / fp16 / bf16.
    """
    if activation not in _ACT_CODES:
        raise ValueError(f"activation {activation!r} not in {sorted(_ACT_CODES)}")
    n_down, d, b = down_weight.shape
    n_up = up_weight.shape[0]
    if (x.shape[-1] != d or down_bias.shape != (n_down, b) or up_weight.shape != (n_up, b, d)
            or up_bias.shape != (n_up, d)):
        raise ValueError(f"shapes do not match: x {tuple(x.shape)}, down {tuple(down_weight.shape)}"
                         f"/{tuple(down_bias.shape)}, up {tuple(up_weight.shape)}"
                         f"/{tuple(up_bias.shape)}")
    if b > MAX_BOTTLENECK:
        raise ValueError(f"bottleneck {b} is above the kernels' {MAX_BOTTLENECK}")
    check_route(route, x.shape[0], n_down, n_up)
    if len({t.dtype for t in (x, down_weight, down_bias, up_weight, up_bias)}) != 1:
        raise TypeError("x and the adapter parameters must share one dtype")
    if x.dtype not in KERNEL_DTYPES:
        raise TypeError(f"the kernels take {[str(t) for t in KERNEL_DTYPES]}, not {x.dtype}")
    if triton is None:
        raise RuntimeError("routed_adapter needs the `triton` package")
    if not x.is_cuda and not INTERPRETED:
        raise RuntimeError("Triton on CPU tensors needs TRITON_INTERPRET=1 in the environment "
                           "before triton is first imported")
    if x.numel() == 0:
        return x.clone()
    args = (x.reshape(-1, d).contiguous(), down_weight.contiguous(), down_bias.contiguous(),
            up_weight.contiguous(), up_bias.contiguous(), tuple((int(j), int(k)) for j, k in route),
            activation, config or default_config(b, x.dtype))
    tensors = (x, down_weight, down_bias, up_weight, up_bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        y = RoutedAdapter.apply(*args)
    else:  # inference (e.g. ensemble decoding): no autograd node, no saved pre-activation
        y, _ = _forward(*args, save_h=False)
    return y.view(x.shape)
