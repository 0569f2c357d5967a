"""Plain-autograd references for ``adamix_ds.losses``: the tests' oracles.

They materialise several ``(N, V)`` tensors, so nothing trains with them; argument checks are
the library's own (the same errors for the same bad inputs), the arithmetic is written out here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from adamix_ds.loss_terms import accumulation_dtype as _accum_dtype
from adamix_ds.losses import _check_pair, _selected_rows


def consistency_kl_reference(
    logits_p: torch.Tensor,
    logits_q: torch.Tensor,
    mask: torch.Tensor | None = None,
    mode: str = "stopgrad",
) -> torch.Tensor:
    """Unchunked plain-autograd version of :func:`adamix_ds.losses.consistency_kl`.

    The definition written out: log-softmax, the two KLs with constant targets in
    ``stopgrad`` mode, the mean over the selected tokens.

    Args/returns: as :func:`consistency_kl` (without ``chunk_tokens``).
    """
    _check_pair(logits_p, logits_q, mode)
    acc = _accum_dtype(logits_p, logits_q)
    vocab = logits_p.shape[-1]
    log_p = F.log_softmax(logits_p.to(acc), dim=-1).reshape(-1, vocab)
    log_q = F.log_softmax(logits_q.to(acc), dim=-1).reshape(-1, vocab)
    if mask is not None:
        rows = _selected_rows(mask, logits_p.shape, logits_p.device)
        log_p, log_q = log_p[rows], log_q[rows]
    if log_p.shape[0] == 0:
        # Mean over zero tokens would be NaN; return a graph-connected zero.
        return (logits_p.sum() + logits_q.sum()).to(acc) * 0.0

    # Target distributions: constants in "stopgrad" mode.
    tgt_log_p = log_p.detach() if mode == "stopgrad" else log_p
    tgt_log_q = log_q.detach() if mode == "stopgrad" else log_q
    kl_q_p = (tgt_log_q.exp() * (tgt_log_q - log_p)).sum(dim=-1)  # KL(q || p), (N,)
    kl_p_q = (tgt_log_p.exp() * (tgt_log_p - log_q)).sum(dim=-1)  # KL(p || q), (N,)
    return 0.5 * (kl_p_q + kl_q_p).mean()
