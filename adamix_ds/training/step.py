"""One AdaMix training forward: two routed passes, task loss on pass 1, consistency between them.

Pure torch (works with a DeepSpeed engine or a plain module as ``model``). Two ways to run the
two passes, with the same loss and gradients when dropout is off:
* ``paired`` (default): one forward over ``cat(batch, batch)``; the router gives the first half
  route A (pass 0) and the second half route B (pass 1). One launch per layer, and under ZeRO-3
  one parameter gather per layer instead of two.
* ``sequential``: two forwards, pass 0 then pass 1 (half the activation memory at a time).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..config import AdaMixConfig
from ..losses import AdaMixLossOutput, adamix_loss
from ..routing import Router

CONSISTENCY_MODES = ("paired", "sequential", "off")


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal-LM alignment: position t predicts token t+1. (B, T, V), (B, T) -> (B, T-1, V), (B, T-1)."""
    return logits[:, :-1], labels[:, 1:]


def adamix_forward(model: Callable[..., object], batch: dict[str, torch.Tensor], router: Router,
                   cfg: AdaMixConfig, consistency: str = "paired", label_smoothing: float = 0.0,
                   loss_scale: float = 1.0) -> AdaMixLossOutput:
    """Forward the routed passes and return the AdaMix loss (not yet backpropagated).

    Args:
        model: callable returning an object with ``.logits`` (B, T, V) (HF model or engine).
        batch: ``input_ids``, ``attention_mask``, ``labels`` (B, T), labels -100 where ignored
            (HF convention: labels[t] = input_ids[t]; the shift happens here).
        consistency: paired | sequential | off (off: one pass, task loss only).
        loss_scale: multiplies every term; the trainer uses it to turn this rank's token mean
            into its share of the global token mean (n_local * world / n_global).
    """
    if consistency not in CONSISTENCY_MODES:
        raise ValueError(f"consistency must be one of {list(CONSISTENCY_MODES)}, got {consistency!r}")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    labels = batch["labels"]
    if consistency == "paired":
        doubled = {k: torch.cat([v, v]) for k, v in inputs.items()}
        with router.use_passes(0, 1):
            logits_1, logits_2 = model(**doubled).logits.chunk(2)       # 2 x (B, T, V)
    elif consistency == "sequential":
        with router.use_passes(0):
            logits_1 = model(**inputs).logits
        with router.use_passes(1):
            logits_2 = model(**inputs).logits
    else:
        with router.use_passes(0):
            logits_1, logits_2 = model(**inputs).logits, None
    logits_1, shifted_labels = _shifted(logits_1, labels)
    if logits_2 is not None:
        logits_2 = logits_2[:, :-1]
    weight = cfg.consistency_weight if logits_2 is not None else 0.0
    out = adamix_loss(logits_1, logits_2, shifted_labels, weight, smoothing=label_smoothing,
                      mode=cfg.consistency_mode)
    if loss_scale != 1.0:
        out = AdaMixLossOutput(out.loss * loss_scale, out.task_loss * loss_scale,
                               out.consistency * loss_scale)
    return out


def count_target_tokens(labels: torch.Tensor) -> int:
    """Tokens that carry loss after the causal shift."""
    return int((labels[:, 1:] != -100).sum())
