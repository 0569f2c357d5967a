"""Token-level encoding of (context, completion) pairs, as in the AdaMix / LoRA GPT-2 code.

Sequence layout (``src/gpt2_encode.py --add_bos --add_eos``, where bos = eos = 50256)::

    input_ids = BPE(context) + [eos] + BPE(" " + completion) + [eos]
                \\_______ prompt ______/ \\________ target __________/
    labels    = [-100] * len(prompt)   + target

Loss is on the target only, final eos included, never on the prompt (``src/data_utils.py``:
``mask = [0] * (len(prompt) - 1) + [1] * len(target)`` over next-token targets).

Label convention: Hugging Face's. ``labels[i] == input_ids[i]`` at target positions and -100
elsewhere; the model shifts internally (logits at ``i - 1`` predict ``labels[i]``). This selects
exactly the reference code's (pre-shifted target, mask) pairs: the prediction made at the separator
eos is the first completion token, the prediction made at the last completion token is the final
eos. ``context_len = len(prompt)`` (context tokens + separator) is where generation starts.

Truncation to ``max_seq_len`` (only when ``len(prompt) + len(target) > max_seq_len``):

1. The context is cut on the LEFT, keeping its end and the separator eos, so the whole target fits.
2. If the target alone does not fit next to a 1-token prompt (the separator eos), the completion is
   cut on the RIGHT to ``max_seq_len - 2`` tokens and the final eos is kept; the prompt is then the
   separator eos alone.

The reference training code instead cuts the joined sequence on the right
(``padding_tokens(..., direct=1)``), which drops the final eos and, with an over-long context, every
target token; its decoding query cuts the prompt on the left, as rule 1 does. With the paper's
``max_seq_len`` of 512 nothing is cut in E2E train/valid/test, WebNLG train/dev or DART dev (longest
sequences: 133, 259 and 229 tokens), so the rules matter only for short debug lengths.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, TypedDict

__all__ = [
    "IGNORE_INDEX",
    "EncodedExample",
    "build_example",
    "needs_truncation",
    "tokenize_pairs",
    "encode_record",
    "encode_records",
]

IGNORE_INDEX = -100


class EncodedExample(TypedDict):
    """One training example: ``input_ids`` and ``labels`` of one length ``T <= max_seq_len``."""

    input_ids: list[int]
    labels: list[int]
    context_len: int


class _Tokenizer(Protocol):
    """What the encoder needs from a tokenizer (a ``transformers`` GPT-2 tokenizer has it)."""

    eos_token_id: int

    def __call__(
        self, text: list[str], add_special_tokens: bool = ...
    ) -> Mapping[str, list[list[int]]]: ...


def needs_truncation(
    context_ids: Sequence[int], completion_ids: Sequence[int], max_seq_len: int
) -> bool:
    """Whether ``build_example`` has to cut this pair (2 = the separator and final eos)."""
    return len(context_ids) + len(completion_ids) + 2 > max_seq_len


def build_example(
    context_ids: Sequence[int],
    completion_ids: Sequence[int],
    eos_id: int,
    max_seq_len: int,
) -> EncodedExample:
    """Assemble ids and labels from already tokenized pieces (truncation rules: module docstring).

    Args:
        context_ids: BPE ids of the context, ``(Lc,)``.
        completion_ids: BPE ids of ``" " + completion``, ``(Lp,)``.
        eos_id: the separator / end token (50256 for GPT-2).
        max_seq_len: longest allowed sequence, >= 2 (room for the separator and final eos).

    Returns:
        ``input_ids (T,)``, ``labels (T,)`` with ``T = min(Lc + Lp + 2, max_seq_len)``, and
        ``context_len`` (prompt length, separator included).
    """
    if max_seq_len < 2:
        raise ValueError(f"max_seq_len must be >= 2 (separator + final eos), got {max_seq_len}")
    prompt = list(context_ids) + [eos_id]
    target = list(completion_ids) + [eos_id]
    if len(prompt) + len(target) > max_seq_len:
        if len(target) > max_seq_len - 1:
            # The completion alone overflows: keep its beginning and the final eos, so the model
            # still learns to stop; the prompt shrinks to the separator.
            target = target[: max_seq_len - 2] + [eos_id]
        # Left cut: the end of the context sits next to the completion and is kept, as in the
        # reference decoder's query truncation.
        prompt = prompt[len(prompt) + len(target) - max_seq_len:]
    return {
        "input_ids": prompt + target,
        "labels": [IGNORE_INDEX] * len(prompt) + target,
        "context_len": len(prompt),
    }


def tokenize_pairs(
    records: Sequence[Mapping[str, str]], tokenizer: _Tokenizer
) -> tuple[list[list[int]], list[list[int]]]:
    """BPE ids of every record's context and of ``" " + completion`` (batched: fast tokenizers
    encode a list in parallel).

    Special-token strings inside the text (``<|endoftext|>``) are matched as the special token by
    Hugging Face tokenizers, unlike the reference encoder; none of the three data sets contains one.
    """
    if not records:
        return [], []
    # Contexts repeat once per reference (E2E train: 42k lines, 4.9k MRs): BPE is deterministic,
    # so each unique context is tokenized once.
    unique = list(dict.fromkeys(r["context"] for r in records))
    unique_ids = tokenizer(unique, add_special_tokens=False)["input_ids"]
    by_context = dict(zip(unique, unique_ids, strict=True))
    ctx_ids = [list(by_context[r["context"]]) for r in records]
    # The leading space makes the completion's first word a word-initial BPE token, as in
    # gpt2_encode.py (`enc.encode(' ' + completion)`).
    completions = [" " + r["completion"] for r in records]
    comp_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    return ctx_ids, list(comp_ids)


def encode_record(
    record: Mapping[str, str], tokenizer: _Tokenizer, max_seq_len: int
) -> EncodedExample:
    """Encode one ``{"context", "completion"}`` record (see :func:`build_example`)."""
    return encode_records([record], tokenizer, max_seq_len)[0]


def encode_records(
    records: Sequence[Mapping[str, str]], tokenizer: _Tokenizer, max_seq_len: int
) -> list[EncodedExample]:
    """Encode records in order; the tokenizer's ``eos_token_id`` is the separator and end token."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("tokenizer has no eos_token_id (GPT-2's is 50256)")
    ctx_ids, comp_ids = tokenize_pairs(records, tokenizer)
    return [
        build_example(c, p, eos_id, max_seq_len) for c, p in zip(ctx_ids, comp_ids, strict=True)
    ]
