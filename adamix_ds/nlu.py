"""AdaMix for sentence classification / regression (GLUE) and prompt-based few-shot (LM-BFF).

The routed passes are the NLG ones (``router.use_passes``; ``paired`` = one forward over the
doubled batch); what changes is the output the loss sees:

* classification head: class logits ``(B, C)``; task loss = label-smoothed CE of pass 1, and the
  consistency term is the same stop-gradient symmetric KL as for tokens (``adamix_loss``),
  one "position" per example;
* regression head (STS-B): prediction ``(B,)``; task loss = MSE of pass 1, consistency =
  ``0.5 * ((y1 - sg(y2))^2 + (y2 - sg(y1))^2)`` (``stopgrad``) or ``(y1 - y2)^2``
  (``symmetric``), the squared-distance analogue of the KL between the passes;
* masked-LM prompt (LM-BFF): the logits at the ``[MASK]`` position, restricted to the label
  words' ids, are the class logits ``(B, C)``; then as for classification.

Pure torch: no deepspeed.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .config import AdaMixConfig
from .losses import AdaMixLossOutput, adamix_loss
from .passes import check_schedule, routed_passes
from .routing import Router

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def label_word_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """Vocabulary id of each label word as it follows a space (RoBERTa's BPE marks that space;
    WordPiece ignores it). A word that is not one token is an error: its logit would be
    ambiguous."""
    ids = []
    for word in words:
        pieces = tokenizer.tokenize(" " + word)
        if len(pieces) != 1:
            raise ValueError(f"label word {word!r} is {len(pieces)} tokens {pieces} for this "
                             f"tokenizer; choose a single-token word")
        ids.append(tokenizer.convert_tokens_to_ids(pieces[0]))
    return ids


def output_scores(logits: torch.Tensor, input_ids: torch.Tensor, mask_token_id: int | None,
                  word_ids: Sequence[int] | None) -> torch.Tensor:
    """The tensor the loss and the metrics see.

    logits: (B, C) from a classification head, (B, 1) from a regression head, or (B, T, V) from
        a masked-LM head (then ``mask_token_id`` and ``word_ids`` are needed).
    Returns (B, C) class logits, or (B,) predictions for regression.
    """
    if word_ids is None:
        return logits.squeeze(-1) if logits.shape[-1] == 1 else logits
    at_mask = input_ids == mask_token_id                                  # (B, T)
    per_row = at_mask.sum(-1)
    if not bool((per_row == 1).all()):
        bad = int((per_row != 1).nonzero()[0])
        raise ValueError(f"prompt row {bad} holds {int(per_row[bad])} mask tokens, expected 1 "
                         f"(was the prompt truncated? raise max_seq_len)")
    mask_logits = logits[at_mask]                                         # (B, V)
    return mask_logits[:, list(word_ids)]                                 # (B, C)


def nlu_loss(scores_1: torch.Tensor, scores_2: torch.Tensor | None, labels: torch.Tensor,
             weight: float, smoothing: float = 0.0, mode: str = "stopgrad") -> AdaMixLossOutput:
    """Task loss of pass 1 + weight * consistency between the passes (module docstring).

    scores_*: (B, C) class logits or (B,) regression predictions; labels (B,) int64 / float.
    """
    if scores_1.dim() == 2:
        return adamix_loss(scores_1, scores_2, labels, weight, smoothing=smoothing, mode=mode)
    task = nn.functional.mse_loss(scores_1.float(), labels.float())
    if scores_2 is None:
        zero = task.new_zeros(())
        return AdaMixLossOutput(task, task, zero)
    y1, y2 = scores_1.float(), scores_2.float()
    if mode == "stopgrad":
        consistency = 0.5 * ((y1 - y2.detach()).pow(2) + (y2 - y1.detach()).pow(2)).mean()
    else:
        consistency = (y1 - y2).pow(2).mean()
    return AdaMixLossOutput(task + weight * consistency, task, consistency)


def nlu_forward(model: Callable[..., Any], batch: dict[str, torch.Tensor], router: Router,
                cfg: AdaMixConfig, consistency: str = "paired", label_smoothing: float = 0.0,
                loss_scale: float | torch.Tensor = 1.0, mask_token_id: int | None = None,
                word_ids: Sequence[int] | None = None) -> AdaMixLossOutput:
    """Forward the routed passes of an NLU batch and return its AdaMix loss.

    batch: ``input_ids``, ``attention_mask`` (B, T), optional ``token_type_ids``, ``labels`` (B,).
    loss_scale: multiplies every term (this rank's share of the global example mean).
    """
    check_schedule(consistency)
    inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}

    def scores(kw: dict[str, torch.Tensor]) -> torch.Tensor:
        return output_scores(model(**kw).logits, kw["input_ids"], mask_token_id, word_ids)

    s1, s2 = routed_passes(scores, inputs, router, consistency)
    weight = cfg.consistency_weight if s2 is not None else 0.0
    out = nlu_loss(s1, s2, batch["labels"], weight, label_smoothing, cfg.consistency_mode)
    return out.scaled(loss_scale)


@torch.no_grad()
def predict(model: nn.Module, router: Router | None, batches: Iterable[dict[str, torch.Tensor]],
            policy: str = "merged", ensemble_passes: int = 4, route_draw: int = 0,
            mask_token_id: int | None = None, word_ids: Sequence[int] | None = None
            ) -> list[float]:
    """Predictions of an eval-mode model under one inference policy.

    Classification: the argmax class (``ensemble``: of the mean of the members' softmax);
    regression: the prediction (``ensemble``: the members' mean). ``random`` serves one randomly
    drawn route for the whole call (``route_draw`` picks the draw; K draws = K random models).
    """
    from .evaluation.generate import inference_policy  # shared with NLG decoding

    if model.training:
        raise ValueError("predict needs model.eval()")
    out: list[float] = []
    device = next(model.parameters()).device
    with inference_policy(model, router, policy, ensemble_passes if policy == "ensemble" else 1,
                          route_draw) as members:
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS}
            if members > 1:  # segment t of the repeated batch is routed by ensemble member t
                inputs = {k: v.repeat(members, 1) for k, v in inputs.items()}
            s = output_scores(model(**inputs).logits, inputs["input_ids"], mask_token_id,
                              word_ids).float()
            if s.dim() == 2:
                probs = s.softmax(-1).unflatten(0, (members, -1)).mean(0)
                out += probs.argmax(-1).tolist()
            else:
                out += s.unflatten(0, (members, -1)).mean(0).tolist()
    return out
