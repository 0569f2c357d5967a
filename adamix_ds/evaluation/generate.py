"""Batched decoding of NLG contexts with a (merged) AdaMix model."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


@torch.no_grad()
def decode_contexts(model: nn.Module, tokenizer: Any, contexts: Sequence[str],
                    max_new_tokens: int = 64, num_beams: int = 10, batch_size: int = 8,
                    max_context_tokens: int = 448, length_penalty: float = 0.8,
                    no_repeat_ngram_size: int = 4) -> list[str]:
    """Decode each context as in training: BPE(context) + eos, then generate until eos.

    Defaults are the paper's NLG decoding settings (beam 10, length penalty 0.8, no repeated
    4-grams, at most 64 new tokens).

    Contexts are left-padded (generation appends on the right) and left-truncated like training.
    Returns the generated completions, stripped, in input order.
    """
    eos = tokenizer.eos_token_id
    outputs: list[str] = []
    model.eval()
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start:start + batch_size]
        prompts = [tokenizer.encode(c)[-max_context_tokens:] + [eos] for c in chunk]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), eos, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        device = next(model.parameters()).device
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                   max_new_tokens=max_new_tokens, num_beams=num_beams,
                                   eos_token_id=eos, pad_token_id=eos, do_sample=False,
                                   length_penalty=length_penalty,
                                   no_repeat_ngram_size=no_repeat_ngram_size)
        for row in generated[:, width:].tolist():
            row = row[:row.index(eos)] if eos in row else row
            outputs.append(tokenizer.decode(row).strip())
    return outputs
