"""The NLG task family: E2E / WebNLG / DART on a causal LM.

One training forward is two routed passes (``tasks.base.PASS_SCHEDULES``), token-level
label-smoothed CE of pass 1 on the target tokens and the consistency term between the passes.
Pure torch: ``model`` is a DeepSpeed engine or a plain module alike.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones import load_backbone
from ..config import AdaMixConfig
from ..data import (
    collate_nlg,
    group_references,
    load_nlg_dataset,
    load_nlg_records,
    load_tokenizer,
    tokenizer_source,
)
from ..evaluation.generate import decode_contexts
from ..evaluation.pipeline import load_decoding_model
from ..losses import (
    AdaMixLossOutput,
    adamix_loss,
    adamix_loss_stacked,
    fused_adamix_lm_loss,
)
from ..preset import Preset
from ..routing import Router
from .base import TrainTask, check_schedule, paired_pass, routed_passes


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
    # Causal-LM alignment: position t predicts token t + 1. The labels move, not the outputs:
    # slicing (B, T, V) logits to T - 1 positions would make every consumer copy them.
    next_labels = nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)   # (B, T)
    mode = cfg.consistency_mode
    if not fused_loss and consistency == "paired":
        logits = paired_pass(run, inputs, router)                    # (2, B, T, V)
        out = adamix_loss_stacked(logits, next_labels, cfg.consistency_weight,
                                  smoothing=label_smoothing, mode=mode, reuse_logits=True)
        return out.scaled(loss_scale)
    out_1, out_2 = routed_passes(run, inputs, router, consistency)   # 2 x (B, T, V or d)
    weight = cfg.consistency_weight if out_2 is not None else 0.0
    if fused_loss:
        out = AdaMixLossOutput(*fused_adamix_lm_loss(
            out_1, out_2, head_weight, next_labels, weight, smoothing=label_smoothing, mode=mode))
    else:
        out = adamix_loss(out_1, out_2, next_labels, weight, smoothing=label_smoothing,
                          mode=mode, reuse_logits=True)
    return out.scaled(loss_scale)


def count_target_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Tokens that carry loss after the causal shift: a 0-dim int64 tensor on ``labels``'
    device (counted there, so the training loop reads nothing back to the host)."""
    return (labels[:, 1:] != -100).sum()


def nlg_task(preset: Preset) -> TrainTask:
    """The :class:`TrainTask` of an NLG preset: token-level CE + consistency on the targets."""
    train, cfg = preset.train, preset.adamix
    tokenizer = load_tokenizer(tokenizer_source(preset.tokenizer, preset.backbone))
    dataset = load_nlg_dataset(preset.task, "train", preset.data_dir, tokenizer,
                               preset.max_seq_len, max_examples=preset.max_train_examples)
    model = load_backbone(preset.backbone, init=preset.init, seed=train.seed,
                          **preset.backbone_config)
    pad_id = tokenizer.eos_token_id

    def forward(engine: Any, batch: dict[str, torch.Tensor], router: Router,
                scale: torch.Tensor) -> AdaMixLossOutput:
        return adamix_forward(engine, batch, router, cfg, train.consistency,
                              train.label_smoothing, loss_scale=scale,
                              fused_loss=train.fused_loss)

    def finish(output_dir: Path) -> None:
        if train.sample_after:
            print_samples(preset, output_dir / "adaptation", tokenizer, train.sample_after)

    return TrainTask(model, dataset, lambda examples: collate_nlg(examples, pad_id),
                     lambda batch: count_target_tokens(batch["labels"]), forward, finish)


def print_samples(preset: Preset, adaptation_dir: Path, tokenizer: Any, count: int) -> list[str]:
    """Rebuild the run's model from the exported adaptation, merged, and decode test inputs."""
    model = load_decoding_model(adaptation_dir, dtype=torch.float32).model
    groups = group_references(load_nlg_records(preset.task, "test", preset.data_dir))[:count]
    outputs = decode_contexts(model, tokenizer, [g["context"] for g in groups])
    print("\nMerged AdaMix model on test inputs:")
    for group, text in zip(groups, outputs, strict=True):
        # An undertrained model may rank the stop token first: say so rather than print nothing.
        shown = (
            text or "(empty: the model stops at once; train longer or use a pretrained backbone)"
        )
        print(
            f"  input : {group['context']}\n  output: {shown}\n  ref   : {group['references'][0]}\n"
        )
    return outputs
