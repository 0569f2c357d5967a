"""TER as the WebNLG challenge's ``GenerationEval`` computes it: not tercom but ``pyter3`` 0.3's
``ter(hyp.split(), ref.split())`` (a greedy shift-then-Levenshtein word edit rate), minimum over an
instance's references, averaged over instances (0-1 scale; a sentence can exceed 1)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["sentence_ter", "generation_eval_ter"]



def _edit_distances(candidates: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Word-level Levenshtein distance of every row of ``candidates`` (C, n) to ``ref`` (m,).

    One DP row per hypothesis position, vectorised over candidates and reference positions; the
    in-row recurrence new[j] = min(tmp[j], new[j-1] + 1) is min_k<=j tmp[k] + (j - k), a running
    minimum of tmp - j.
    """
    steps = np.arange(len(ref) + 1)
    rows = np.broadcast_to(steps, (candidates.shape[0], len(ref) + 1))
    costs = candidates[:, :, None] != ref[None, None, :]
    for i in range(candidates.shape[1]):
        tmp = np.empty(rows.shape, dtype=np.int64)
        tmp[:, 0] = rows[:, 0] + 1
        np.minimum(rows[:, 1:] + 1, rows[:, :-1] + costs[:, i], out=tmp[:, 1:])
        tmp -= steps
        np.minimum.accumulate(tmp, axis=1, out=tmp)
        rows = tmp + steps
    return rows[:, -1]


def _shift_candidates(words: list[int], ref: list[int]) -> list[tuple]:
    """pyter's candidate shifts, distinct: for every i != j with words[i] == ref[j], the maximal
    run words[i:i+L] == ref[j:j+L] moved to start at index j of the remaining words."""
    out = {}
    n, m = len(words), len(ref)
    for i in range(n):
        for j in range(m):
            if i == j or words[i] != ref[j]:
                continue
            length = 1
            while i + length < n and j + length < m and words[i + length] == ref[j + length]:
                length += 1
            shifted = words[:i] + words[i + length:]
            shifted[j:j] = words[i:i + length]
            out[tuple(shifted)] = None
    return list(out)


def sentence_ter(hypothesis: Sequence[str], reference: Sequence[str]) -> float:
    """pyter's ``ter(hypothesis, reference)``: greedily apply the shift that most reduces the word
    edit distance while one does (each shift costs 1; equal gains go to the greatest resulting
    word list, as pyter sorts them), then add the Levenshtein distance; divided by the reference
    length.

    Raises:
        ValueError: empty reference (pyter divides by zero; ``eval.py`` then counts 1.0).
    """
    if not reference:
        raise ValueError("TER of an empty reference is undefined")
    # ids in sorted-string order, so comparing id lists compares the word lists (tie-break)
    vocab = {w: k for k, w in enumerate(sorted(set(hypothesis) | set(reference)))}
    words = [vocab[w] for w in hypothesis]
    ref_list = [vocab[w] for w in reference]
    ref = np.asarray(ref_list, dtype=np.int64)
    distance = int(_edit_distances(np.asarray(words, dtype=np.int64).reshape(1, -1), ref)[0])
    shifts = 0
    while True:
        candidates = _shift_candidates(words, ref_list)
        if not candidates:
            break
        after = _edit_distances(np.asarray(candidates, dtype=np.int64), ref)
        best_after = int(after.min())
        if best_after >= distance:
            break
        words = list(max(c for c, d in zip(candidates, after, strict=True) if d == best_after))
        distance = best_after
        shifts += 1
    return (shifts + distance) / len(ref_list)


def generation_eval_ter(hypotheses_tok: Sequence[str],
                        references_tok: Sequence[Sequence[str]]) -> list[float]:
    """Per-instance TER as ``eval.py``'s ``ter_score``: min over references of pyter's TER on the
    whitespace-split tokenised texts, 1.0 for an empty reference. Average it for the corpus."""
    cache: dict[tuple, float] = {}
    scores = []
    for hyp, refs in zip(hypotheses_tok, references_tok, strict=True):
        candidates = []
        for ref in refs:
            key = (hyp, ref)
            if key not in cache:  # references repeated to pad to -nr are scored once
                ref_words = ref.split()
                cache[key] = sentence_ter(hyp.split(), ref_words) if ref_words else 1.0
            candidates.append(cache[key])
        scores.append(min(candidates))
    return scores
