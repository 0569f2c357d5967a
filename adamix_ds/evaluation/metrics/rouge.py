"""ROUGE-L as the MS-COCO caption evaluator computes it (the E2E scorer's ROUGE_L).

Lin (2004), "ROUGE: A Package for Automatic Evaluation of Summaries", sec. 3.1: with LCS the
longest common subsequence of a candidate c and a reference r, ``P = LCS / |c|``, ``R = LCS / |r|``,
``F = (1 + beta^2) P R / (R + beta^2 P)``. The COCO variant takes the maximum P and the maximum R
over the references (possibly from different references), uses ``beta = 1.2``, and averages F
over the instances. Sentences are the PTB-tokenized strings, split on single spaces (so an empty
sentence is one empty token).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences.

    Bit-parallel (Allison and Dix, 1986; Hyyro, 2004): bit i of ``v`` is 0 where the LCS
    row of the DP table steps up at position i of ``a``; one big-integer update per token of
    ``b`` instead of a row of the O(|a| |b|) table.
    """
    if not a or not b:
        return 0
    positions = {}
    for i, tok in enumerate(a):
        positions[tok] = positions.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & positions.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l_sentence(candidate: str, references: Sequence[str], beta: float = 1.2) -> float:
    """ROUGE-L F of one tokenized candidate against its tokenized references (COCO's
    ``Rouge.calc_score``)."""
    if not references:
        raise ValueError("ROUGE-L needs at least one reference")
    cand = candidate.split(" ")
    precisions, recalls = [], []
    for reference in references:
        ref = reference.split(" ")
        lcs = lcs_length(ref, cand)
        precisions.append(lcs / float(len(cand)))
        recalls.append(lcs / float(len(ref)))
    p, r = max(precisions), max(recalls)
    if p == 0 or r == 0:
        return 0.0
    return ((1 + beta ** 2) * p * r) / float(r + beta ** 2 * p)


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2
            ) -> tuple[float, list[float]]:
    """Mean ROUGE-L F over the instances, and the per-instance values."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference groups")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    scores = [
        rouge_l_sentence(h, refs, beta) for h, refs in zip(hypotheses, references, strict=True)
    ]
    return float(np.mean(np.array(scores))), scores
