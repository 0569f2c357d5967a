"""WebNLG 2017 and DART scores as the AdaMix / LoRA code reports them: BLEU, METEOR and TER from
the WebNLG challenge's ``GenerationEval`` ``eval.py`` (``-nr 6 -m bleu,meteor,ter``), in Python.

What ``eval.py`` does, and how it is matched here:

* **BLEU**: ``perl multi-bleu-detok.perl reference0 ... reference5 < hypothesis`` on the files as
  written (no ``-lc``: case-sensitive), reported as the script prints it (0-100; the script rounds
  to 2 decimals, :func:`multi_bleu_detok` does not). The script tokenises every line with
  mteval-v13a's rules (:func:`mteval_13a_tokenize`), clips n-gram counts (n <= 4) by their maximum
  count in any reference, takes the reference length closest to the hypothesis' (the shorter on a
  tie) for the brevity penalty, and has no smoothing (a zero precision gives 0).
* **METEOR**: ``java -Xmx2G -jar meteor-1.5.jar hyp ref -l en -norm -r 6`` on the hypotheses and
  references tokenised by ``nltk.word_tokenize``; the jar keeps, per instance, the statistics of
  the best-scoring reference and computes the corpus score from their sum. Here the same jar
  (shipped by PyPI ``pycocoevalcap``) runs in ``-stdio`` mode with ``-l en -norm``
  (:class:`.meteor.Meteor15`): a ``SCORE`` per instance, then an ``EVAL`` of a subset's
  statistics, which gives the file mode's final score to the last printed digit (checked in the
  tests) with one JVM start for all subsets. ``|||`` (the stdio field separator) is sent as
  ``| | |``, which ``-norm`` tokenises identically.
* **TER**: not tercom. ``eval.py`` calls ``pyter.ter(hyp.split(), ref.split())`` (``pyter3`` 0.3)
  on the nltk-tokenised texts of every reference, keeps the minimum per instance (an empty
  reference counts 1) and averages over instances (0-1 scale, a sentence can exceed 1).
  ``pyter`` is a greedy shift-then-Levenshtein edit rate, reimplemented in :func:`sentence_ter`
  with the same candidate shifts, cost (1 per shift) and tie-breaking.

Deliberate differences from running ``eval.py`` on files (documented, all corner cases):

* ``eval.py`` reads its files with ``read().split('\\n')``, so the trailing newline every file
  has adds a phantom instance (empty hypothesis, six empty references): TER averages one extra
  1.0 into the score and METEOR stops with "test and reference not same length". Here a file's
  final newline ends its last line, nothing more.
* Tokenisation for METEOR / TER is nltk's ``NLTKWordTokenizer`` applied to the whole line (what
  ``word_tokenize(..., preserve_line=True)`` does); ``eval.py`` first splits sentences with the
  Punkt model (nltk 3.5), which needs downloaded data. The two agree whenever no word has a
  sentence-final period attached in mid-line, in particular on text written the way the LoRA
  decoder writes it (``--tokenize --lower``: :func:`lora_postprocess`).
* In the multi-file reference format an empty line means "no reference" and is dropped, where
  ``eval.py`` would pass it on: multi-bleu-detok would count it as a zero-length reference for the
  closest length, pyter TER as 1.0. The LoRA decoder never writes empty lines (it repeats the
  first reference up to ``--ref_num``, which changes no score).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...data.readers import SEEN_WEBNLG_CATEGORIES
from .base import MetricResult
from .java import JavaNotFoundError
from .meteor import Meteor15, MeteorError
from .ter import generation_eval_ter, sentence_ter

__all__ = [
    "WEBNLG_METRICS",
    "BleuStats",
    "lora_postprocess",
    "mteval_13a_tokenize",
    "multi_bleu_detok",
    "sentence_ter",
    "generation_eval_ter",
    "generation_eval_tokenize",
    "score_webnlg",
    "score_dart",
    "read_hypotheses",
    "read_reference_files",
    "read_webnlg_references",
    "read_categories",
]

WEBNLG_METRICS = ("BLEU", "METEOR", "TER")
PathLike = str | Path

# ---------------------------------------------------------------------------------------------
# Text preparation
# ---------------------------------------------------------------------------------------------

# Perl's \s on character strings (multi-bleu-detok reads UTF-8): unlike Python's \s and str.split
# it does not include the ASCII separators \x1c-\x1f.
_PERL_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_PERL_SPACES = re.compile(f"[{_PERL_SPACE}]+")
# mteval-v13a: every ASCII punctuation mark except apostrophe, hyphen, period and comma becomes a
# token: { | } ~  [ \ ] ^ _ `  space ! " # $ % &  ( ) * +  : ; < = > ? @  /
_13A_PUNCT = re.compile(r"([{-~\[-` -&(-+:-@/])")
_13A_PERIOD_COMMA_AFTER_NON_DIGIT = re.compile(r"([^0-9])([.,])")
_13A_PERIOD_COMMA_BEFORE_NON_DIGIT = re.compile(r"([.,])([^0-9])")
_13A_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")
_LINE_BREAKS = re.compile(r"[\r\n]")


def mteval_13a_tokenize(text: str) -> list[str]:
    """Tokens of ``text`` by the ``tokenization`` routine of ``multi-bleu-detok.perl``.

    That routine is mteval-v13a's: drop ``<skipped>``, join ``-\\n`` hyphenation and lines,
    unescape ``&quot; &amp; &lt; &gt;`` (in that order), split off ASCII punctuation, split off
    periods and commas unless they sit between digits, split a dash after a digit, then split
    on whitespace (Perl's definition).
    """
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    text = (text.replace("&quot;", '"').replace("&amp;", "&")
            .replace("&lt;", "<").replace("&gt;", ">"))
    text = f" {text} "
    text = _13A_PUNCT.sub(r" \1 ", text)
    text = _13A_PERIOD_COMMA_AFTER_NON_DIGIT.sub(r"\1 \2 ", text)
    text = _13A_PERIOD_COMMA_BEFORE_NON_DIGIT.sub(r" \1 \2", text)
    text = _13A_DASH_AFTER_DIGIT.sub(r"\1 \2 ", text)
    return [tok for tok in _PERL_SPACES.split(text) if tok]


def lora_postprocess(text: str, *, tokenize: bool = True, lower: bool = True) -> str:
    """A text as the LoRA / AdaMix decoder writes it for WebNLG and DART (``gpt2_decode.py
    --tokenize --lower``), i.e. the files the paper's numbers were computed on.

    Lower-casing comes first; tokenising makes every run of word characters (``\\w``) and every
    other non-space character a token, joined by single spaces.
    """
    if lower:
        text = text.lower()
    if tokenize:
        # Same tokens as ' '.join(re.split(r'(\W)', text)).split(): word runs and single
        # non-word characters, whitespace dropped (str.isspace is str.split's definition).
        text = " ".join(t for t in re.findall(r"\w+|\W", text) if not t.isspace())
    return text


_word_tokenizer = None


def generation_eval_tokenize(text: str) -> str:
    """``' '.join(nltk.word_tokenize(text))`` as ``eval.py`` prepares METEOR and TER input,
    without the Punkt sentence split (see the module docstring).

    Raises:
        ImportError: nltk is not installed (``pip install 'adamix-ds[eval]'``).
    """
    global _word_tokenizer
    if _word_tokenizer is None:
        try:
            from nltk.tokenize.destructive import NLTKWordTokenizer
        except ImportError as err:
            raise ImportError("METEOR and TER tokenise with nltk as GenerationEval does: "
                              "pip install 'adamix-ds[eval]' (or pip install nltk)") from err
        _word_tokenizer = NLTKWordTokenizer()
    return " ".join(_word_tokenizer.tokenize(text))


# ---------------------------------------------------------------------------------------------
# BLEU (multi-bleu-detok.perl)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BleuStats:
    """What ``multi-bleu-detok.perl`` prints: ``BLEU = {bleu:.2f}, p1/p2/p3/p4 (BP, ratio,
    hyp_len, ref_len)``, unrounded; precisions in 0-1."""

    bleu: float
    precisions: tuple
    brevity_penalty: float
    hyp_len: int
    ref_len: int

    @property
    def ratio(self) -> float:
        return self.hyp_len / self.ref_len if self.ref_len else 0.0


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def multi_bleu_detok(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> BleuStats:
    """Corpus BLEU exactly as ``multi-bleu-detok.perl`` (no ``-lc``) computes it.

    Args:
        hypotheses: one detokenised (or already tokenised) string per instance.
        references: for each instance, its reference strings (at least one).

    Returns:
        :class:`BleuStats`; ``bleu`` on the 0-100 scale. When the hypotheses have no token at all
        the script dies dividing by zero, and with no reference token it prints 0 and exits 1;
        both give 0.0 here.
    """
    correct = [0] * 5
    total = [0] * 5
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references, strict=True):
        words = mteval_13a_tokenize(hyp)
        max_ref_counts: dict[tuple, int] = {}
        ref_lengths = []
        for ref in refs:
            ref_words = mteval_13a_tokenize(ref)
            ref_lengths.append(len(ref_words))
            for n in range(1, 5):
                for gram, count in _ngrams(ref_words, n).items():
                    if count > max_ref_counts.get(gram, 0):
                        max_ref_counts[gram] = count
        hyp_len += len(words)
        # closest reference length; on a tie the shorter one
        ref_len += min(ref_lengths, key=lambda length: (abs(len(words) - length), length))
        for n in range(1, 5):
            for gram, count in _ngrams(words, n).items():
                total[n] += count
                correct[n] += min(count, max_ref_counts.get(gram, 0))
    precisions = tuple(correct[n] / total[n] if total[n] else 0.0 for n in range(1, 5))
    bp = math.exp(1 - ref_len / hyp_len) if 0 < hyp_len < ref_len else 1.0
    if ref_len == 0 or min(precisions) == 0.0:
        # the script's log(0) is -9999999999: any zero precision gives exp(-huge) == 0
        return BleuStats(0.0, precisions, bp, hyp_len, ref_len)
    bleu = bp * math.exp(sum(math.log(p) for p in precisions) / 4)
    return BleuStats(100.0 * bleu, precisions, bp, hyp_len, ref_len)


# ---------------------------------------------------------------------------------------------
# METEOR 1.5 (the pycocoevalcap jar, -stdio)
# ---------------------------------------------------------------------------------------------

def _meteor_text(text: str) -> str:
    """A text as one stdio field that the jar reads as the file mode would read the line:
    ``|||`` separates fields (``-norm`` tokenises ``| | |`` the same) and a line break would end
    the request (nltk tokenisation has already made every run of whitespace one space)."""
    return _LINE_BREAKS.sub(" ", text).replace("|||", "| | |")


# ---------------------------------------------------------------------------------------------
# Corpus scoring
# ---------------------------------------------------------------------------------------------

def _check_inputs(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise ValueError("hypotheses must be a list of strings and references a list of lists "
                         "of strings, one item per instance")
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets")
    if not hypotheses:
        raise ValueError("no instances to score")
    for i, (hyp, refs) in enumerate(zip(hypotheses, references, strict=True)):
        if not isinstance(hyp, str):
            raise ValueError(f"hypothesis {i} is a {type(hyp).__name__}, not a string")
        if isinstance(refs, str) or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references of instance {i} must be a list of strings, "
                             f"got {refs!r:.80}")
        if len(refs) == 0:
            raise ValueError(f"instance {i} has no reference")


def _score_subsets(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                   subsets: Mapping[str, list[int]], java: str | None
                   ) -> dict[str, MetricResult]:
    """BLEU, METEOR and TER of each subset (instance indices); METEOR in one JVM."""
    results = {name: MetricResult() for name in subsets}
    for name, idx in subsets.items():
        bleu = multi_bleu_detok([hypotheses[i] for i in idx], [references[i] for i in idx])
        results[name].scores["BLEU"] = bleu.bleu

    try:
        hyps_tok = [generation_eval_tokenize(h) for h in hypotheses]
        refs_tok = [[generation_eval_tokenize(r) for r in refs] for refs in references]
    except ImportError as err:
        for result in results.values():
            result.errors["METEOR"] = result.errors["TER"] = str(err)
        return results

    meteor: Meteor15 | None = None
    try:
        meteor = Meteor15(java)  # started first: the jar's ~15 s of loading overlap TER
    except (JavaNotFoundError, FileNotFoundError, OSError) as err:
        for result in results.values():
            result.errors["METEOR"] = f"METEOR 1.5 could not be started: {err}"
    try:
        ter = generation_eval_ter(hyps_tok, refs_tok)
        for name, idx in subsets.items():
            results[name].scores["TER"] = sum(ter[i] for i in idx) / len(idx)
        if meteor is not None:
            _meteor_scores(meteor, hyps_tok, refs_tok, subsets, results)
    finally:
        if meteor is not None:
            meteor.close()
    return {name: MetricResult({m: r.scores[m] for m in WEBNLG_METRICS if m in r.scores},
                               r.errors) for name, r in results.items()}


def _meteor_scores(meteor: Meteor15, hyps_tok: Sequence[str], refs_tok: Sequence[Sequence[str]],
                   subsets: Mapping[str, list[int]], results: dict[str, MetricResult]) -> None:
    """METEOR of each subset into ``results``, all with the same process."""
    hyps = [_meteor_text(h) for h in hyps_tok]
    refs = [[_meteor_text(r) for r in group] for group in refs_tok]
    try:
        for name, idx in subsets.items():
            results[name].scores["METEOR"] = meteor.score([hyps[i] for i in idx],
                                                          [refs[i] for i in idx])[0]
    except (MeteorError, OSError) as err:
        for result in results.values():
            result.scores.pop("METEOR", None)
            result.errors["METEOR"] = str(err)


def score_webnlg(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    categories: Sequence[str] | None = None,
    seen_categories: Iterable[str] = SEEN_WEBNLG_CATEGORIES,
    java: str | None = None,
) -> dict[str, MetricResult]:
    """WebNLG BLEU (0-100), METEOR (0-1), TER (0-1) as GenerationEval computes them.

    Args:
        hypotheses: one output per instance (per unique input), as written to the hypothesis file.
        references: the reference texts of each instance (any number >= 1; repeats are harmless).
        categories: the DBpedia category of each instance; adds the ``seen`` / ``unseen`` subsets
            the paper reports (WebNLG S / U / A). Subsets without instances are left out.
        seen_categories: the categories of the training data.
        java: java executable (default ``$ADAMIX_JAVA`` or ``java`` on PATH).

    Returns:
        ``{"all": MetricResult, "seen": ..., "unseen": ...}``; keys ``BLEU``, ``METEOR``, ``TER``.
        Without Java (or the jar) METEOR is in ``errors``, BLEU and TER are still computed.

    Raises:
        ValueError: inputs of the wrong shape or length (the message says which).
    """
    _check_inputs(hypotheses, references)
    subsets = {"all": list(range(len(hypotheses)))}
    if categories is not None:
        if isinstance(categories, str) or len(categories) != len(hypotheses):
            raise ValueError(f"{len(hypotheses)} hypotheses but "
                             f"{1 if isinstance(categories, str) else len(categories)} categories")
        seen = frozenset(seen_categories)
        for name, keep in (("seen", True), ("unseen", False)):
            idx = [i for i, c in enumerate(categories) if (c in seen) == keep]
            if idx:
                subsets[name] = idx
    return _score_subsets(hypotheses, references, subsets, java)


def score_dart(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
               java: str | None = None) -> MetricResult:
    """DART BLEU / METEOR / TER (the same GenerationEval metrics as :func:`score_webnlg`)."""
    _check_inputs(hypotheses, references)
    return _score_subsets(hypotheses, references, {"all": list(range(len(hypotheses)))},
                          java)["all"]


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def _read_lines(path: Path, what: str) -> list[str]:
    """Lines of a UTF-8 file; a final newline ends the last line (it adds no empty line)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 ({err})") from err
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_hypotheses(path: PathLike) -> list[str]:
    """One output per line, lines split at ``\n`` only, as ``eval.py`` and multi-bleu-detok read
    them (a final newline adds no empty output; whitespace is left alone, no metric sees it).

    Raises:
        FileNotFoundError / ValueError: missing, not UTF-8 or empty file (named).
    """
    p = Path(path)
    lines = _read_lines(p, "system output")
    if not lines:
        raise ValueError(f"{p}: no system outputs (the file is empty)")
    return lines


def read_reference_files(stem: PathLike) -> list[list[str]]:
    """References in GenerationEval's format: ``{stem}0``, ``{stem}1``, ... (as many consecutive
    files as exist), one line per instance in each; an empty line means no reference.

    Returns:
        For each instance, its non-empty reference lines in file order.

    Raises:
        FileNotFoundError: ``{stem}0`` does not exist.
        ValueError: files with different line counts, or an instance without any reference
            (file and line named).
    """
    stem = str(stem)
    paths = []
    while Path(f"{stem}{len(paths)}").is_file():
        paths.append(Path(f"{stem}{len(paths)}"))
    if not paths:
        raise FileNotFoundError(f"reference file not found: {stem}0 (GenerationEval format: "
                                f"{stem}0, {stem}1, ...)")
    columns = [_read_lines(p, "reference") for p in paths]
    for path, col in zip(paths[1:], columns[1:], strict=True):
        if len(col) != len(columns[0]):
            raise ValueError(f"{path} has {len(col)} lines but {paths[0]} has {len(columns[0])}")
    references = []
    for line_no, row in enumerate(zip(*columns, strict=True), start=1):
        refs = [r for r in row if r.strip()]
        if not refs:
            raise ValueError(f"{stem}0..{len(paths) - 1}: line {line_no} is empty in every file "
                             f"(instance without reference)")
        references.append(refs)
    return references


def read_webnlg_references(path: PathLike) -> list[list[str]]:
    """References for :func:`score_webnlg` / :func:`score_dart` from either format the decoder
    writes: a directory holding ``reference0``, ``reference1``, ... or the stem of such files
    (GenerationEval's ``-R``), or one file of blank-line-separated groups (the E2E format).

    Raises:
        FileNotFoundError / ValueError: naming the file.
    """
    p = Path(path)
    if p.is_dir():
        return read_reference_files(p / "reference")
    if Path(f"{p}0").is_file():
        return read_reference_files(p)
    if p.is_file():
        from .e2e import read_references  # the grouped format is E2E's; imported on use
        return read_references(p)
    raise FileNotFoundError(f"reference file not found: {p} (nor {p}0 of GenerationEval's "
                            f"multi-file format)")


def read_categories(path: PathLike) -> list[str]:
    """One WebNLG category per line (per instance, in hypothesis order), whitespace stripped.

    Raises:
        FileNotFoundError / ValueError: naming the file and the first empty line.
    """
    p = Path(path)
    lines = _read_lines(p, "categories")
    categories = [line.strip() for line in lines]
    for line_no, category in enumerate(categories, start=1):
        if not category:
            raise ValueError(f"{p}:{line_no}: empty category")
    return categories
