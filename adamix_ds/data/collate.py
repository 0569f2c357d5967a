"""Batch collation for causal-LM fine-tuning on encoded NLG examples."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .encoding import IGNORE_INDEX

__all__ = ["collate_nlg"]


def collate_nlg(
    batch: Sequence[Mapping[str, Any]],
    pad_id: int,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples to the longest one.

    Right padding keeps position ids ``0..len-1`` for the real tokens (GPT-2 derives positions from
    the index), and the causal mask means real tokens never attend to the padding after them.

    Args:
        batch: examples with ``input_ids`` and ``labels`` (lists or 1-D tensors of equal length);
            other keys (``context_len``, ...) are ignored.
        pad_id: id written into padded ``input_ids`` positions (GPT-2 has no pad token; its eos
            50256 is the usual choice; the value is never attended to nor trained on).
        pad_to_multiple_of: round ``T`` up to a multiple of this (tensor-core friendly shapes).

    Returns:
        ``input_ids (B, T)`` int64, ``attention_mask (B, T)`` int64 (1 = real token),
        ``labels (B, T)`` int64 (-100 on padding and prompt), ``T`` = longest example (rounded).
    """
    if len(batch) == 0:
        raise ValueError("collate_nlg: empty batch")
    ids = [torch.as_tensor(ex["input_ids"], dtype=torch.long) for ex in batch]
    labels = [torch.as_tensor(ex["labels"], dtype=torch.long) for ex in batch]
    for i, (x, y) in enumerate(zip(ids, labels, strict=True)):
        if x.dim() != 1 or x.shape != y.shape:
            raise ValueError(f"collate_nlg: example {i}: input_ids {tuple(x.shape)} and labels "
                             f"{tuple(y.shape)} must be 1-D of the same length")
    width = max(int(x.numel()) for x in ids)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    out_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    out_mask = torch.zeros((len(batch), width), dtype=torch.long)
    out_labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for i, (x, y) in enumerate(zip(ids, labels, strict=True)):
        n = x.numel()
        out_ids[i, :n] = x
        out_mask[i, :n] = 1
        out_labels[i, :n] = y
    return {"input_ids": out_ids, "attention_mask": out_mask, "labels": out_labels}
