"""Per-chunk values and closed-form gradients of the AdaMix loss terms.

The chunked cross entropy and consistency KL (``adamix_ds.losses``) and the fused LM-head
loss (``adamix_ds.fused_lm_loss``) all process ``c`` rows of ``V`` logits at a time. The math
of one chunk lives here, once, so the three losses cannot drift apart:

* :func:`log_softmax_` turns a chunk of logits into log-probabilities in place;
* :func:`smoothed_nll` / :func:`smoothed_nll_grad_` give the label-smoothed CE of each row and
  its gradient with respect to the logits;
* :func:`consistency_terms` gives ``KL(p||q) + KL(q||p)`` of each row and the gradients with
  respect to both rows of logits;
* :func:`adamix_chunk_` does the whole AdaMix objective of one chunk from its logits (values and
  the gradient of ``task_scale * sum(nll) + kl_scale * sum(both)``) with softmaxes instead of
  log-softmaxes: it is what the losses that compute their gradients in the forward run.

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
    # the fused kernel, in place: on CPU about half the time of ``z - logsumexp(z)``
    return torch.log_softmax(z, dim=-1, out=z)


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


def _softmax_lse(z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``softmax(z)`` into ``out`` (which may be ``z`` itself); returns ``logsumexp(z)`` ``(c,)``.

    The log-normaliser comes from the row's largest logit: ``lse = z_max - log p_max``, and
    ``p_max >= 1 / V`` never underflows, so no separate (slow) ``logsumexp`` pass is needed.
    ``out`` ``(c, V)``; ``z`` is read before ``out`` is written.
    """
    top = z.amax(dim=-1)  # amax, not max: on CPU the index search costs ten times the pass
    torch.softmax(z, dim=-1, out=out)
    return top - out.amax(dim=-1).log()


def _sub_smoothed_targets_(grad: torch.Tensor, targets: torch.Tensor, smoothing: float,
                           scale: float) -> None:
    """``grad -= scale * ((1 - eps) onehot(y) + eps / V)``, in place (the CE gradient's
    constant part)."""
    if smoothing:
        grad.sub_(scale * smoothing / grad.shape[-1])
    grad.scatter_add_(-1, targets.unsqueeze(-1),
                      grad.new_full((grad.shape[0], 1), -scale * (1.0 - smoothing)))


def adamix_chunk_(z1: torch.Tensor, z2: torch.Tensor | None, targets: torch.Tensor,
                  smoothing: float, symmetric: bool, task_scale: float, kl_scale: float,
                  out_1: torch.Tensor, out_2: torch.Tensor | None,
                  scratch: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The AdaMix objective of one chunk of rows: values, and gradients into ``out_*``.

    With ``L = task_scale * sum_rows nll(z1) + kl_scale * sum_rows both(z1, z2)``, writes
    ``dL/dz1`` into ``out_1`` and ``dL/dz2`` into ``out_2``. ``out_i`` may be ``z_i`` itself
    (the logits are then overwritten by their gradient); ``scratch`` is a separate buffer.
    The KL needs no log-probabilities: ``sum (p1 - p2)(log p1 - log p2)`` equals
    ``sum (p1 - p2)(z1 - z2)`` because both distributions sum to one.

    Args:
        z1, z2: ``(c, V)`` logits of pass 1 and 2 in the accumulation dtype; ``z2=None``:
            task loss only.
        targets: ``(c,)`` int64 class ids of pass 1.
        out_1, out_2, scratch: ``(c, V)`` buffers of ``z1``'s dtype (``out_2`` and ``scratch``
            with ``z2``; a single pass needs neither).

    Returns:
        ``(nll, both)``: ``(c,)`` per-row smoothed NLL of pass 1, and ``KL(p1||p2) + KL(p2||p1)``
        per row (None without ``z2``).
    """
    # Everything that reads the logits comes before the softmaxes, which may overwrite them.
    nll = z1.gather(-1, targets.unsqueeze(-1)).squeeze(-1).mul_(-(1.0 - smoothing))
    if smoothing:
        nll -= smoothing * z1.mean(dim=-1)
    if z2 is not None and (out_2 is None or scratch is None):
        raise ValueError("adamix_chunk_: out_2 and scratch are needed with a second pass (z2)")
    d = torch.sub(z1, z2, out=scratch) if z2 is not None else None  # z1 - z2
    lse_1 = _softmax_lse(z1, out_1)                                  # out_1 = p1
    nll += lse_1
    if z2 is None:
        _sub_smoothed_targets_(out_1.mul_(task_scale), targets, smoothing, task_scale)
        return nll, None
    lse_2 = _softmax_lse(z2, out_2)                                  # out_2 = p2
    p1, p2 = out_1, out_2
    if not symmetric:
        p2.sub_(p1)                                                  # dboth/dz2 = p2 - p1
        both = d.mul_(p2).sum(dim=-1).neg_()  # d is not needed after: no temporary
        p1.mul_(task_scale).sub_(p2, alpha=kl_scale)                 # + kl_scale (p1 - p2)
        _sub_smoothed_targets_(p1, targets, smoothing, task_scale)
        p2.mul_(kl_scale)
        return nll, both
    d.sub_((lse_1 - lse_2).unsqueeze(-1))                            # log p1 - log p2
    kl_12, kl_21 = _row_dot(p1, d), -_row_dot(p2, d)
    # dboth/dz1 = p1 (d - KL12 + 1) - p2;  dboth/dz2 = p2 (-d - KL21 + 1) - p1
    g1 = d.sub((kl_12 - 1.0).unsqueeze(-1)).mul_(p1).sub_(p2)
    g2 = d.neg_().sub_((kl_21 - 1.0).unsqueeze(-1)).mul_(p2).sub_(p1)
    _sub_smoothed_targets_(p1.mul_(task_scale), targets, smoothing, task_scale)
    p1.add_(g1, alpha=kl_scale)
    torch.mul(g2, kl_scale, out=p2)
    return nll, kl_12 + kl_21
