"""BLEU and NIST exactly as the E2E NLG challenge scorer computes them with ``measure_scores.py -p``
(its ``metrics/pymteval.py``): mteval-v13a tokenization, case-insensitive n-gram matching, corpus
level sufficient statistics.

Definitions:
    BLEU (Papineni et al., 2002, "BLEU: a Method for Automatic Evaluation of Machine Translation"):
        ``BP * exp(1/N * sum_n log p_n)``, N = 4, ``p_n`` = clipped n-gram matches / hypothesis
        n-grams summed over the corpus, ``BP = exp(1 - r / c)`` when ``c <= r`` (c: hypothesis
        tokens, r: sum of the reference lengths closest to each hypothesis, ties to the shorter).
    NIST (Doddington, 2002, "Automatic Evaluation of Machine Translation Quality Using N-gram
        Co-Occurrence Statistics"): ``BP * sum_n (sum_{matched w} Info(w)) / (hypothesis n-grams)``,
        N = 5, ``Info(w_1..w_n) = log2(count(w_1..w_{n-1}) / count(w_1..w_n))`` with counts over all
        reference sentences of the corpus (the 0-gram count is the number of reference tokens),
        ``BP = exp(-beta * log(min(c / r, 1))^2)``, ``beta = -log(0.5) / log(1.5)^2`` (the factor
        is 0.5 when the hypothesis is 2/3 of the reference length), r = sum over instances of the
        mean reference length.

Conventions of pymteval that this module keeps on purpose, because the official numbers depend
on them (the E2E scores in papers are these numbers):
    * Matching lowercases tokens after tokenizing (``case_sensitive=False``).
    * An empty string tokenizes to ``['']``: one (empty) token, not zero.
    * A hypothesis of L tokens adds ``L - n + 1`` to the n-gram total even when that is negative,
      so very short hypotheses lower the totals of the higher orders (corpus BLEU can exceed 1).
    * BLEU floors a zero match count at 1e-15 and a non-positive total at 1e-9 instead of returning
      0 (a corpus without any 4-gram match gets a tiny positive BLEU).
    * NIST treats an n-gram total of exactly 0 as 1 (the original pymteval divides by zero there;
      the widely used fork of Li et al. uses 1, which this module follows).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

Tokens = list[str]
Sentence = str | Sequence[str]  # raw text, or tokens already produced by mteval_tokenize
NGram = tuple[str, ...]

# mteval-v13a's language-dependent tokenization (Western languages), in its order:
# punctuation and symbols: { | } ~  [ \ ] ^ _ `  space ! " # $ % &  ( ) * +  : ; < = > ? @  /
_SYMBOLS = re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])")
_PERIOD_COMMA_AFTER_NON_DIGIT = re.compile(r"([^0-9])([\.,])")
_PERIOD_COMMA_BEFORE_NON_DIGIT = re.compile(r"([\.,])([^0-9])")
_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")
_WHITESPACE = re.compile(r"\s+")

# mteval-v13a's language-independent part: drop <skipped>, join hyphenated line ends and lines,
# unescape the SGML entities (applied one after another, like the Perl and pymteval).
_LANGUAGE_INDEPENDENT = (("<skipped>", ""), ("-\n", ""), ("\n", " "), ("&quot;", '"'),
                         ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))


def mteval_tokenize(text: str) -> Tokens:
    """Tokens of ``text`` under mteval-v13a's normalisation and tokenization, as pymteval has it.

    Punctuation and symbols become separate tokens; a period or comma is split off unless it is
    between digits (``10.50`` stays one token); a dash is split off after a digit. Case is kept
    (matching lowercases later). An empty or blank string gives ``['']``.
    """
    for old, new in _LANGUAGE_INDEPENDENT:
        text = text.replace(old, new)
    text = f" {text} "
    text = _SYMBOLS.sub(r" \1 ", text)
    text = _PERIOD_COMMA_AFTER_NON_DIGIT.sub(r"\1 \2 ", text)
    text = _PERIOD_COMMA_BEFORE_NON_DIGIT.sub(r" \1 \2", text)
    text = _DASH_AFTER_DIGIT.sub(r"\1 \2 ", text)
    return _WHITESPACE.sub(" ", text).strip().split(" ")


def _as_tokens(sentence: Sentence) -> Tokens:
    """Tokenize raw text; keep a token sequence as it is (pymteval's ``check_tokenized``)."""
    return mteval_tokenize(sentence) if isinstance(sentence, str) else list(sentence)


def ngram_counts(tokens: Sequence[str], n: int, case_sensitive: bool = False) -> Counter:
    """Counts of the n-grams of ``tokens`` (lowercased unless ``case_sensitive``), keyed in the
    order of their first occurrence."""
    toks = tokens if case_sensitive else [tok.lower() for tok in tokens]
    return Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


def _max_reference_counts(references: Sequence[Tokens], n: int, case_sensitive: bool) -> dict:
    """For each n-gram, its largest count in any one reference (the BLEU / NIST clipping bound)."""
    merged: dict[NGram, int] = {}
    for ref in references:
        for gram, count in ngram_counts(ref, n, case_sensitive).items():
            if count > merged.get(gram, 0):
                merged[gram] = count
    return merged


def _check_references(references: Sequence[Tokens]) -> None:
    if not references:
        raise ValueError("every hypothesis needs at least one reference; got none")


class BleuAccumulator:
    """Corpus BLEU from per-instance sufficient statistics (pymteval's ``BLEUScore``).

    ``add`` one instance at a time, ``score`` at any point. ``smoothing`` is added to every match
    count and total (1.0 gives the +1-smoothed sentence BLEU of Moses' MERT, which the official
    scorer reports as ``sentBLEU``).
    """

    TINY = 1e-15  # floor of a zero match count, so that log() is defined
    SMALL = 1e-9  # floor of a non-positive n-gram total

    def __init__(self, max_ngram: int = 4, case_sensitive: bool = False, smoothing: float = 0.0):
        self.max_ngram = max_ngram
        self.case_sensitive = case_sensitive
        self.smoothing = smoothing
        self.reset()

    def reset(self) -> None:
        """Forget all instances added so far."""
        self.ref_len = 0
        self.hyp_totals = [0] * self.max_ngram  # hypothesis n-grams, L - n + 1 per instance
        self.matches = [0] * self.max_ngram  # clipped n-gram matches

    def add(self, hypothesis: Sentence, references: Sequence[Sentence]) -> None:
        """Add one instance: clipped n-gram matches, n-gram totals, closest reference length."""
        hyp = _as_tokens(hypothesis)
        refs = [_as_tokens(ref) for ref in references]
        _check_references(refs)
        for i in range(self.max_ngram):
            bound = _max_reference_counts(refs, i + 1, self.case_sensitive)
            hyp_counts = ngram_counts(hyp, i + 1, self.case_sensitive)
            self.matches[i] += sum(min(count, bound.get(gram, 0))
                                   for gram, count in hyp_counts.items())
            self.hyp_totals[i] += len(hyp) - i  # may be negative for short hypotheses (pymteval)
        # the reference closest in length; of two equally close, the shorter
        self.ref_len += len(min(refs, key=lambda ref: (abs(len(ref) - len(hyp)), len(ref))))

    def score(self) -> float:
        """BLEU (0-1 scale) of the instances added so far."""
        hyp_len = self.hyp_totals[0]
        bp = 1.0
        if hyp_len <= self.ref_len:
            bp = math.exp(1.0 - self.ref_len / (float(hyp_len) if hyp_len else 1e-5))
        log_sum = 0.0
        for matches, total in zip(self.matches, self.hyp_totals, strict=True):
            matches = max(matches + self.smoothing, self.TINY)
            total = max(total + self.smoothing, self.SMALL)
            log_sum += math.log(matches / total)
        return bp * math.exp((1.0 / self.max_ngram) * log_sum)


class NistAccumulator:
    """Corpus NIST from per-instance statistics (pymteval's ``NISTScore``).

    The information weights depend on the reference n-gram counts of the whole corpus, so the
    matched n-grams are kept per instance and weighted when ``score`` is called.
    """

    BETA = -math.log(0.5) / math.log(1.5) ** 2  # mteval-v13a's brevity penalty factor

    def __init__(self, max_ngram: int = 5, case_sensitive: bool = False):
        self.max_ngram = max_ngram
        self.case_sensitive = case_sensitive
        self.reset()

    def reset(self) -> None:
        """Forget all instances added so far."""
        # reference n-gram counts over all references, index n = 0..max_ngram (0: the empty
        # n-gram, whose count is the number of reference tokens)
        self.ref_counts: list[Counter] = [Counter() for _ in range(self.max_ngram + 1)]
        self.matched: list[list[dict[NGram, int]]] = [[] for _ in range(self.max_ngram)]
        self.hyp_totals = [0] * self.max_ngram  # L - n + 1 per instance, may be negative
        self.avg_ref_len = 0.0  # sum over instances of the mean reference length

    def add(self, hypothesis: Sentence, references: Sequence[Sentence]) -> None:
        """Add one instance: clipped matched n-grams, reference n-gram counts, lengths."""
        hyp = _as_tokens(hypothesis)
        refs = [_as_tokens(ref) for ref in references]
        _check_references(refs)
        for i in range(self.max_ngram):
            n = i + 1
            self.hyp_totals[i] += len(hyp) - i
            bound = _max_reference_counts(refs, n, self.case_sensitive)
            matched = {}
            for gram, count in ngram_counts(hyp, n, self.case_sensitive).items():
                hits = min(count, bound.get(gram, 0))
                if hits:
                    matched[gram] = hits
            self.matched[i].append(matched)
            for ref in refs:
                self.ref_counts[n].update(ngram_counts(ref, n, self.case_sensitive))
        ref_tokens = sum(len(ref) for ref in refs)
        self.ref_counts[0][()] += ref_tokens
        self.avg_ref_len += ref_tokens / float(len(refs))

    def info(self, gram: NGram) -> float:
        """Information weight of an n-gram: log2 of (count of its (n-1)-gram prefix) / (its
        count), both over all references; 0 for an n-gram no reference contains."""
        count = self.ref_counts[len(gram)].get(gram, 0)
        if not count:
            return 0.0
        return math.log(self.ref_counts[len(gram) - 1][gram[:-1]] / float(count), 2)

    def length_penalty(self, hyp_len: float, avg_ref_len: float) -> float:
        """``exp(-beta * log(ratio)^2)`` for ``ratio = hyp_len / avg_ref_len`` below 1, else 1."""
        ratio = hyp_len / float(avg_ref_len)
        if ratio >= 1:
            return 1.0
        if ratio <= 0:
            return 0.0
        return math.exp(-self.BETA * math.log(ratio) ** 2)

    def score(self) -> float:
        """NIST of the instances added so far."""
        if not self.matched[0]:
            raise ValueError("NIST of an empty corpus is undefined: add at least one instance")
        nist_sum = 0.0
        for i in range(self.max_ngram):
            info_sum = 0.0
            for matched in self.matched[i]:  # per instance, in order: the same float rounding
                info_sum += sum(self.info(gram) * hits for gram, hits in matched.items())
            total = self.hyp_totals[i] or 1  # a zero total counts as 1 (see the module docstring)
            nist_sum += info_sum / total
        return self.length_penalty(self.hyp_totals[0], self.avg_ref_len) * nist_sum


def _accumulate(acc, hypotheses: Sequence[Sentence], references: Sequence[Sequence[Sentence]]):
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference groups")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    for hyp, refs in zip(hypotheses, references, strict=True):
        acc.add(hyp, refs)
    return acc.score()


def corpus_bleu(hypotheses: Sequence[Sentence], references: Sequence[Sequence[Sentence]],
                case_sensitive: bool = False, smoothing: float = 0.0) -> float:
    """Corpus BLEU (0-1) of ``hypotheses[i]`` against the group ``references[i]``, as the E2E
    scorer computes it."""
    return _accumulate(BleuAccumulator(4, case_sensitive, smoothing), hypotheses, references)


def sentence_bleu(hypothesis: Sentence, references: Sequence[Sentence],
                  case_sensitive: bool = False, smoothing: float = 0.0) -> float:
    """BLEU of one instance (``smoothing=1.0``: the official per-segment ``sentBLEU``)."""
    return corpus_bleu([hypothesis], [references], case_sensitive, smoothing)


def corpus_nist(hypotheses: Sequence[Sentence], references: Sequence[Sequence[Sentence]],
                case_sensitive: bool = False) -> float:
    """Corpus NIST (5-grams) of ``hypotheses[i]`` against ``references[i]``, as the E2E scorer
    computes it."""
    return _accumulate(NistAccumulator(5, case_sensitive), hypotheses, references)


def sentence_nist(hypothesis: Sentence, references: Sequence[Sentence],
                  case_sensitive: bool = False) -> float:
    """NIST of one instance, information weights from its own references only."""
    return corpus_nist([hypothesis], [references], case_sensitive)
