"""Training losses for AdaMix (Mixture-of-Adaptations, Wang et al., EMNLP 2022).

AdaMix trains with stochastic routing: every step runs the model twice, each
pass picking random adaptation modules, and adds a consistency regulariser
that pulls the two predictive distributions together:

    loss = CE(pass_1, labels) + w * 0.5 * (KL(p1 || p2) + KL(p2 || p1))

Language-model vocabularies make ``tokens x V`` float32 tensors the largest
activations in the step, so the losses here are ``torch.autograd.Function``
objects that select the tokens that count (``labels != ignore_index`` /
``mask``) before doing any work, so padding costs nothing, and process them a
block of rows at a time, upcasting only one block to float32 at once.

* :func:`adamix_loss` / :func:`adamix_loss_stacked` (the training objective)
  compute the gradient in the forward, from one softmax per pass and row
  (``loss_terms.adamix_chunk_``), and keep it in a buffer of the logits' own
  dtype -- or in the logits' own storage (``reuse_logits``) -- which the
  backward only scales. A block of contiguous rows (a sequence's targets) is a
  slice, not a copy; on CPU blocks are a few MiB so that they stay in cache.
* :func:`label_smoothed_cross_entropy` and :func:`consistency_kl` (one term
  each, differentiable on their own) save only their inputs and recompute the
  softmaxes in the backward.

Extra memory is therefore ``O(chunk_tokens x V)`` float32 plus at most one
gradient buffer of the logits' own dtype, instead of several ``tokens x V``
float32 tensors.

Shapes: ``...`` is any number of leading dims (typically ``(batch, seq)``),
``V`` the vocabulary / class count, ``T`` the flattened number of tokens
(``prod(...)``) and ``N`` the number of tokens that count.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from .fused_lm_loss import fused_adamix_lm_loss
from .loss_terms import (
    accumulation_dtype,
    adamix_chunk_,
    consistency_terms,
    log_softmax_,
    smoothed_nll,
    smoothed_nll_grad_,
)

__all__ = [
    "KL_MODES",
    "AdaMixLossOutput",
    "adamix_loss",
    "adamix_loss_stacked",
    "consistency_kl",
    "fused_adamix_lm_loss",
    "label_smoothed_cross_entropy",
]

#: Allowed values of the ``mode`` argument of :func:`consistency_kl`.
KL_MODES: tuple[str, ...] = ("stopgrad", "symmetric")


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------
def _chunk_bounds(n: int, chunk: int) -> Iterator[tuple[int, int]]:
    """Yield ``(start, end)`` pairs covering ``range(n)`` in steps of ``chunk``."""
    for start in range(0, n, chunk):
        yield start, min(start + chunk, n)


def _check_chunk_tokens(chunk_tokens: int) -> None:
    if not isinstance(chunk_tokens, int) or isinstance(chunk_tokens, bool) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be a positive int, got chunk_tokens={chunk_tokens!r}")


def _check_mode(mode: str) -> None:
    if mode not in KL_MODES:
        raise ValueError(f"mode must be one of {KL_MODES}, got mode={mode!r}")


def _check_logits(name: str, logits: torch.Tensor) -> None:
    if not torch.is_floating_point(logits):
        raise TypeError(f"{name} must be a floating point tensor, got dtype {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{name} must have shape (..., V) with V >= 1, got {tuple(logits.shape)}")


def _selected_rows(
    mask: torch.Tensor | None, logits_shape: torch.Size, device: torch.device
) -> torch.Tensor:
    """Flat indices of the tokens that count.

    Args:
        mask: ``(...)`` bool, or None meaning "every token".
        logits_shape: ``(..., V)``; ``mask`` must equal ``logits_shape[:-1]``.

    Returns:
        ``(N,)`` int64 indices into the flattened ``(T,)`` token axis.
    """
    token_shape = logits_shape[:-1]
    if mask is None:
        return torch.arange(token_shape.numel(), device=device)
    if mask.dtype != torch.bool:
        # A bool mask is required so that e.g. passing raw labels by mistake
        # fails loudly instead of silently selecting every non-zero label.
        raise TypeError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.shape != token_shape:
        raise ValueError(
            f"mask must have the logits' token shape {tuple(token_shape)}, "
            f"got mask.shape={tuple(mask.shape)}"
        )
    return mask.reshape(-1).nonzero().squeeze(1).to(device)


# --------------------------------------------------------------------------
# Label-smoothed cross entropy
# --------------------------------------------------------------------------
class _ChunkedLabelSmoothedCE(torch.autograd.Function):
    """Mean label-smoothed CE over selected rows, chunked over tokens.

    Per token ``(1 - eps) * (-log p_y) + eps * mean_k(-log p_k)``, with the gradient
    ``softmax(z) - (1 - eps) * onehot(y) - eps / V`` (``loss_terms.smoothed_nll[_grad_]``).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        logits: torch.Tensor,
        rows: torch.Tensor,
        targets: torch.Tensor,
        smoothing: float,
        chunk_tokens: int,
    ) -> torch.Tensor:
        """logits ``(..., V)``, rows ``(N,)`` int64, targets ``(N,)`` int64 -> scalar."""
        acc = accumulation_dtype(logits)
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)  # a view for contiguous logits
        n = rows.numel()
        total = torch.zeros((), dtype=acc, device=logits.device)
        for s, e in _chunk_bounds(n, chunk_tokens):
            # index_select copies, so the in-place math below never touches the logits
            log_p = log_softmax_(flat.index_select(0, rows[s:e]).to(acc))  # (c, V)
            total += smoothed_nll(log_p, targets[s:e], smoothing).sum()
        ctx.save_for_backward(logits, rows, targets)
        ctx.smoothing = smoothing
        ctx.chunk_tokens = chunk_tokens
        # N = 0: the sum is 0 and dividing by max(N, 1) keeps it 0 instead of NaN.
        return total / max(n, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        logits, rows, targets = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        acc = accumulation_dtype(logits)
        vocab = logits.shape[-1]
        eps: float = ctx.smoothing
        flat = logits.reshape(-1, vocab)
        n = rows.numel()
        # Unselected (ignored) tokens keep an exact zero gradient.
        grad = torch.zeros(flat.shape, dtype=flat.dtype, device=flat.device)
        scale = grad_out.to(acc) / max(n, 1)
        for s, e in _chunk_bounds(n, ctx.chunk_tokens):
            log_p = log_softmax_(flat.index_select(0, rows[s:e]).to(acc))
            g = smoothed_nll_grad_(log_p, targets[s:e], eps).mul_(scale)
            grad.index_copy_(0, rows[s:e], g.to(grad.dtype))
        return grad.view(logits.shape), None, None, None, None


def _flat_labels(labels: torch.Tensor, vocab: int, ignore_index: int, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, targets)``: flat indices of the tokens that count and their class ids."""
    if labels.dtype == torch.bool or torch.is_floating_point(labels) or torch.is_complex(labels):
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    flat = labels.reshape(-1).to(device=device, dtype=torch.int64)
    valid = flat != ignore_index
    # gather() with an out-of-range id is a device-side assert on GPU; a clear
    # Python error is far easier to debug (e.g. padding with -1 but ignore_index=-100).
    if bool(((flat < 0) | (flat >= vocab)).logical_and(valid).any()):
        raise ValueError(f"labels must be in [0, {vocab}) or equal ignore_index={ignore_index}")
    rows = valid.nonzero().squeeze(1)
    return rows, flat.index_select(0, rows)


def label_smoothed_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    smoothing: float = 0.0,
    ignore_index: int = -100,
    chunk_tokens: int = 1024,
) -> torch.Tensor:
    """Mean label-smoothed cross entropy over non-ignored tokens.

    Per token: ``(1 - eps) * (-log p_y) + eps * mean_k(-log p_k)``; this is the
    same convention as ``F.cross_entropy(..., label_smoothing=eps)`` (uniform
    mass ``eps / V`` on every class, the target included).

    Args:
        logits: ``(..., V)`` any float dtype. Already aligned with ``labels``
            (for causal LMs the caller shifts).
        labels: ``(...)`` int64 class ids in ``[0, V)`` or ``ignore_index``.
        smoothing: ``eps`` in ``[0, 1]``.
        ignore_index: label value that contributes neither loss nor gradient.
        chunk_tokens: at most this many tokens are upcast to float32 at once.

    Returns:
        Scalar float32 (float64 for float64 logits). If no token is valid the
        result is 0 (still attached to the graph, with zero gradients).
    """
    _check_logits("logits", logits)
    _check_chunk_tokens(chunk_tokens)
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got smoothing={smoothing!r}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape logits.shape[:-1]={tuple(logits.shape[:-1])}, "
            f"got labels.shape={tuple(labels.shape)}"
        )
    rows, targets = _flat_labels(labels, logits.shape[-1], ignore_index, logits.device)
    return _ChunkedLabelSmoothedCE.apply(logits, rows, targets, float(smoothing), chunk_tokens)


# --------------------------------------------------------------------------
# Consistency regularisation (symmetric KL between two passes)
# --------------------------------------------------------------------------
class _ChunkedConsistencyKL(torch.autograd.Function):
    """``0.5 * mean_rows(KL(p||q) + KL(q||p))`` with closed-form, chunked backward.

    Per token, with ``d = log p - log q``:
        KL(p||q) + KL(q||p) = sum_k (p_k - q_k) * d_k
    Gradients (before the ``0.5 / N`` factor):
        stopgrad : dz_p = p - q,                       dz_q = q - p
        symmetric: dz_p = p * (d - KL(p||q)) + p - q,  dz_q = q * (-d - KL(q||p)) + q - p
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        logits_p: torch.Tensor,
        logits_q: torch.Tensor,
        rows: torch.Tensor,
        mode: str,
        chunk_tokens: int,
    ) -> torch.Tensor:
        """logits_p, logits_q ``(..., V)``, rows ``(N,)`` int64 -> scalar."""
        acc = accumulation_dtype(logits_p, logits_q)
        vocab = logits_p.shape[-1]
        flat_p = logits_p.reshape(-1, vocab)
        flat_q = logits_q.reshape(-1, vocab)
        n = rows.numel()
        total = torch.zeros((), dtype=acc, device=logits_p.device)
        for s, e in _chunk_bounds(n, chunk_tokens):
            idx = rows[s:e]
            log_p = log_softmax_(flat_p.index_select(0, idx).to(acc))
            log_q = log_softmax_(flat_q.index_select(0, idx).to(acc))
            total += consistency_terms(log_p, log_q, False, grad_p=False, grad_q=False)[0].sum()
        # Only the inputs are saved; the backward recomputes the softmaxes, so
        # no (tokens x V) float32 tensor outlives the forward.
        ctx.save_for_backward(logits_p, logits_q, rows)
        ctx.mode = mode
        ctx.chunk_tokens = chunk_tokens
        return 0.5 * total / max(n, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        logits_p, logits_q, rows = ctx.saved_tensors
        need_p, need_q = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_p or need_q):
            return None, None, None, None, None
        acc = accumulation_dtype(logits_p, logits_q)
        vocab = logits_p.shape[-1]
        flat_p = logits_p.reshape(-1, vocab)
        flat_q = logits_q.reshape(-1, vocab)
        n = rows.numel()
        symmetric = ctx.mode == "symmetric"
        # Gradient buffers in the inputs' own dtype; masked-out rows stay 0.
        grad_p = (
            torch.zeros(flat_p.shape, dtype=flat_p.dtype, device=flat_p.device) if need_p else None
        )
        grad_q = (
            torch.zeros(flat_q.shape, dtype=flat_q.dtype, device=flat_q.device) if need_q else None
        )
        scale = 0.5 * grad_out.to(acc) / max(n, 1)
        for s, e in _chunk_bounds(n, ctx.chunk_tokens):
            idx = rows[s:e]
            log_p = log_softmax_(flat_p.index_select(0, idx).to(acc))
            log_q = log_softmax_(flat_q.index_select(0, idx).to(acc))
            _, g_p, g_q = consistency_terms(
                log_p, log_q, symmetric, grad_p=grad_p is not None, grad_q=grad_q is not None
            )
            if g_p is not None:
                grad_p.index_copy_(0, idx, g_p.mul_(scale).to(grad_p.dtype))
            if g_q is not None:
                grad_q.index_copy_(0, idx, g_q.mul_(scale).to(grad_q.dtype))
        return (
            grad_p.view(logits_p.shape) if grad_p is not None else None,
            grad_q.view(logits_q.shape) if grad_q is not None else None,
            None,
            None,
            None,
        )


def _check_pair(logits_p: torch.Tensor, logits_q: torch.Tensor, mode: str) -> None:
    _check_mode(mode)
    _check_logits("logits_p", logits_p)
    _check_logits("logits_q", logits_q)
    if logits_p.shape != logits_q.shape:
        raise ValueError(
            "logits_p and logits_q must have the same shape, got "
            f"logits_p.shape={tuple(logits_p.shape)} and logits_q.shape={tuple(logits_q.shape)}"
        )


def consistency_kl(
    logits_p: torch.Tensor,
    logits_q: torch.Tensor,
    mask: torch.Tensor | None = None,
    mode: str = "stopgrad",
    chunk_tokens: int = 1024,
) -> torch.Tensor:
    """AdaMix consistency loss: mean over masked tokens of ``0.5 * (KL(p||q) + KL(q||p))``.

    ``p = softmax(logits_p)``, ``q = softmax(logits_q)``, ``KL(a||b) = sum a (log a - log b)``.

    Modes (same value, different gradients):
        * ``"stopgrad"`` (default, as in the authors' code):
          ``0.5 * (KL(sg(q)||p) + KL(sg(p)||q))`` -- each KL treats its target as
          a constant, giving ``d/dlogits_p = 0.5 (p - q) / N`` and
          ``d/dlogits_q = 0.5 (q - p) / N``.
        * ``"symmetric"``: the plain symmetric KL, differentiated through both
          distributions.

    Args:
        logits_p: ``(..., V)`` logits of pass 1, any float dtype.
        logits_q: ``(..., V)`` logits of pass 2, same shape.
        mask: ``(...)`` bool, True for tokens that count; None means all.
        mode: one of :data:`KL_MODES`.
        chunk_tokens: tokens processed at once; peak extra memory is about
            ``chunk_tokens x V`` float32 (times a small constant).

    Returns:
        Scalar float32 (float64 if an input is float64). With no masked token
        it is 0 and all gradients are 0.

    Logits must be finite: a ``-inf`` logit in both passes gives ``0 * nan``.
    """
    _check_pair(logits_p, logits_q, mode)
    _check_chunk_tokens(chunk_tokens)
    rows = _selected_rows(mask, logits_p.shape, logits_p.device)
    return _ChunkedConsistencyKL.apply(logits_p, logits_q, rows, mode, chunk_tokens)


# --------------------------------------------------------------------------
# Combined AdaMix objective
# --------------------------------------------------------------------------
@dataclass
class AdaMixLossOutput:
    """Result of :func:`adamix_loss`; all fields are scalar tensors.

    Attributes:
        loss: ``task_loss + consistency_weight * consistency`` (to backprop).
        task_loss: label-smoothed CE of pass 1.
        consistency: symmetric-KL consistency term (0 with a single pass).
    """

    loss: torch.Tensor
    task_loss: torch.Tensor
    consistency: torch.Tensor

    def scaled(self, factor: float | torch.Tensor) -> AdaMixLossOutput:
        """Every term times ``factor`` (a float, or a 0-dim tensor that stays on its device)."""
        if not isinstance(factor, torch.Tensor) and factor == 1.0:
            return self
        return AdaMixLossOutput(self.loss * factor, self.task_loss * factor,
                                self.consistency * factor)


def _row_blocks(rows: torch.Tensor, chunk: int) -> list[tuple[int, int, int | None]]:
    """Blocks of at most ``chunk`` selected rows: ``(start, end, first_row)`` over ``rows``.

    ``first_row`` is ``rows[start]`` when ``rows[start:end]`` is a contiguous range of rows (a
    slice of the logits then serves, no copy), else None (the rows are gathered). Runs of
    consecutive rows -- a sequence's target tokens -- become blocks of their own unless they are
    shorter than 16 rows on average, where gathering fixed chunks is cheaper.

    Args:
        rows: ``(N,)`` sorted int64 row indices.
    """
    n = rows.numel()
    if n == 0:
        return []
    run_starts = [0, *((rows[1:] - rows[:-1] != 1).nonzero().squeeze(1) + 1).tolist()]
    if n < 16 * len(run_starts) and chunk > 1:
        return [(s, e, None) for s, e in _chunk_bounds(n, chunk)]
    firsts = rows.index_select(0, torch.tensor(run_starts, device=rows.device)).tolist()
    blocks = []
    for start, end, first in zip(run_starts, [*run_starts[1:], n], firsts, strict=True):
        for s, e in _chunk_bounds(end - start, chunk):
            blocks.append((start + s, start + e, first + s))
    return blocks


def _unselected(count: int, *row_sets: torch.Tensor) -> torch.Tensor:
    """``(K,)`` indices in ``range(count)`` that are in none of ``row_sets``."""
    keep = torch.zeros(count, dtype=torch.bool, device=row_sets[0].device)
    for rows in row_sets:
        keep[rows] = True
    return (~keep).nonzero().squeeze(1)


class _AdaMixLogitsLoss(torch.autograd.Function):
    """``CE_eps(pass 1) + w * consistency`` over selected rows, gradients computed in forward.

    ``logits`` ``(R, V)`` holds pass 1's rows; pass 2's rows are in ``other`` ``(R2, V)``, or at
    ``rows + pair_offset`` of ``logits`` itself when ``other`` is None and ``pair_offset > 0``
    (the paired forward's stacked output, whose gradient is then one buffer); no second pass
    when both are absent. The forward runs each block of rows once through
    ``loss_terms.adamix_chunk_`` and keeps the gradient (in the logits' dtype; in the logits'
    own storage with ``reuse_logits``); the backward only scales it, in place.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, logits: torch.Tensor, other: torch.Tensor | None,  # type: ignore[override]
                rows: torch.Tensor, targets: torch.Tensor, pair_offset: int,
                consistency_weight: float, smoothing: float, symmetric: bool, chunk: int,
                reuse_logits: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        acc = accumulation_dtype(logits)
        two = other is not None or pair_offset > 0
        second = other if other is not None else logits
        need_1, need_2 = ctx.needs_input_grad[0], other is not None and ctx.needs_input_grad[1]
        n = rows.numel()
        task_scale, kl_scale = 1.0 / max(n, 1), 0.5 * consistency_weight / max(n, 1)

        def grad_buffer(flat: torch.Tensor, *row_sets: torch.Tensor) -> torch.Tensor:
            grad = flat if reuse_logits else torch.empty_like(flat)
            grad.index_fill_(0, _unselected(flat.shape[0], *row_sets), 0)  # exact zeros
            return grad

        offset_rows = rows + pair_offset
        grad_1 = (grad_buffer(logits, rows, *((offset_rows,) if other is None and two else ()))
                  if need_1 else None)
        grad_2 = grad_buffer(other, rows) if need_2 else None
        grad_of_second = grad_2 if other is not None else grad_1
        shape = (min(chunk, max(n, 1)), logits.shape[-1])
        scratch = torch.empty(shape, dtype=acc, device=logits.device) if two else None
        # per-pass block buffers, made on first use: a run of contiguous float32 blocks with
        # gradients needs none (on a GPU one is 1,024 x V float32)
        made: dict[int, torch.Tensor] = {}

        def block_buffer(pass_id: int) -> torch.Tensor:
            if pass_id not in made:
                made[pass_id] = torch.empty(shape, dtype=acc, device=logits.device)
            return made[pass_id]
        task = torch.zeros((), dtype=acc, device=logits.device)
        kl = torch.zeros((), dtype=acc, device=logits.device)

        def rows_of(flat: torch.Tensor, grad: torch.Tensor | None, first: int | None,
                    idx: torch.Tensor, pass_id: int) -> tuple[torch.Tensor, torch.Tensor]:
            """(this block's logits in acc, the buffer its gradient is written to) for one pass:
            a slice of the logits when the block is a contiguous range in the accumulation dtype
            (the gradient then goes straight to its slice of ``grad``), else a copy in the
            pass's block buffer that takes the gradient in place."""
            c = idx.numel()
            if first is not None and flat.dtype == acc:
                z = flat[first:first + c]
                if grad is not None and grad.dtype == acc:
                    return z, grad[first:first + c]        # grad may be z itself (reuse_logits)
                return z, block_buffer(pass_id)[:c]
            z = block_buffer(pass_id)[:c]
            z.copy_(flat[first:first + c] if first is not None else flat.index_select(0, idx))
            return z, z

        def store(grad: torch.Tensor | None, first: int | None, idx: torch.Tensor,
                  out: torch.Tensor) -> None:
            """Put a block's gradient ``out`` into its rows of ``grad`` unless already there."""
            c = idx.numel()
            if grad is None:
                return
            if first is not None:
                target = grad[first:first + c]
                if target.data_ptr() != out.data_ptr():
                    target.copy_(out)
            else:
                grad.index_copy_(0, idx, out.to(grad.dtype))

        for s, e, first in _row_blocks(rows, chunk):
            idx = rows[s:e]
            z1, out_1 = rows_of(logits, grad_1, first, idx, 0)
            z2 = out_2 = None
            first_2 = None if first is None else first + pair_offset
            if two:
                z2, out_2 = rows_of(second, grad_of_second, first_2, idx + pair_offset, 1)
            nll, both = adamix_chunk_(z1, z2, targets[s:e], smoothing, symmetric, task_scale,
                                      kl_scale, out_1, out_2,
                                      None if scratch is None else scratch[: e - s])
            task += nll.sum()
            if both is not None:
                kl += both.sum()
            store(grad_1, first, idx, out_1)
            if two:
                store(grad_of_second, first_2, idx + pair_offset, out_2)
        task, consistency = task * task_scale, 0.5 * kl * task_scale
        ctx.save_for_backward(*(g for g in (grad_1, grad_2) if g is not None))
        ctx.present = (grad_1 is not None, grad_2 is not None)
        ctx.mark_non_differentiable(task, consistency)
        return task + consistency_weight * consistency, task, consistency

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_loss: torch.Tensor, *_: torch.Tensor):  # type: ignore[override]
        if getattr(ctx, "consumed", False):
            raise RuntimeError("adamix_loss keeps one gradient buffer and scales it in place: "
                               "backward through it runs once (no retain_graph reuse)")
        ctx.consumed = True
        saved = iter(ctx.saved_tensors)
        grads = [next(saved).mul_(grad_loss) if present else None
                 for present in ctx.present]
        return grads[0], grads[1], None, None, None, None, None, None, None, None


def default_logit_chunk_rows(vocab: int, device: torch.device | str) -> int:
    """Rows per block of :func:`adamix_loss`: 1,024 on accelerators; on CPU as many as keep one
    float32 ``(rows, V)`` buffer near 4 MiB (at least 8), where caches and the allocator's reuse
    of freed blocks make small blocks faster than large ones."""
    if torch.device(device).type != "cpu":
        return 1024
    rows = max(8, (4 << 20) // (4 * vocab))
    return 1 << (rows.bit_length() - 1)


def adamix_loss(
    logits_1: torch.Tensor,
    logits_2: torch.Tensor | None,
    labels: torch.Tensor,
    consistency_weight: float,
    smoothing: float = 0.0,
    mode: str = "stopgrad",
    ignore_index: int = -100,
    chunk_tokens: int | None = None,
    reuse_logits: bool = False,
) -> AdaMixLossOutput:
    """AdaMix training objective for two stochastically routed forward passes.

    The gradient is computed in the forward, one block of rows at a time, from softmaxes (no
    log-softmax, no recomputation in the backward); only ``loss`` is differentiable, the two
    terms are for logging (``label_smoothed_cross_entropy`` and ``consistency_kl`` give
    differentiable terms one at a time).

    Args:
        logits_1: ``(..., V)`` logits of pass 1; the task loss uses this pass only.
        logits_2: ``(..., V)`` logits of pass 2, or None (e.g. evaluation or a
            single-pass step): then the consistency term is 0.
        labels: ``(...)`` int64, aligned with the logits; tokens equal to
            ``ignore_index`` are excluded from both terms.
        consistency_weight: weight ``w`` of the consistency term.
        smoothing, mode, ignore_index: as :func:`label_smoothed_cross_entropy` /
            :func:`consistency_kl`.
        chunk_tokens: rows per block (None: :func:`default_logit_chunk_rows`).
        reuse_logits: write the gradient into the logits' own storage (they hold garbage
            afterwards): one logits-sized buffer less, for callers that own their logits.

    Returns:
        :class:`AdaMixLossOutput` with ``loss = task_loss + w * consistency``.
    """
    _check_mode(mode)  # fail early even when logits_2 is None
    _check_logits("logits_1", logits_1)
    if logits_2 is not None:
        _check_pair(logits_1, logits_2, mode)
    if labels.shape != logits_1.shape[:-1]:
        raise ValueError(
            f"labels must have shape logits.shape[:-1]={tuple(logits_1.shape[:-1])}, "
            f"got labels.shape={tuple(labels.shape)}"
        )
    return _logits_loss(logits_1, logits_2, 0, labels, consistency_weight, smoothing, mode,
                        ignore_index, chunk_tokens, reuse_logits)


def adamix_loss_stacked(
    logits: torch.Tensor,
    labels: torch.Tensor,
    consistency_weight: float,
    smoothing: float = 0.0,
    mode: str = "stopgrad",
    ignore_index: int = -100,
    chunk_tokens: int | None = None,
    reuse_logits: bool = False,
) -> AdaMixLossOutput:
    """:func:`adamix_loss` of ``logits[0]`` and ``logits[1]``, for the paired forward's output.

    Same values and gradients as ``adamix_loss(logits[0], logits[1], ...)``, but the gradient
    is one ``(2, ..., V)`` buffer, not two halves that autograd would concatenate.

    Args:
        logits: ``(2, ..., V)``: pass 1 then pass 2 (``out.unflatten(0, (2, -1))`` of a forward
            over ``cat(batch, batch)``); contiguous.
        labels: ``(...)``, aligned with each pass's logits.
    """
    _check_mode(mode)
    _check_logits("logits", logits)
    if logits.dim() < 2 or logits.shape[0] != 2 or labels.shape != logits.shape[1:-1]:
        raise ValueError(f"logits must be (2, ..., V) with labels (...) = logits.shape[1:-1]; "
                         f"got logits {tuple(logits.shape)}, labels {tuple(labels.shape)}")
    if not logits.is_contiguous():
        raise ValueError("logits must be contiguous (pass 2's rows follow pass 1's)")
    return _logits_loss(logits, None, labels.numel(), labels, consistency_weight, smoothing,
                        mode, ignore_index, chunk_tokens, reuse_logits)


def _logits_loss(logits: torch.Tensor, other: torch.Tensor | None, pair_offset: int,
                 labels: torch.Tensor, consistency_weight: float, smoothing: float, mode: str,
                 ignore_index: int, chunk_tokens: int | None, reuse_logits: bool
                 ) -> AdaMixLossOutput:
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got smoothing={smoothing!r}")
    vocab = logits.shape[-1]
    if chunk_tokens is None:
        chunk_tokens = default_logit_chunk_rows(vocab, logits.device)
    _check_chunk_tokens(chunk_tokens)
    rows, targets = _flat_labels(labels, vocab, ignore_index, logits.device)
    flat = logits.reshape(-1, vocab)
    if reuse_logits and flat.data_ptr() != logits.data_ptr():
        raise ValueError("reuse_logits needs logits whose (-1, V) view shares their storage")
    flat_other = None if other is None else other.reshape(-1, vocab)
    loss, task, consistency = _AdaMixLogitsLoss.apply(
        flat, flat_other, rows, targets, pair_offset, float(consistency_weight),
        float(smoothing), mode == "symmetric", chunk_tokens, reuse_logits)
    return AdaMixLossOutput(loss=loss, task_loss=task, consistency=consistency)
