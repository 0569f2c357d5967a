"""CIDEr-D as the MS-COCO caption evaluator's ``Cider`` computes it (the E2E scorer's CIDEr).

Vedantam, Zitnick and Parikh (2015), "CIDEr: Consensus-based Image Description Evaluation",
eq. 2-5 with the CIDEr-D changes of sec. 8: for n = 1..4, every sentence is a vector of
``tf(g) * idf(g)`` over its n-grams g, ``idf(g) = log(N) - log(max(1, df(g)))`` with N the number
of instances and df(g) the number of instances whose references contain g; the similarity of the
candidate with one reference is the cosine with clipped candidate weights
(``sum_g min(c_g, r_g) r_g / (|c| |r|)``) times ``exp(-(l_c - l_r)^2 / (2 sigma^2))``,
sigma = 6; CIDEr-D of an instance is ``10 * mean_n mean_refs`` of it, the corpus score the mean
over instances.

Two details of the COCO code that change numbers and are kept: the length l of a sentence is its
number of bigrams (not tokens), and idf comes from the references of the scored corpus itself.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

NGram = tuple[str, ...]


def _ngrams(sentence: str, n: int) -> Counter:
    """Counts of the 1..n-grams of a tokenized sentence (split on any whitespace)."""
    words = sentence.split()
    return Counter(tuple(words[i:i + k])
                   for k in range(1, n + 1) for i in range(len(words) - k + 1))


def cider_d(hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 4,
            sigma: float = 6.0) -> tuple[float, list[float]]:
    """Corpus CIDEr-D (x10 scale) of tokenized ``hypotheses[i]`` against ``references[i]``, and
    the per-instance values."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference groups")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    if any(not refs for refs in references):
        raise ValueError("CIDEr-D needs at least one reference per hypothesis")
    hyp_counts = [_ngrams(h, n) for h in hypotheses]
    ref_counts = [[_ngrams(r, n) for r in refs] for refs in references]
    doc_freq: Counter = Counter()
    for refs in ref_counts:
        doc_freq.update(set(g for ref in refs for g in ref))
    log_n = math.log(float(len(ref_counts)))

    def tfidf(counts: Counter) -> tuple[list[dict[NGram, float]], list[float], int]:
        """Per-order tf-idf vectors, their norms, and the bigram count (COCO's "length")."""
        vec: list[dict[NGram, float]] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            vec[k][gram] = weight = float(tf) * (log_n - math.log(max(1.0, doc_freq[gram])))
            norm[k] += weight ** 2
            if k == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    penalty_scale = 2 * sigma ** 2
    scores = []
    for hyp, refs in zip(hyp_counts, ref_counts, strict=True):
        h_vec, h_norm, h_len = tfidf(hyp)
        total = [0.0] * n
        for ref in refs:
            r_vec, r_norm, r_len = tfidf(ref)
            penalty = math.exp(-float(h_len - r_len) ** 2 / penalty_scale)
            for k in range(n):
                val = sum(min(w, r_vec[k].get(g, 0.0)) * r_vec[k].get(g, 0.0)
                          for g, w in h_vec[k].items())
                if h_norm[k] != 0 and r_norm[k] != 0:
                    val /= h_norm[k] * r_norm[k]
                total[k] += val * penalty
        scores.append(sum(total) / n / len(refs) * 10.0)
    return float(np.mean(np.array(scores))), scores
