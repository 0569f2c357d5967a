"""Batched beam search with the decoding rules of the paper's NLG code (LoRA ``gpt2_beam.py``).

The rules, which differ from Hugging Face ``generate`` in ways that move scores:

* a step selects the top ``K`` of ``K x V`` continuations (step 0: of beam 0 only); a selected
  continuation that ends in a stop token becomes a *candidate* with score
  ``sum_logprob / n ** length_penalty`` (``n`` generated tokens, stop token included) and its beam
  is killed (score -inf) instead of being replaced by the next best one;
* after ``max_new_tokens`` steps every remaining beam is a candidate; the answer is the candidate
  with the highest score (the first one found on ties);
* no-repeat n-grams are banned within the *generated* tokens only (HF also looks at the prompt).

Batching: prompts are left-padded, so every row's next-token logits sit in the last column; the
position ids count real tokens only, so a padded row computes what it would alone. One extra
exact shortcut: a batch item stops once no live beam can beat its best candidate (for
``length_penalty >= 0`` a live beam's final score is at most ``score / max_new_tokens ** lp``);
the outputs are those of running all steps.

Logit ensembles (the paper's ensemble ablation) decode ``T`` copies of the batch, member-major, in
one forward (the caller routes segment ``t`` with ensemble member ``t``); the beam score then uses
``log(mean_t softmax(logits_t))`` and every member's cache follows the same beams.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from ..inference import member_mean_probs


@dataclass(frozen=True)
class BeamSettings:
    """Decoding settings; the defaults are the paper's (its Table 11 / the LoRA NLG README)."""

    num_beams: int = 10
    length_penalty: float = 0.8
    no_repeat_ngram_size: int = 4
    max_new_tokens: int = 64
    # None: the tokenizer's (``with_stop_tokens``): its eos, and "\n\n" when that is one token
    # (GPT-2: 50256 and 628, the stop set of the LoRA NLG code the paper decodes with)
    stop_token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.num_beams < 1 or self.max_new_tokens < 1:
            raise ValueError(f"num_beams and max_new_tokens must be >= 1: {self}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0: {self}")
        if self.stop_token_ids is not None and not self.stop_token_ids:
            raise ValueError("stop_token_ids must not be empty (None: the tokenizer's)")


def tokenizer_stop_tokens(tokenizer: Any) -> tuple[int, ...]:
    """The tokenizer's eos, and the token of "\n\n" when it encodes to exactly one."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no eos_token_id to stop decoding at; "
                         "pass stop_token_ids")
    stops = [tokenizer.eos_token_id]
    blank = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    if len(blank) == 1 and blank[0] not in stops:
        stops.append(blank[0])
    return tuple(stops)


def with_stop_tokens(settings: BeamSettings, tokenizer: Any) -> BeamSettings:
    """``settings`` with its stop tokens taken from ``tokenizer`` unless given."""
    if settings.stop_token_ids is not None:
        return settings
    return replace(settings, stop_token_ids=tokenizer_stop_tokens(tokenizer))


def ban_repeated_ngrams(logprobs: torch.Tensor, history: torch.Tensor, size: int) -> torch.Tensor:
    """Set to -inf every token that would complete an n-gram already present in ``history``.

    Args:
        logprobs: (N, V) next-token scores, modified in place and returned.
        history: (N, t) generated tokens so far.
        size: n; 0 disables.
    """
    n_rows, t = history.shape
    if size == 0 or t < size:
        return logprobs
    windows = history.unfold(1, size, 1)                        # (N, t - n + 1, n)
    prefix = history[:, t - size + 1:]                          # (N, n - 1): the last n-1 tokens
    match = (windows[..., :-1] == prefix[:, None, :]).all(-1)   # (N, t - n + 1)
    vocab = logprobs.shape[-1]
    banned = torch.where(match, windows[..., -1], vocab)        # vocab = "nothing" column
    ban_mask = torch.zeros(n_rows, vocab + 1, dtype=torch.bool, device=logprobs.device)
    ban_mask.scatter_(1, banned, True)
    return logprobs.masked_fill_(ban_mask[:, :vocab], float("-inf"))


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids and attention mask of left-padded prompts."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {row} is empty")
        ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def _member_logprobs(logits: torch.Tensor, members: int) -> torch.Tensor:
    """(members * N, V) logits -> (N, V) log of the members' mean probability."""
    if members == 1:  # log_softmax: exact where a tiny probability's log would underflow
        return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    return member_mean_probs(logits, members).log()


def _upper_bound(beam_scores: torch.Tensor, step: int, settings: BeamSettings) -> torch.Tensor:
    """(B,) the best score any live beam of each batch item can still reach as a candidate.

    Before step ``step`` the beams hold ``step`` tokens, so every future candidate has a length in
    [step + 1, max_new_tokens] and a sum of log-probs at most its beam's current (negative) score.
    """
    lp = settings.length_penalty
    # For lp >= 0 the longest length divides the negative sum the most, for lp < 0 the shortest.
    length = settings.max_new_tokens if lp >= 0 else step + 1
    return beam_scores.max(dim=1).values / float(length) ** lp


@torch.no_grad()
def beam_search(model: nn.Module, prompts: Sequence[Sequence[int]], settings: BeamSettings,
                pad_id: int, members: int = 1) -> list[list[int]]:
    """Decode a batch of prompts; returns each prompt's generated ids, stop token excluded.

    Args:
        model: a causal LM in eval mode taking ``input_ids, attention_mask, position_ids,
            past_key_values, use_cache`` and returning ``.logits`` (rows, T, V).
        prompts: B token-id lists (context + separator).
        pad_id: id used for left padding (masked out).
        members: logit-ensemble size T; the model sees T member-major copies of the batch.
    """
    device = next(model.parameters()).device
    if settings.stop_token_ids is None:
        raise ValueError("beam_search: settings.stop_token_ids is None; resolve it from the "
                         "tokenizer first (with_stop_tokens)")
    batch, beams, stops = len(prompts), settings.num_beams, settings.stop_token_ids
    ids, mask = left_pad(prompts, pad_id, device)
    ids, mask = ids.repeat(members, 1), mask.repeat(members, 1)           # (T*B, L)
    prompt_len = mask.sum(-1)                                             # (T*B,)
    cache = DynamicCache()
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    logprobs = _member_logprobs(out.logits[:, -1], members)               # (B, V)
    vocab = logprobs.shape[-1]
    # Step 0: every beam would be the same, so take the top K of beam 0 alone.
    beam_scores, tokens = logprobs.topk(beams, dim=-1)                    # (B, K)
    cache.batch_repeat_interleave(beams)                                  # rows (T, B, K)
    mask = mask.repeat_interleave(beams, dim=0)                           # (T*B*K, L)
    positions = prompt_len.repeat_interleave(beams)                       # (T*B*K,)
    history = tokens.reshape(-1, 1)                                       # (B*K, 1)
    # Candidates are compared in the scores' dtype (float32 as in the reference code).
    best_score = torch.full((batch,), float("-inf"), dtype=beam_scores.dtype, device=device)
    best_seq: list[list[int]] = [[] for _ in range(batch)]
    stop_ids = torch.tensor(stops, device=device)
    member_offsets = (torch.arange(members, device=device) * batch * beams)[:, None]

    def collect(candidates: torch.Tensor) -> None:
        """Offer the rows flagged in ``candidates`` (B, K) as finished hypotheses."""
        normed = beam_scores / float(history.shape[1]) ** settings.length_penalty
        for b, k in candidates.nonzero().tolist():
            if normed[b, k] > best_score[b]:
                best_score[b] = normed[b, k]
                best_seq[b] = history[b * beams + k].tolist()
        beam_scores.masked_fill_(candidates, float("-inf"))

    collect(torch.isin(tokens, stop_ids))
    for step in range(1, settings.max_new_tokens):
        if bool((_upper_bound(beam_scores, step, settings) <= best_score).all()):
            break  # nobody can improve: the remaining steps would change nothing
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        out = model(input_ids=history[:, -1:].repeat(members, 1), attention_mask=mask,
                    position_ids=positions[:, None] + step - 1, past_key_values=cache,
                    use_cache=True)
        logprobs = _member_logprobs(out.logits[:, -1], members)           # (B*K, V)
        ban_repeated_ngrams(logprobs, history, settings.no_repeat_ngram_size)
        scores = (beam_scores[..., None] + logprobs.view(batch, beams, vocab)).view(batch, -1)
        beam_scores, flat = scores.topk(beams, dim=-1)                    # (B, K)
        parent = flat // vocab + torch.arange(batch, device=device)[:, None] * beams
        tokens = flat % vocab
        history = torch.cat([history[parent.view(-1)], tokens.view(-1, 1)], dim=1)
        cache.reorder_cache((parent.view(1, -1) + member_offsets).view(-1))
        collect(torch.isin(tokens, stop_ids))
    else:  # ran all max_new_tokens steps: every live beam is a candidate
        collect(torch.isfinite(beam_scores))
    return [_until_stop(seq, stops) for seq in best_seq]


def _until_stop(tokens: list[int], stops: Sequence[int]) -> list[int]:
    """The tokens before the first stop token."""
    for i, tok in enumerate(tokens):
        if tok in stops:
            return tokens[:i]
    return tokens
