"""One AdaMix training forward: two routed passes, task loss on pass 1, consistency between them.

Pure torch (works with a DeepSpeed engine or a plain module as ``model``). Two ways to run the
two passes, with the same loss and gradients when dropout is off:
* ``paired`` (default): one forward over ``cat(batch, batch)``; the router gives the first half
  route A (pass 0) and the second half route B (pass 1). One launch per layer, and under ZeRO-3
  one parameter gather per layer instead of two.
* ``sequential``: two forwards, pass 0 then pass 1 (half the activation memory at a time).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import AdaMixConfig
from ..losses import AdaMixLossOutput, adamix_loss, fused_adamix_lm_loss
from ..routing import Router

PASS_SCHEDULES = ("paired", "sequential", "off")


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
    if consistency not in PASS_SCHEDULES:
        raise ValueError(
            f"consistency must be one of {list(PASS_SCHEDULES)}, got {consistency!r}"
        )
    if fused_loss:
        body, head_weight = _hidden_and_head(model)

        def run(**inputs: torch.Tensor) -> torch.Tensor:
            return body(**inputs).last_hidden_state                  # (B, T, d)
    else:
        def run(**inputs: torch.Tensor) -> torch.Tensor:
            return model(**inputs).logits                            # (B, T, V)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if consistency == "paired":
        doubled = {k: torch.cat([v, v]) for k, v in inputs.items()}
        with router.use_passes(0, 1):
            out_1, out_2 = run(**doubled).chunk(2)                   # 2 x (B, T, V or d)
    elif consistency == "sequential":
        with router.use_passes(0):
            out_1 = run(**inputs)
        with router.use_passes(1):
            out_2 = run(**inputs)
    else:
        with router.use_passes(0):
            out_1, out_2 = run(**inputs), None
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


def count_target_tokens(labels: torch.Tensor) -> int:
    """Tokens that carry loss after the causal shift."""
    return int((labels[:, 1:] != -100).sum())
