"""Per-chunk values and closed-form gradients of the AdaMix loss terms.

The chunked cross entropy and consistency KL (``adamix_ds.losses``) and the fused LM-head
loss (``adamix_ds.fused_lm_loss``) all process ``c`` rows of ``V`` logits at a time. The math
of one chunk lives here, once, so the three losses cannot drift apart:

* :func:`log_softmax_` turns a chunk of logits into log-probabilities in place;
* :func:`smoothed_nll` / :func:`smoothed_nll_grad_` give the label-smoothed CE of each row and
  its gradient with respect to the logits;
* :func:`consistency_terms` gives ``KL(p||q) + KL(q||p)`` of each row and the gradients with
  respect to both rows of logits.

Every function takes float32 or float64 ``(c, V)`` tensors (the caller upcasts) and the ones
whose names end in ``_`` reuse their input's storage: a chunk costs a few ``(c, V)`` buffers,
never a ``(tokens, V)`` one. Gradients are per row (not divided by the token count); callers
scale them.

Formulas, per row, with ``p = softmax(z)``, ``eps`` the smoothing and ``y`` the target:
    nll          = -(1 - eps) log p_y - eps mean_k log p_k
    d nll / dz   = p - (1 - eps) onehot(y) - eps / V
    both         = KL(p||q) + KL(q||p) = sum_k (p_k - q_k)(log p_k - log q_k)
    stopgrad:  d/dz_p = p - q,                          d/dz_q = q - p
    symmetric: d/dz_p = p (d - KL(p||q)) + p - q,       d/dz_q = q (-d - KL(q||p)) + q - p
with ``d = log p - log q``. In ``stopgrad`` mode (the authors' form) each KL treats its target
as a constant, so only its own side carries a gradient.
"""

from __future__ import annotations

import torch


def accumulation_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 if any input is float64.

    Low-precision inputs (bf16 / fp16) are upcast because a log-softmax over a large vocabulary
    loses most of its digits in an 8-11 bit mantissa; float64 stays float64 so that
    ``torch.autograd.gradcheck`` can check the closed forms.
    """
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def log_softmax_(z: torch.Tensor) -> torch.Tensor:
    """``z`` ``(c, V)`` -> ``log softmax(z)`` written into ``z`` (returned)."""
    return z.sub_(torch.logsumexp(z, dim=-1, keepdim=True))


def smoothed_nll(log_p: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label-smoothed negative log-likelihood of each row.

    Args:
        log_p: ``(c, V)`` log-probabilities.
        targets: ``(c,)`` int64 class ids.
        smoothing: ``eps``; uniform mass ``eps / V`` on every class, the target included (the
            convention of ``F.cross_entropy(..., label_smoothing=eps)``).

    Returns:
        ``(c,)`` per-row loss.
    """
    log_p_y = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    nll = log_p_y.mul_(-(1.0 - smoothing))
    if smoothing:
        nll -= smoothing * log_p.mean(dim=-1)
    return nll


def smoothed_nll_grad_(log_p: torch.Tensor, targets: torch.Tensor, smoothing: float
                       ) -> torch.Tensor:
    """``d smoothed_nll / d z`` per row, ``(c, V)``, written into ``log_p`` (returned)."""
    grad = log_p.exp_()
    if smoothing:
        grad -= smoothing / grad.shape[-1]
    grad.scatter_add_(-1, targets.unsqueeze(-1),
                      grad.new_full((grad.shape[0], 1), -(1.0 - smoothing)))
    return grad


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` for ``(c, V)`` inputs without a ``(c, V)`` temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(a.shape[0])


def consistency_terms(log_p: torch.Tensor, log_q: torch.Tensor, symmetric: bool,
                      grad_p: bool = True, grad_q: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``KL(p||q) + KL(q||p)`` of each row and its gradients with respect to both logits.

    Args:
        log_p, log_q: ``(c, V)`` log-probabilities of the two passes; both are overwritten
            (their storage is reused for the gradients).
        symmetric: differentiate through both distributions (``"symmetric"``) instead of
            treating each KL's target as a constant (``"stopgrad"``).
        grad_p, grad_q: which gradients to compute; a False side is returned as None.

    Returns:
        ``(both, g_p, g_q)``: ``both`` ``(c,)``; ``g_p``, ``g_q`` ``(c, V)`` or None.
    """
    d = log_p - log_q  # (c, V): the one buffer besides the inputs (two in symmetric mode)
    p, q = log_p.exp_(), log_q.exp_()
    kl_pq, kl_qp = _row_dot(p, d), -_row_dot(q, d)
    both = kl_pq + kl_qp
    if not symmetric:
        diff = p.sub_(q) if (grad_p or grad_q) else None  # p - q, in p's storage
        g_q = torch.neg(diff, out=q) if grad_q else None
        return both, (diff if grad_p else None), g_q
    # p (d - KL(p||q)) + p - q = p (d - KL(p||q) + 1) - q, and the mirror image for q
    g_p = d.sub(kl_pq.unsqueeze(-1) - 1.0).mul_(p).sub_(q) if grad_p else None
    g_q = d.neg_().sub_(kl_qp.unsqueeze(-1) - 1.0).mul_(q).sub_(p) if grad_q else None
    return both, g_p, g_q
