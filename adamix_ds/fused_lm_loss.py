"""The AdaMix loss straight from hidden states and the LM head, in token chunks.

``adamix_loss(h1 @ W.T, h2 @ W.T, labels, w)`` needs both passes' ``(tokens, V)`` logits; at
8 x 512 tokens x 50,257 words that is 2 x 823 MB in float32 before any softmax. Here the logits
exist one chunk of ``chunk_tokens`` rows at a time: each chunk computes its logits, the
label-smoothed CE of pass 1 and the consistency KL between the passes, and right away the
gradients of the hidden states and of the head (closed forms, as in ``adamix_ds.losses``), so
the backward only scales stored gradients (the fused-linear-cross-entropy scheme).

Memory: ``O(chunk x V)`` float32 for one chunk plus gradients shaped like the inputs
(``2 x tokens x d`` and ``V x d`` when the head trains), never ``O(tokens x V)``.

Per selected token (``labels != ignore_index``; n of them), with ``p1 = softmax(z1)``:
    dL/dz1 = (p1 - (1 - eps) onehot(y) - eps / V) / n + w * 0.5 / n * G1
    dL/dz2 = w * 0.5 / n * G2
    stopgrad:  G1 = p1 - p2,                         G2 = p2 - p1
    symmetric: G1 = p1 * (d - KL(p1||p2)) + p1 - p2, G2 = p2 * (-d - KL(p2||p1)) + p2 - p1
with ``d = log p1 - log p2``; then ``dh = dz @ W`` and ``dW = dz^T h``.
"""
from __future__ import annotations

import torch
from torch.autograd.function import FunctionCtx, once_differentiable


def _consistency_grads(log_p: torch.Tensor, log_q: torch.Tensor, symmetric: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-row KL(p||q) + KL(q||p), G_p, G_q) for one chunk, all float32/64."""
    p, q = log_p.exp(), log_q.exp()
    d = log_p - log_q
    diff = p - q
    both = (diff * d).sum(-1)
    if not symmetric:
        return both, diff, -diff
    kl_pq = (p * d).sum(-1, keepdim=True)
    kl_qp = -(q * d).sum(-1, keepdim=True)
    return both, p * (d - kl_pq) + diff, q * (-d - kl_qp) - diff


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
        acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
        rows = (labels != ignore_index).nonzero().squeeze(-1)
        n, vocab = rows.numel(), weight.shape[0]
        need_h1, need_h2, need_w = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            ctx.needs_input_grad[2],
        )
        grad_h1 = torch.zeros_like(hidden_1) if need_h1 else None
        grad_h2 = torch.zeros_like(hidden_2) if hidden_2 is not None and need_h2 else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        task = torch.zeros((), dtype=acc, device=weight.device)
        kl = torch.zeros((), dtype=acc, device=weight.device)
        inv_n, half_w = 1.0 / max(n, 1), 0.5 * consistency_weight
        # the head in the accumulation dtype, once (a bf16 head is upcast here, not per chunk)
        weight_acc = weight.to(acc) if (need_h1 or need_h2) else None
        for start in range(0, n, chunk_tokens):
            idx = rows[start:start + chunk_tokens]
            h1 = hidden_1.index_select(0, idx)                       # (c, d)
            z1 = (h1 @ weight.T).to(acc)                             # (c, V): the only big buffer
            log_p1 = torch.log_softmax(z1, dim=-1)
            target = labels.index_select(0, idx)
            nll = -log_p1.gather(-1, target[:, None]).squeeze(-1)
            task += ((1 - smoothing) * nll - smoothing * log_p1.mean(-1)).sum()
            dz1 = log_p1.exp()
            dz1 -= smoothing / vocab
            dz1.scatter_add_(-1, target[:, None], dz1.new_full((idx.numel(), 1), smoothing - 1))
            dz1 *= inv_n
            dz2 = None
            if hidden_2 is not None:
                h2 = hidden_2.index_select(0, idx)
                log_p2 = torch.log_softmax((h2 @ weight.T).to(acc), dim=-1)
                both, g1, g2 = _consistency_grads(log_p1, log_p2, mode == "symmetric")
                kl += both.sum()
                dz1 += (half_w * inv_n) * g1
                dz2 = (half_w * inv_n) * g2
            if grad_h1 is not None:
                grad_h1.index_copy_(0, idx, (dz1 @ weight_acc).to(grad_h1.dtype))
            if grad_w is not None:
                grad_w += dz1.T @ h1.to(acc)
            if dz2 is not None:
                if grad_h2 is not None:
                    grad_h2.index_copy_(0, idx, (dz2 @ weight_acc).to(grad_h2.dtype))
                if grad_w is not None:
                    grad_w += dz2.T @ h2.to(acc)
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
                         chunk_tokens: int = 1024
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The AdaMix objective from hidden states: ``(loss, task_loss, consistency)``.

    Args:
        hidden_1, hidden_2: ``(..., d)`` final hidden states of the two routed passes, already
            aligned with ``labels`` (shifted for causal LM); ``hidden_2=None``: task loss only.
        lm_head_weight: ``(V, d)`` (``nn.Linear`` layout; GPT-2 ties it to ``wte``).
        labels: ``(...)`` int64 targets, ``ignore_index`` where no loss is taken.
        consistency_weight, smoothing, mode: as ``adamix_ds.losses.adamix_loss``.
        chunk_tokens: rows per chunk; memory is ``O(chunk_tokens x V)``.
    """
    if mode not in ("stopgrad", "symmetric"):
        raise ValueError(f"mode must be 'stopgrad' or 'symmetric', got {mode!r}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    d = lm_head_weight.shape[1]
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
