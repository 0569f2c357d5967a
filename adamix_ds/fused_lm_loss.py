"""The AdaMix loss straight from hidden states and the LM head, in token chunks.

``adamix_loss(h1 @ W.T, h2 @ W.T, labels, w)`` needs both passes' ``(tokens, V)`` logits; at
8 x 512 tokens x 50,257 words that is 2 x 823 MB in float32 before any softmax. Here the logits
exist one chunk of rows at a time: each chunk computes its logits, the label-smoothed CE of
pass 1 and the consistency KL between the passes, and right away the gradients of the hidden
states and of the head (the closed forms of ``adamix_ds.loss_terms``), so the backward only
scales stored gradients (the fused-linear-cross-entropy scheme). The per-chunk math is
``loss_terms.adamix_chunk_``, the same as ``adamix_loss``'s.

Memory: a few ``(chunk, V)`` float32 buffers plus gradients shaped like the inputs
(``2 x tokens x d``, and ``V x d`` when the head trains), never ``O(tokens x V)``. The default
chunk (:func:`default_chunk_rows`) keeps one chunk's logits at an eighth of the head's own
size, so the buffers stay below the head-gradient that a training head needs anyway.

Per selected token (``labels != ignore_index``; n of them):
    dL/dz1 = d nll / dz1 / n + w * 0.5 / n * G1,    dL/dz2 = w * 0.5 / n * G2
with ``G1``, ``G2`` the consistency gradients of ``loss_terms.consistency_terms``; then
``dh = dz @ W`` and ``dW = dz^T h``.
"""
from __future__ import annotations

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from .loss_terms import accumulation_dtype, adamix_chunk_

#: Bounds of :func:`default_chunk_rows`: below 32 rows the matmuls get thin; above 4,096 the
#: buffers grow without making the matmuls any faster.
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 32, 4096


def default_chunk_rows(vocab: int, hidden: int, dtype: torch.dtype) -> int:
    """Rows per chunk so that one chunk's accumulation-dtype logits are at most 1/8 of the head.

    A chunk holds four to six ``(rows, V)`` buffers (logits and gradients of both passes), so at
    1/8 of the ``(V, d)`` head in its own ``dtype`` they stay below the head's own size. Rounded
    down to a power of two within ``[MIN_CHUNK_ROWS, MAX_CHUNK_ROWS]``; e.g. 128 rows for
    GPT-2 medium in float32 (V 50,257, d 1,024) and 256 for a d = 4,096 head in bfloat16.
    """
    acc_bytes = torch.finfo(accumulation_dtype(torch.empty(0, dtype=dtype))).bits // 8
    head_bytes = vocab * hidden * torch.finfo(dtype).bits // 8
    rows = max(1, head_bytes // (8 * vocab * acc_bytes))
    rows = 1 << (rows.bit_length() - 1)
    return min(max(rows, MIN_CHUNK_ROWS), MAX_CHUNK_ROWS)


class FusedAdaMixLMLoss(torch.autograd.Function):
    """loss = CE_eps(h1 W^T, y) + w * 0.5 * (KL(p1||p2) + KL(p2||p1)), means over selected tokens.

    Returns ``(loss, task, consistency)``; only ``loss`` is differentiable.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, hidden_1: torch.Tensor, hidden_2: torch.Tensor | None,  # type: ignore[override]
                weight: torch.Tensor, labels: torch.Tensor, consistency_weight: float,
                smoothing: float, mode: str, ignore_index: int, chunk_tokens: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden_* (T, d), weight (V, d), labels (T,) -> three scalars."""
        acc = accumulation_dtype(weight)
        rows = (labels != ignore_index).nonzero().squeeze(-1)
        n = rows.numel()
        need_h1, need_h2, need_w = ctx.needs_input_grad[:3]
        grad_h1 = torch.zeros_like(hidden_1) if need_h1 else None
        grad_h2 = torch.zeros_like(hidden_2) if hidden_2 is not None and need_h2 else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        task = torch.zeros((), dtype=acc, device=weight.device)
        kl = torch.zeros((), dtype=acc, device=weight.device)
        inv_n, kl_scale = 1.0 / max(n, 1), 0.5 * consistency_weight / max(n, 1)
        # the head in the accumulation dtype, once (a bf16 head is upcast here, not per chunk)
        weight_acc = weight.to(acc) if (grad_h1 is not None or grad_h2 is not None) else None
        width = min(chunk_tokens, max(n, 1))
        buffers = [torch.empty(width, weight.shape[0], dtype=acc, device=weight.device)
                   for _ in range(3 if hidden_2 is not None else 1)]  # z1 (z2, scratch)

        def logits_of(h: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
            """``(c, V)`` logits of ``h`` ``(c, d)`` in acc: written into ``buffer`` when the
            head is in acc already (no allocation per chunk), else a bf16 matmul upcast."""
            if weight.dtype == acc and h.dtype == acc:
                return torch.mm(h, weight.T, out=buffer[: h.shape[0]])
            return (h @ weight.T).to(acc)

        for start in range(0, n, chunk_tokens):
            idx = rows[start:start + chunk_tokens]
            c = idx.numel()
            h1 = hidden_1.index_select(0, idx)                       # (c, d)
            z1 = logits_of(h1, buffers[0])                           # (c, V)
            h2 = z2 = None
            if hidden_2 is not None:
                h2 = hidden_2.index_select(0, idx)
                z2 = logits_of(h2, buffers[1])
            # the logits are overwritten by dL/dz of this chunk (the shared closed forms)
            nll, both = adamix_chunk_(z1, z2, labels.index_select(0, idx), smoothing,
                                      mode == "symmetric", inv_n, kl_scale, z1, z2,
                                      buffers[2][:c] if z2 is not None else None)
            task += nll.sum()
            if both is not None:
                kl += both.sum()
            for h, dz, grad_h in ((h1, z1, grad_h1), (h2, z2, grad_h2)):
                if dz is None:
                    continue
                if grad_h is not None:
                    grad_h.index_copy_(0, idx, (dz @ weight_acc).to(grad_h.dtype))
                if grad_w is not None:
                    grad_w.addmm_(dz.T, h.to(acc))  # in place: no (V, d) temporary per chunk
        task, consistency = task * inv_n, 0.5 * kl * inv_n
        ctx.save_for_backward(*(g for g in (grad_h1, grad_h2, grad_w) if g is not None))
        ctx.present = (grad_h1 is not None, grad_h2 is not None, grad_w is not None)
        ctx.weight_dtype = weight.dtype
        loss = task + consistency_weight * consistency
        ctx.mark_non_differentiable(task, consistency)
        return loss, task, consistency

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_loss: torch.Tensor, *_: torch.Tensor):  # type: ignore[override]
        saved = iter(ctx.saved_tensors)
        grads = [next(saved) * grad_loss if present else None for present in ctx.present]
        if grads[2] is not None:
            grads[2] = grads[2].to(ctx.weight_dtype)
        return grads[0], grads[1], grads[2], None, None, None, None, None, None


def fused_adamix_lm_loss(hidden_1: torch.Tensor, hidden_2: torch.Tensor | None,
                         lm_head_weight: torch.Tensor, labels: torch.Tensor,
                         consistency_weight: float, smoothing: float = 0.0,
                         mode: str = "stopgrad", ignore_index: int = -100,
                         chunk_tokens: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The AdaMix objective from hidden states: ``(loss, task_loss, consistency)``.

    Args:
        hidden_1, hidden_2: ``(..., d)`` final hidden states of the two routed passes, already
            aligned with ``labels`` (shifted for causal LM); ``hidden_2=None``: task loss only.
        lm_head_weight: ``(V, d)`` (``nn.Linear`` layout; GPT-2 ties it to ``wte``).
        labels: ``(...)`` int64 targets, ``ignore_index`` where no loss is taken.
        consistency_weight, smoothing, mode: as ``adamix_ds.losses.adamix_loss``.
        chunk_tokens: rows per chunk (memory is ``O(chunk_tokens x V)``); None picks
            :func:`default_chunk_rows` from the head's shape and dtype.
    """
    if mode not in ("stopgrad", "symmetric"):
        raise ValueError(f"mode must be 'stopgrad' or 'symmetric', got {mode!r}")
    vocab, d = lm_head_weight.shape
    if chunk_tokens is None:
        chunk_tokens = default_chunk_rows(vocab, d, lm_head_weight.dtype)
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if hidden_1.shape[-1] != d or (hidden_2 is not None and hidden_2.shape != hidden_1.shape):
        raise ValueError(f"hidden states {tuple(hidden_1.shape)} / "
                         f"{None if hidden_2 is None else tuple(hidden_2.shape)} do not fit a "
                         f"head of width {d}")
    if labels.shape != hidden_1.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match hidden states "
                         f"{tuple(hidden_1.shape)}")
    flat_2 = None if hidden_2 is None else hidden_2.reshape(-1, d)
    return FusedAdaMixLMLoss.apply(hidden_1.reshape(-1, d), flat_2, lm_head_weight,
                                   labels.reshape(-1), consistency_weight, smoothing, mode,
                                   ignore_index, chunk_tokens)
