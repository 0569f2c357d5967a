"""Routed LoRA delta: ``out[:, s:s+d_out] (+)= scale * (x_seg @ A[j]) @ B[k]`` per batch segment.

Semantics are those of ``adamix_ds.experts.LoRAExperts.forward`` (routed branch):
    x        (N, d_in)            rows (leading dims flattened; the batch dim is outermost, so each
                                  route segment is a contiguous block of N / S rows)
    lora_a   (M_a, d_in, r)       stacked down projections (M_a = 1 when shared)
    lora_b   (M_b, r, d_out)      stacked up projections   (M_b = 1 when shared)
    route    ((j_0, k_0), ...)    one (down, up) expert pair per equal segment, S = len(route)
    delta    (N, d_out)           scale * (x_s @ A[j_s]) @ B[k_s] on segment s

Why a kernel: the rank r is small (4..64), so ``h = x @ A[j]`` for a block of rows fits in registers
and the up projection can be applied, scaled and *added into the base output slice* in the same
program. That saves the (N, d_out) delta temporary and the separate ``out += delta`` pass that the
eager path pays (an extra write and read of N * d_out), and h only goes to memory when the
backward needs it.
The same kernel computes ``dx = scale * (dout @ B[k]^T) @ A[j]^T`` in the backward (it is the
forward with the roles of A and B swapped and transposed through strides); the weight gradients
``x_s^T @ g_s`` and ``h_s^T @ dout_s`` are reductions over rows, which cuBLAS already does well, so
they stay torch matmuls on the (N, r) buffers the kernels write.

``routed_lora_delta`` always runs the kernels (CUDA tensors, or CPU ones under the interpreter) and
refuses inputs they cannot take; :func:`adamix_ds.kernels.triton_takes` decides whether a layer
calls it or stays in torch.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .utils import INTERPRETED, Route, check_route, num_sms, route_table, tile, tl, triton

if triton is not None:

    @triton.jit
    def _routed_lora_kernel(
        x_ptr, a_ptr, b_ptr, out_ptr, h_ptr, route_ptr,
        seg_rows, blocks_per_seg, d_in, d_out, rank, cols_per_prog, scale,
        stride_xm, stride_xk,
        stride_am, stride_ak, stride_ar,
        stride_bm, stride_br, stride_bn,
        stride_om, stride_on,
        stride_hm, stride_hr,
        A_COL: tl.constexpr,        # which column of the (S, 2) route table indexes a_ptr
        COMPUTE_OUT: tl.constexpr,  # False: only h is wanted (weight grads without dx)
        ACCUMULATE: tl.constexpr,   # out += delta (fused into the base output) vs out = delta
        STORE_H: tl.constexpr,      # write h (N, r) for the backward
        F32_DOT: tl.constexpr,      # fp32 tiles + IEEE dots (fp32 inputs, the interpreter)
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):
        """One program: BLOCK_M rows of one segment x one group of output columns.

        x (N, d_in) @ a[A_idx] (d_in, r) -> h (BLOCK_M, r) in fp32 registers, then
        out[rows, cols] (+)= scale * h @ b[B_idx] (r, cols) in BLOCK_N chunks.
        Grid: (S * blocks_per_seg, column groups). Programs never straddle a segment boundary, so
        each reads exactly one expert pair from the route table.
        """
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        seg = pid_m // blocks_per_seg
        a_idx = tl.load(route_ptr + 2 * seg + A_COL).to(tl.int64)
        b_idx = tl.load(route_ptr + 2 * seg + (1 - A_COL)).to(tl.int64)

        local = (pid_m % blocks_per_seg) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = local < seg_rows
        rows = (seg * seg_rows + local).to(tl.int64)   # int64: N * stride can exceed 2**31
        r_off = tl.arange(0, BLOCK_R)                  # rank padded to >= 16 for tl.dot; masked
        r_mask = r_off < rank

        # h = x_rows @ A[a_idx], reduced over d_in in BLOCK_K chunks; padded rank columns stay 0.
        a_base = a_ptr + a_idx * stride_am
        h = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for k0 in range(0, d_in, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_mask = k < d_in
            xt = tl.load(x_ptr + rows[:, None] * stride_xm + k[None, :] * stride_xk,
                         mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            at = tl.load(a_base + k[:, None] * stride_ak + r_off[None, :] * stride_ar,
                         mask=k_mask[:, None] & r_mask[None, :], other=0.0)
            if F32_DOT:
                h = tl.dot(xt.to(tl.float32), at.to(tl.float32), h, input_precision="ieee")
            else:
                # tensor-core dot in the weights' dtype, fp32 accumulation (as cuBLAS does)
                h = tl.dot(xt.to(at.dtype), at, h)

        if STORE_H:
            if pid_n == 0:  # every column group computes the same h; only the first writes it
                h_ptrs = h_ptr + rows[:, None] * stride_hm + r_off[None, :] * stride_hr
                tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty),
                         mask=row_mask[:, None] & r_mask[None, :])

        if COMPUTE_OUT:
            b_base = b_ptr + b_idx * stride_bm
            if F32_DOT:
                h_op = h
            else:
                # round h to the weights' dtype like the eager (x @ A) @ B does
                h_op = h.to(b_ptr.dtype.element_ty)
            col_lo = pid_n * cols_per_prog
            col_hi = tl.minimum(col_lo + cols_per_prog, d_out)
            for n0 in range(col_lo, col_hi, BLOCK_N):
                n = n0 + tl.arange(0, BLOCK_N)
                n_mask = n < col_hi
                bt = tl.load(b_base + r_off[:, None] * stride_br + n[None, :] * stride_bn,
                             mask=r_mask[:, None] & n_mask[None, :], other=0.0)
                if F32_DOT:
                    delta = tl.dot(h_op, bt.to(tl.float32), input_precision="ieee")
                else:
                    delta = tl.dot(h_op, bt)
                delta = delta * scale
                o_ptrs = out_ptr + rows[:, None] * stride_om + n[None, :] * stride_on
                o_mask = row_mask[:, None] & n_mask[None, :]
                if ACCUMULATE:
                    delta += tl.load(o_ptrs, mask=o_mask, other=0.0).to(tl.float32)
                tl.store(o_ptrs, delta.to(out_ptr.dtype.element_ty), mask=o_mask)


def _column_groups(x: torch.Tensor, row_programs: int, n_col_blocks: int) -> int:
    """How many programs share one row block's output columns (grid axis 1).

    Few rows (decoding, small batches) leave SMs idle with one program per row block, so the
    columns are split and h recomputed per group (cheap: r * d_in MACs per row against
    r * d_out for the output). On CPU (the interpreter) programs run one after the other: 1.
    """
    if not x.is_cuda:
        return 1
    return max(1, min(n_col_blocks, triton.cdiv(2 * num_sms(x.device), row_programs)))


def _launch(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, route_tab: torch.Tensor,
            a_col: int, scale: float, out: torch.Tensor | None, accumulate: bool,
            h: torch.Tensor | None) -> None:
    """Run the kernel on strided views.

    x (N, K); a (M_a, K, r); b (M_b, r, D); out (N, D) or None (only h); h (N, r) or None;
    route_tab (S, 2) int32 on x's device, column ``a_col`` indexes a, the other indexes b.
    Any strides are fine, so transposed experts and an output column slice need no copies.
    """
    n_rows, d_k = x.shape
    rank, d_out = b.shape[1], b.shape[2]
    n_seg = route_tab.shape[0]
    if n_rows == 0:
        return
    seg_rows = n_rows // n_seg
    if INTERPRETED and not x.is_cuda:
        # interpreter cost is per tile op, so larger tiles are much faster; masking is unchanged
        block_m, block_k, block_n, warps = 64, 256, 256, 4
    else:
        # sized for r <= 64 held in registers; fp32 IEEE dots may run better with 32-wide tiles
        block_m, block_k, block_n, warps = 64, 64, 64, 4
    block_r = tile(rank)
    blocks_per_seg = triton.cdiv(seg_rows, block_m)
    row_programs = n_seg * blocks_per_seg
    n_col_blocks = triton.cdiv(d_out, block_n)
    col_groups = _column_groups(x, row_programs, n_col_blocks) if out is not None else 1
    cols_per_prog = triton.cdiv(n_col_blocks, col_groups) * block_n
    col_groups = triton.cdiv(d_out, cols_per_prog)
    # the interpreter's bf16/fp16 arithmetic is not the GPU's: always upcast there
    f32_dot = INTERPRETED or x.dtype == torch.float32 or a.dtype == torch.float32
    out_arg = out if out is not None else x          # never dereferenced when COMPUTE_OUT=False
    h_arg = h if h is not None else x                # never dereferenced when STORE_H=False
    _routed_lora_kernel[(row_programs, col_groups)](
        x, a, b, out_arg, h_arg, route_tab,
        seg_rows, blocks_per_seg, d_k, d_out, rank, cols_per_prog, float(scale),
        x.stride(0), x.stride(1),
        a.stride(0), a.stride(1), a.stride(2),
        b.stride(0), b.stride(1), b.stride(2),
        out_arg.stride(0), out_arg.stride(1),
        h_arg.stride(0), h_arg.stride(1),
        A_COL=a_col, COMPUTE_OUT=out is not None, ACCUMULATE=accumulate, STORE_H=h is not None,
        F32_DOT=f32_dot, BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_N=block_n, BLOCK_R=block_r,
        num_warps=warps,
    )


def _stacked_grad(param: torch.Tensor, indices: Sequence[int], left: torch.Tensor,
                  right: torch.Tensor, scale: float) -> torch.Tensor:
    """Gradient of a stacked expert tensor: zeros except ``grad[i] += scale * left_s^T @ right_s``.

    param (M, P, Q); left (N, P) and right (N, Q) split into len(indices) equal row segments.
    Segments routed to the same expert (a shared side, M = 1) accumulate into the same slot; when
    all of them do, one matmul over all N rows replaces S smaller ones.
    """
    grad = torch.zeros_like(param)
    if len(set(indices)) == 1:
        grad[indices[0]].addmm_(left.T, right, alpha=scale)
        return grad
    for i, ls, rs in zip(indices, left.chunk(len(indices)), right.chunk(len(indices)), strict=True):
        grad[i].addmm_(ls.T, rs, alpha=scale)
    return grad


class RoutedLoRADelta(torch.autograd.Function):
    """Triton routed LoRA delta with a custom backward (2-D rows; see ``routed_lora_delta``).

    forward(out (N, d_total) or None, x (N, d_in), lora_a (M_a, d_in, r), lora_b (M_b, r, d_out),
            route, scale, start) -> delta (N, d_out), or ``out`` itself with
            ``out[:, start:start+d_out] += delta`` done in place (marked dirty for autograd).
    ``out`` comes first because autograd's CopySlices, which handles an in-place update of a view,
    takes the backward's first gradient as the gradient of the modified tensor.
    Saved for backward: x, the experts and h = x @ A[j] (N, r), which the forward kernel writes
    anyway, so the backward does not recompute it.
    """

    @staticmethod
    def forward(ctx, out: torch.Tensor | None, x: torch.Tensor, lora_a: torch.Tensor,
                lora_b: torch.Tensor, route: Route, scale: float, start: int) -> torch.Tensor:
        d_out = lora_b.shape[2]
        route_tab = route_table(route, x.device)
        need_grad = any(ctx.needs_input_grad[1:4])
        h = x.new_empty(x.shape[0], lora_a.shape[2], dtype=lora_a.dtype) if need_grad else None
        if out is None:
            result = x.new_empty(x.shape[0], d_out)
            _launch(x, lora_a, lora_b, route_tab, 0, scale, result, False, h)
        else:
            _launch(x, lora_a, lora_b, route_tab, 0, scale, out[:, start:start + d_out], True, h)
            ctx.mark_dirty(out)
            result = out
        ctx.route, ctx.route_tab, ctx.scale = tuple(route), route_tab, scale
        ctx.start, ctx.sliced = start, out is not None
        ctx.save_for_backward(x, lora_a, lora_b, h)
        return result

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, lora_a, lora_b, h = ctx.saved_tensors
        need_x, need_a, need_b = ctx.needs_input_grad[1:4]
        d_out = lora_b.shape[2]
        dout = grad[:, ctx.start:ctx.start + d_out] if ctx.sliced else grad   # (N, d_out) view
        dx = da = db = None
        if need_x or need_a:
            # g = dout @ B[k]^T (N, r) and dx = scale * g @ A[j]^T: the forward kernel with the
            # experts transposed by strides and the route table read the other way round
            g = x.new_empty(x.shape[0], lora_a.shape[2], dtype=lora_a.dtype)
            dx = x.new_empty(x.shape) if need_x else None
            _launch(dout, lora_b.transpose(1, 2), lora_a.transpose(1, 2), ctx.route_tab, 1,
                    ctx.scale, dx, False, g)
            if need_a:
                da = _stacked_grad(lora_a, [j for j, _ in ctx.route], x, g, ctx.scale)
        if need_b:  # dout may have out's dtype (say an fp32 base output): matmul needs h's
            db = _stacked_grad(lora_b, [k for _, k in ctx.route], h, dout.to(h.dtype), ctx.scale)
        # out_new = out_old + delta: the gradient of out passes through unchanged
        dout_full = grad if ctx.sliced and ctx.needs_input_grad[0] else None
        return dout_full, dx, da, db, None, None, None


def _check(x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, route: Route,
           out: torch.Tensor | None, out_slice: tuple[int, int] | None) -> int:
    """Validate shapes and route (the kernel reads expert indices unchecked); returns start."""
    if lora_a.dim() != 3 or lora_b.dim() != 3 or lora_a.shape[2] != lora_b.shape[1]:
        raise ValueError(f"lora_a {tuple(lora_a.shape)} / lora_b {tuple(lora_b.shape)} are not "
                         "(M_a, d_in, r) / (M_b, r, d_out)")
    if x.dim() < 2 or x.shape[-1] != lora_a.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} is not (B, ..., d_in={lora_a.shape[1]})")
    check_route(route, x.shape[0], lora_a.shape[0], lora_b.shape[0])
    d_out = lora_b.shape[2]
    if out is None:
        if out_slice is not None:
            raise ValueError("out_slice needs out")
        return 0
    start, stop = out_slice if out_slice is not None else (0, out.shape[-1])
    if stop - start != d_out or not 0 <= start < stop <= out.shape[-1]:
        raise ValueError(f"out_slice {start}:{stop} does not hold d_out={d_out} inside "
                         f"0:{out.shape[-1]}")
    if out.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"out {tuple(out.shape)} and x {tuple(x.shape)} differ in leading dims")
    return start


def routed_lora_delta(x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, route: Route,
                      scale: float, out: torch.Tensor | None = None,
                      out_slice: tuple[int, int] | None = None) -> torch.Tensor:
    """Routed LoRA delta on the Triton kernels, optionally added in place into an output slice.

    Args:
        x: (B, ..., d_in) on CUDA (or on CPU under the interpreter); the batch dim B splits into
            len(route) equal segments.
        lora_a: (M_a, d_in, r); lora_b: (M_b, r, d_out); both in x's dtype.
        route: one (down, up) expert pair per segment.
        scale: alpha / r.
        out: optional (B, ..., d_total) base output; ``out[..., start:stop] += delta`` in place
            (fused into the kernel) and ``out`` is returned. Columns outside the slice are not
            touched. Must be viewable as (N, d_total).
        out_slice: (start, stop) with stop - start = d_out; default the whole last dim.

    Returns:
        delta (B, ..., d_out) in x's dtype, or ``out``.

    Raises:
        ValueError / IndexError: shapes, slice or route that do not fit.
        RuntimeError: Triton missing, or CPU tensors without the interpreter.
        TypeError: x, lora_a and lora_b differ in dtype.
    """
    start = _check(x, lora_a, lora_b, route, out, out_slice)
    if triton is None:
        raise RuntimeError("routed_lora_delta needs the `triton` package")
    if not x.is_cuda and not INTERPRETED:
        raise RuntimeError("Triton on CPU tensors needs TRITON_INTERPRET=1 in the environment "
                           "before triton is first imported")
    if not (x.dtype == lora_a.dtype == lora_b.dtype):
        raise TypeError(f"x {x.dtype}, lora_a {lora_a.dtype}, lora_b {lora_b.dtype} differ")
    x2d = x.reshape(-1, x.shape[-1])
    if out is None:
        delta = RoutedLoRADelta.apply(None, x2d, lora_a, lora_b, tuple(route), scale, 0)
        return delta.view(*x.shape[:-1], lora_b.shape[2])
    # a view, so the in-place update lands in the caller's tensor (raises if out's strides
    # cannot be flattened, rather than silently updating a copy)
    RoutedLoRADelta.apply(out.view(-1, out.shape[-1]), x2d, lora_a, lora_b, tuple(route), scale,
                          start)
    return out
