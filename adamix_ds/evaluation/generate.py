"""Decoding NLG test sets with an AdaMix model under one inference policy.

The policies (merged / fixed / random / ensemble) are ``adamix_ds.inference``'s; ``random``
draws one route per decode, ``ensemble`` averages the members' probabilities at every step.

Each unique context is decoded once (E2E test: 630 MRs, not 4,693 lines), in batches of prompts of
similar length, and the outputs come back in input order.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..inference import inference_policy
from ..routing import Router
from .beam import BeamSettings, beam_search, with_stop_tokens

PAPER_BEAM = BeamSettings()  # frozen: one shared default is safe


def build_prompt(context_ids: Sequence[int], eos_id: int, max_prompt_tokens: int) -> list[int]:
    """BPE(context) + separator eos, cut on the left to ``max_prompt_tokens`` as in training."""
    prompt = list(context_ids) + [eos_id]
    return prompt[-max_prompt_tokens:]


def default_prompt_budget(model: nn.Module, settings: BeamSettings) -> int:
    """Longest prompt that leaves room for ``max_new_tokens`` in the position table."""
    config = getattr(model, "config", None)
    positions = getattr(config, "n_positions", None) or getattr(
        config, "max_position_embeddings", None
    )
    if positions is None:
        return 512
    budget = positions - settings.max_new_tokens
    if budget < 2:
        raise ValueError(f"the model has {positions} positions: no room for a prompt and "
                         f"{settings.max_new_tokens} new tokens")
    return budget


def _prompts(model: nn.Module, tokenizer: Any, unique: Sequence[str], settings: BeamSettings,
             max_prompt_tokens: int | None) -> list[list[int]]:
    """Token ids of BPE(context) + eos for each distinct context, left-cut to the budget."""
    budget = max_prompt_tokens or default_prompt_budget(model, settings)
    ids = tokenizer(list(unique), add_special_tokens=False)["input_ids"] if unique else []
    return [build_prompt(c, tokenizer.eos_token_id, budget) for c in ids]


@torch.no_grad()
def _decode_prompts(model: nn.Module, tokenizer: Any, prompts: Sequence[list[int]],
                    settings: BeamSettings, batch_size: int, router: Router | None,
                    inference: str, ensemble_passes: int, route_draw: int) -> list[str]:
    """Beam-decode token prompts; texts come back in the order of ``prompts``."""
    model.eval()
    settings = with_stop_tokens(settings, tokenizer)
    # Longest first, so each batch pads little and the biggest batch fails first if memory is short.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    with inference_policy(model, router, inference, ensemble_passes, route_draw) as members:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            outputs = beam_search(model, [prompts[i] for i in chunk], settings,
                                  pad_id=tokenizer.eos_token_id, members=members)
            for i, tokens in zip(chunk, outputs, strict=True):
                texts[i] = tokenizer.decode(tokens).strip()
    return texts


def decode_contexts(model: nn.Module, tokenizer: Any, contexts: Sequence[str],
                    settings: BeamSettings = PAPER_BEAM, batch_size: int = 16,
                    max_prompt_tokens: int | None = None, router: Router | None = None,
                    inference: str = "merged", ensemble_passes: int = 1,
                    route_draw: int = 0) -> list[str]:
    """Beam-decode each context (BPE(context) + eos) and return the texts in input order.

    Args:
        model: causal LM (AdaMix-injected or plain), switched to eval mode here.
        contexts: input strings; duplicates are decoded once.
        settings: beam settings (default: the paper's).
        batch_size: prompts per beam search (rows = batch_size x num_beams x members).
        max_prompt_tokens: left-cut prompts to this length (default: positions - max_new_tokens).
        router / inference / ensemble_passes / route_draw: see :func:`inference_policy`.
    """
    return decode_sharded(model, tokenizer, contexts, settings=settings, batch_size=batch_size,
                          max_prompt_tokens=max_prompt_tokens, router=router,
                          inference=inference, ensemble_passes=ensemble_passes,
                          route_draw=route_draw)


def decode_sharded(model: nn.Module, tokenizer: Any, contexts: Sequence[str], rank: int = 0,
                   world_size: int = 1, settings: BeamSettings = PAPER_BEAM,
                   batch_size: int = 16, max_prompt_tokens: int | None = None,
                   router: Router | None = None, inference: str = "merged",
                   ensemble_passes: int = 1, route_draw: int = 0) -> list[str]:
    """:func:`decode_contexts` split over ranks; every rank returns all outputs in input order.

    The distinct contexts are tokenized once, ranked by prompt length and dealt round-robin, so
    each rank gets a similar mix of long and short prompts and no context is decoded on two
    ranks; the outputs come back through one ``all_gather_object``.
    """
    unique = list(dict.fromkeys(contexts))
    prompts = _prompts(model, tokenizer, unique, settings, max_prompt_tokens)
    order = sorted(range(len(unique)), key=lambda i: -len(prompts[i]))
    mine = order[rank::world_size]
    texts = _decode_prompts(model, tokenizer, [prompts[i] for i in mine], settings, batch_size,
                            router, inference, ensemble_passes, route_draw)
    pairs = list(zip(mine, texts, strict=True))
    if world_size > 1:
        gathered: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(gathered, pairs)
        pairs = [pair for part in gathered for pair in part]
    by_index = dict(pairs)
    missing = [i for i in range(len(unique)) if i not in by_index]
    if missing:
        raise RuntimeError(f"{len(missing)} contexts came back from no rank "
                           f"(first: {unique[missing[0]]!r})")
    by_context = {unique[i]: text for i, text in by_index.items()}
    return [by_context[c] for c in contexts]
