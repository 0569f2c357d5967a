"""One AdaMix training forward: two routed passes, task loss on pass 1, consistency between them.

Pure torch (works with a DeepSpeed engine or a plain module as ``model``); the passes run under
one of ``adamix_ds.passes.PASS_SCHEDULES`` (paired / sequential / off).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import AdaMixConfig
from ..losses import AdaMixLossOutput, adamix_loss, fused_adamix_lm_loss
from ..passes import PASS_SCHEDULES, check_schedule, routed_passes
from ..routing import Router

__all__ = ["PASS_SCHEDULES", "adamix_forward", "count_target_tokens"]


def _hidden_and_head(model: Any) -> tuple[Callable[..., Any], torch.Tensor]:
    """(the model without its LM head, the head's (V, d) weight) for the fused loss."""
    hf = getattr(model, "module", model)  # a DeepSpeed engine wraps the HF model
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear) or head.bias is not None:
        raise ValueError(f"fused_loss needs a bias-free nn.Linear LM head; "
                         f"{type(hf).__name__} has {type(head).__name__}")
    return hf.base_model, head.weight


def adamix_forward(model: Callable[..., object], batch: dict[str, torch.Tensor], router: Router,
                   cfg: AdaMixConfig, consistency: str = "paired", label_smoothing: float = 0.0,
                   loss_scale: float | torch.Tensor = 1.0, fused_loss: bool = False
                   ) -> AdaMixLossOutput:
    """Forward the routed passes and return the AdaMix loss (not yet backpropagated).

    Args:
        model: callable returning an object with ``.logits`` (B, T, V) (HF model or engine).
        batch: ``input_ids``, ``attention_mask``, ``labels`` (B, T), labels -100 where ignored
            (HF convention: labels[t] = input_ids[t]; the shift happens here).
        consistency: paired | sequential | off (off: one pass, task loss only).
        loss_scale: multiplies every term; the trainer uses it to turn this rank's token mean
            into its share of the global token mean (n_local * world / n_global).
        fused_loss: run the model without its LM head and compute the loss from the hidden
            states in token chunks (``adamix_ds.fused_lm_loss``): the (B, T, V) logits of the
            passes are never held. Same values and gradients; the head must be bias-free and
            its weight readable here (ZeRO stage <= 2; a frozen head gets no gradient anyway).
    """
    check_schedule(consistency)
    if fused_loss:
        body, head_weight = _hidden_and_head(model)

        def run(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return body(**inputs).last_hidden_state                  # (B, T, d)
    else:
        def run(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return model(**inputs).logits                            # (B, T, V)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    out_1, out_2 = routed_passes(run, inputs, router, consistency)   # 2 x (B, T, V or d)
    # causal-LM alignment: position t predicts token t+1
    out_1, shifted_labels = out_1[:, :-1], batch["labels"][:, 1:]
    if out_2 is not None:
        out_2 = out_2[:, :-1]
    weight = cfg.consistency_weight if out_2 is not None else 0.0
    if fused_loss:
        out = AdaMixLossOutput(*fused_adamix_lm_loss(
            out_1, out_2, head_weight, shifted_labels, weight, smoothing=label_smoothing,
            mode=cfg.consistency_mode))
    else:
        out = adamix_loss(out_1, out_2, shifted_labels, weight, smoothing=label_smoothing,
                          mode=cfg.consistency_mode)
    return out.scaled(loss_scale)


def count_target_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Tokens that carry loss after the causal shift: a 0-dim int64 tensor on ``labels``'
    device (counted there, so the training loop reads nothing back to the host)."""
    return (labels[:, 1:] != -100).sum()
