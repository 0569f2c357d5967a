"""Tests for the E2E scorer (adamix_ds.evaluation.metrics: mteval, ptb, meteor, rouge, cider, e2e).

Oracles, none of them the code under test:
    * BLEU / NIST by hand on tiny cases (the arithmetic is written out in each test);
    * BLEU: sacrebleu with the settings equivalent to pymteval (13a tokenizer, lowercase, a 1e-15
      floor for zero matches, 0-1 scale) on randomized corpora built from the bundled real E2E
      sentences; its one legitimate difference (the length convention for outputs shorter than
      3 tokens) is checked separately with sacrebleu's own match counts;
    * NIST: a plain float64 implementation written below from Doddington's definition, on
      sacrebleu's tokenization;
    * PTB tokenization, METEOR, ROUGE_L, CIDEr: the PyPI ``pycocoevalcap`` classes, run the way
      the official E2E scorer runs them (PTBTokenizer on references and outputs separately, then
      Meteor / Rouge / Cider);
    * score_e2e on the bundled sample: the composition of those oracles, equal to 4 decimals
      (what the official script prints).
Java-dependent tests are skipped without Java; the METEOR ones are slow (the jar loads for ~15 s).
"""
from __future__ import annotations

import math
import random
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from adamix_ds.data import bundled_asset, group_references, read_e2e
from adamix_ds.evaluation.metrics import e2e, mteval
from adamix_ds.evaluation.metrics.cider import cider_d
from adamix_ds.evaluation.metrics.meteor import Meteor15, MeteorError, score_line
from adamix_ds.evaluation.metrics.ptb import ptb_tokenize
from adamix_ds.evaluation.metrics.rouge import lcs_length, rouge_l

sacrebleu = pytest.importorskip("sacrebleu")
from sacrebleu.metrics import BLEU  # noqa: E402
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a  # noqa: E402

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="no java on PATH")

Groups = list[list[str]]


# ----------------------------------------------------------------------------- data

def _sample_groups(*splits: str) -> Groups:
    groups: Groups = []
    for split in splits:
        records = read_e2e(bundled_asset(f"e2e_sample/{split}.txt"))
        groups += [g["references"] for g in group_references(records)]
    return groups


@pytest.fixture(scope="module")
def groups() -> Groups:
    """Reference groups (one per MR) of the bundled real E2E sample."""
    return _sample_groups("train", "valid", "test")


TRICKY = ["", " ", ".", "a", "the the", "Yes!", "3-4 £10.50 (x) &amp; <skipped> \u00a0 é",
          "I live in the U.S.", "Acme Inc.", "it's \"quoted\" [y] {z} -- ... ?!", "a ||| b",
          "line\nbreak", "naïve Zoë's café costs €5 — ½"]


def _perturb(rng: random.Random, sentence: str, vocab: Sequence[str], short_ok: bool = True) -> str:
    """A plausible-to-bad system output made from a real sentence."""
    words = sentence.split()
    kind = rng.randrange(8 if short_ok else 6)
    if kind == 0:
        rng.shuffle(words)
    elif kind == 1:
        words = [w for w in words if rng.random() > 0.3] or words
    elif kind == 2:
        words = [w.upper() if rng.random() < 0.3 else w for w in words]
    elif kind == 3:
        words = [rng.choice(vocab) for _ in range(rng.randrange(4, 30))]
    elif kind == 4:  # punctuation glued to the words, as a detokenizing system writes it
        return " ".join(words).replace(" .", ".").replace(" ,", ",")
    elif kind == 5:
        words = words + rng.sample(vocab, 3)
    elif kind == 6:
        words = words[:rng.randrange(0, 3)]
    else:
        return rng.choice(TRICKY)
    return " ".join(words)


def _random_corpus(rng: random.Random, groups: Groups, size: int, short_ok: bool = True
                   ) -> tuple[list[str], Groups]:
    vocab = sorted({w for g in groups for s in g for w in s.split()})
    picked = [list(groups[rng.randrange(len(groups))]) for _ in range(size)]
    hyps = []
    for refs in picked:
        hyp = _perturb(rng, rng.choice(refs), vocab, short_ok)
        if not short_ok and len(_sacre_tokens(hyp)) < 5:
            hyp = rng.choice(refs)
        hyps.append(hyp)
    return hyps, picked


# ----------------------------------------------------------------------------- oracles

def _sacre_tokens(text: str) -> list[str]:
    return Tokenizer13a()(text.lower()).split()


SACRE_BLEU = BLEU(tokenize="13a", lowercase=True, smooth_method="floor", smooth_value=1e-15,
                  effective_order=False)


def _streams(refs: Groups) -> list[list]:
    """sacrebleu's reference layout: one stream per reference index, None where a group is short."""
    width = max(len(g) for g in refs)
    return [[g[k] if k < len(g) else None for g in refs] for k in range(width)]


def _nist_reference(hyps: Sequence[str], refs: Groups, max_n: int = 5) -> float:
    """NIST from Doddington (2002): sum_n sum_{matched w} Info(w) / #hyp n-grams, Info(w) =
    log2(#(w without its last word) / #w) over all reference sentences, times
    exp(beta log^2 min(Lsys / Lref, 1)) with beta = log(0.5) / log(1.5)^2, Lref the sum of mean
    reference lengths. Matches are clipped by the largest count in one reference."""
    hyp_toks = [_sacre_tokens(h) for h in hyps]
    ref_toks = [[_sacre_tokens(r) for r in g] for g in refs]
    counts: Counter = Counter()
    for group in ref_toks:
        for ref in group:
            counts[()] += len(ref)
            for n in range(1, max_n + 1):
                counts.update(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
    score = 0.0
    for n in range(1, max_n + 1):
        info_sum, n_grams = 0.0, 0
        for hyp, group in zip(hyp_toks, ref_toks, strict=True):
            hyp_counts = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            clip: Counter = Counter()
            for ref in group:
                clip |= Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
            for gram, c in hyp_counts.items():
                if clip[gram]:
                    info_sum += min(c, clip[gram]) * math.log2(counts[gram[:-1]] / counts[gram])
            n_grams += len(hyp) - n + 1
        score += info_sum / n_grams
    sys_len = sum(len(h) for h in hyp_toks)
    ref_len = sum(sum(len(r) for r in g) / len(g) for g in ref_toks)
    beta = math.log(0.5) / math.log(1.5) ** 2
    return score * math.exp(beta * math.log(min(sys_len / ref_len, 1.0)) ** 2)


def _coco_tokenize(corpora: Sequence[tuple[list[str], Groups]]) -> list[tuple[list[str], Groups]]:
    """PyPI PTBTokenizer over several corpora at once (two Java runs, as the evaluator makes:
    all references, then all outputs), split back per corpus."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = {(c, i): [{"caption": r} for r in refs]
           for c, (_, groups) in enumerate(corpora) for i, refs in enumerate(groups)}
    res = {(c, i): [{"caption": h}]
           for c, (hyps, _) in enumerate(corpora) for i, h in enumerate(hyps)}
    tokenizer = PTBTokenizer()
    gts_t, res_t = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    return [([res_t[(c, i)][0] for i in range(len(hyps))],
             [gts_t[(c, i)] for i in range(len(hyps))]) for c, (hyps, _) in enumerate(corpora)]


def _as_coco(hyps: list[str], refs: Groups) -> tuple[dict, dict]:
    return ({f"inst-{i}": g for i, g in enumerate(refs)},
            {f"inst-{i}": [h] for i, h in enumerate(hyps)})


# ----------------------------------------------------------------------------- BLEU / NIST by hand

def test_mteval_tokenization_matches_13a():
    assert mteval.mteval_tokenize("Hello, World!") == ["Hello", ",", "World", "!"]
    # period / comma between digits stay; dash after a digit splits; hyphen between letters stays
    assert mteval.mteval_tokenize("£10.50, 3-4 family-friendly.") == \
        ["£10.50", ",", "3", "-", "4", "family-friendly", "."]
    assert mteval.mteval_tokenize("a &amp; b<skipped>") == ["a", "&", "b"]
    assert mteval.mteval_tokenize("") == [""] and mteval.mteval_tokenize("  ") == [""]
    for g in _sample_groups("valid", "test"):
        for s in g + [s.replace(" .", ".").replace(" ,", ",") for s in g]:
            assert mteval.mteval_tokenize(s) == Tokenizer13a()(s).split()


def test_bleu_by_hand_brevity_penalty():
    # hyp  "the cat is on the mat"      (6 tokens)
    # ref  "the cat is on the red mat"  (7 tokens)
    # 1-grams 6/6; 2-grams: the cat, cat is, is on, on the match, the mat not -> 4/5;
    # 3-grams: the cat is, cat is on, is on the -> 3/4; 4-grams: the cat is on, cat is on the -> 2/3
    # BP = exp(1 - 7/6)
    expected = math.exp(1 - 7 / 6) * (1 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25
    got = mteval.sentence_bleu("The cat is on the mat", ["the cat is on the red mat"])
    assert got == pytest.approx(expected, rel=1e-12)


def test_bleu_by_hand_no_4gram_match_is_floored_not_zero():
    # hyp "the cat sat on the mat" (6 tokens)
    # refs "the cat is on the mat" (6), "there is a cat on the mat" (7)
    # 1-grams: the x2 (max ref count 2), cat, on, mat -> 5/6; sat unmatched
    # 2-grams: the cat, on the, the mat -> 3/5; 3-grams: on the mat -> 1/4; 4-grams: 0/3
    # closest ref length 6 -> BP 1; the zero is floored at 1e-15 (pymteval), so BLEU is ~8e-5, not 0
    expected = (5 / 6 * 3 / 5 * 1 / 4 * 1e-15 / 3) ** 0.25
    got = mteval.sentence_bleu("the cat sat on the mat",
                               ["the cat is on the mat", "there is a cat on the mat"])
    assert got == pytest.approx(expected, rel=1e-12) and got > 5e-5


def test_bleu_by_hand_short_output_lowers_totals():
    # instance 1: "The Eagle is a pub near Burger King." = its reference, 9 tokens:
    #             n-grams 9, 8, 7, 6, all matched
    # instance 2: "Yes!" -> yes ! (2 tokens), reference "yes !": 1-grams 2/2, 2-grams 1/1, and
    #             pymteval adds L - n + 1 = 0 and -1 to the 3- and 4-gram totals
    # totals: 11, 9, 7, 6 - 1 = 5; matches 11, 9, 7, 6 -> p4 = 6/5; lengths 11 = 11 -> BP 1
    expected = (6 / 5) ** 0.25  # > 1: sacrebleu would give 1.0 here
    got = mteval.corpus_bleu(["The Eagle is a pub near Burger King.", "Yes!"],
                             [["The Eagle is a pub near Burger King ."], ["yes !"]])
    assert got == pytest.approx(expected, rel=1e-12)


def test_nist_by_hand():
    # hyp "a b c", refs "a b d", "a c". Reference counts over both refs: ()=5 tokens, a=2, b=1,
    # c=1, d=1, (a b)=1. Matched: a, b, c, (a b). Info: a = log2(5/2), b = c = log2(5/1),
    # (a b) = log2(#a / #(a b)) = log2(2) = 1. Hypothesis n-grams: 3, 2, 1, 0 (counted as 1), -1.
    # Length 3 vs mean reference length 2.5 -> no penalty.
    expected = (math.log2(2.5) + 2 * math.log2(5)) / 3 + 1 / 2
    assert mteval.sentence_nist("a b c", ["a b d", "a c"]) == pytest.approx(expected, rel=1e-12)
    # hyp "a" vs "a b c d": info(a) = log2(4/1) = 2 over 1 unigram; length ratio 1/4 ->
    # penalty exp(-beta log(1/4)^2), beta = -log(0.5) / log(1.5)^2 (0.5 at ratio 2/3)
    beta = -math.log(0.5) / math.log(1.5) ** 2
    assert math.exp(-beta * math.log(2 / 3) ** 2) == pytest.approx(0.5)
    expected = 2 * math.exp(-beta * math.log(0.25) ** 2)
    assert mteval.sentence_nist("a", ["a b c d"]) == pytest.approx(expected, rel=1e-12)


def test_bleu_nist_accept_tokens_and_are_case_insensitive():
    refs = [["The Vaults is a pub ."], ["Blue Spice is in the city centre ."]]
    hyps = ["the VAULTS is a Pub.", "blue spice is in the centre"]
    tokenized = [mteval.mteval_tokenize(h) for h in hyps]
    assert mteval.corpus_bleu(hyps, refs) == mteval.corpus_bleu(tokenized, refs)
    assert mteval.corpus_nist(hyps, refs) == mteval.corpus_nist([h.lower() for h in hyps], refs)
    assert mteval.corpus_bleu(hyps, refs, case_sensitive=True) < mteval.corpus_bleu(hyps, refs)
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference groups"):
        mteval.corpus_bleu(hyps, refs[:1])


# ------------------------------------------------------------------------ BLEU / NIST vs oracles

def test_bleu_matches_sacrebleu_on_random_corpora(groups):
    rng = random.Random(1)
    worst = 0.0
    for _ in range(60):
        hyps, refs = _random_corpus(rng, groups, rng.randrange(1, 60), short_ok=False)
        expected = SACRE_BLEU.corpus_score(hyps, _streams(refs)).score / 100
        worst = max(worst, abs(mteval.corpus_bleu(hyps, refs) - expected))
    assert worst < 5e-5  # observed ~1e-15


def test_bleu_short_outputs_match_sacrebleu_counts_with_pymteval_lengths(groups):
    # sacrebleu counts max(0, L - n + 1) n-grams for an output of L tokens and 0 tokens for an empty
    # one; pymteval counts L - n + 1 even when negative, and an empty output is one (empty) token.
    # Take sacrebleu's clipped match counts and closest reference lengths, apply pymteval's lengths.
    rng = random.Random(2)
    checked = 0
    for _ in range(40):
        hyps, refs = _random_corpus(rng, groups, rng.randrange(5, 40), short_ok=True)
        stats = SACRE_BLEU.corpus_score(hyps, _streams(refs))
        lengths = [max(len(_sacre_tokens(h)), 1) for h in hyps]
        totals = [sum(length - n + 1 for length in lengths) for n in range(1, 5)]
        if min(totals) <= 0:
            continue
        expected = BLEU.compute_bleu(list(stats.counts), totals, sum(lengths), stats.ref_len,
                                     smooth_method="floor", smooth_value=1e-15).score / 100
        assert mteval.corpus_bleu(hyps, refs) == pytest.approx(expected, abs=5e-5)
        checked += 1
    assert checked >= 30


def test_nist_matches_definition_on_random_corpora(groups):
    rng = random.Random(3)
    worst = 0.0
    for _ in range(40):
        hyps, refs = _random_corpus(rng, groups, rng.randrange(1, 60), short_ok=False)
        worst = max(worst, abs(mteval.corpus_nist(hyps, refs) - _nist_reference(hyps, refs)))
    assert worst < 5e-5  # observed ~1e-14


# ----------------------------------------------------------------------------- COCO side

def test_lcs_matches_dynamic_programming():
    from pycocoevalcap.rouge.rouge import my_lcs

    rng = random.Random(4)
    for _ in range(500):
        a = [rng.choice("abcde") for _ in range(rng.randrange(0, 30))]
        b = [rng.choice("abcdef") for _ in range(rng.randrange(0, 30))]
        assert lcs_length(a, b) == my_lcs(a, b) == lcs_length(b, a)


@pytest.fixture(scope="module")
def coco_corpora(groups):
    """Random corpora (raw) and their PyPI-PTB-tokenized form."""
    rng = random.Random(5)
    corpora = [_random_corpus(rng, groups, rng.randrange(1, 40)) for _ in range(12)]
    # the positions where one concatenated tokenizer run would differ from the evaluator's two:
    # the last reference before the first output, and the end of the outputs
    corpora.append((["The U.S. is far", "I live in the U.S."],
                    [["Acme Inc."], ["Acme Inc.", "I live in the U.S."]]))
    return corpora, _coco_tokenize(corpora)


@needs_java
def test_ptb_tokenize_matches_pycocoevalcap(coco_corpora):
    corpora, tokenized = coco_corpora
    blocks = []
    for hyps, refs in corpora:
        blocks += [[r for g in refs for r in g], hyps]
    # every corpus is two blocks (references, outputs): one Java run for all of them
    ours = ptb_tokenize(blocks)
    for c, (hyps, refs) in enumerate(tokenized):
        assert ours[2 * c] == [r for g in refs for r in g]
        assert ours[2 * c + 1] == hyps


@needs_java
def test_ptb_tokenize_quirks():
    # lowercased; £ becomes #; brackets become -lrb- etc., which the lowercase output keeps
    # (the punctuation list has them in upper case); '.' ',' '!' quotes are dropped
    out = ptb_tokenize([["The Café (x) costs £20.", "", "\"Yes\", she said!"], []])
    assert out == [["the café -lrb- x -rrb- costs # 20", "", "yes she said"], []]


@needs_java
def test_rouge_and_cider_match_pycocoevalcap(coco_corpora):
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    _, tokenized = coco_corpora
    worst = [0.0, 0.0]
    for hyps, refs in tokenized:
        gts, res = _as_coco(hyps, refs)
        rouge_expected, rouge_each = Rouge().compute_score(gts, res)
        cider_expected, cider_each = Cider().compute_score(gts, res)
        rouge_got, rouge_got_each = rouge_l(hyps, refs)
        cider_got, cider_got_each = cider_d(hyps, refs)
        assert rouge_got_each == pytest.approx(list(rouge_each), abs=1e-12)
        assert cider_got_each == pytest.approx(list(cider_each), abs=1e-12)
        worst = [max(worst[0], abs(rouge_got - rouge_expected)),
                 max(worst[1], abs(cider_got - cider_expected))]
    assert max(worst) < 1e-12


@pytest.fixture(scope="module")
def meteors():
    """The PyPI Meteor and ours, created together so that the two jars load in parallel."""
    from pycocoevalcap.meteor.meteor import Meteor

    ours = Meteor15()
    theirs = Meteor()
    yield theirs, ours
    ours.close()


@needs_java
@pytest.mark.slow
def test_meteor_matches_pycocoevalcap(coco_corpora, meteors):
    theirs, ours = meteors
    _, tokenized = coco_corpora
    for hyps, refs in tokenized:
        expected, expected_each = theirs.compute_score(*_as_coco(hyps, refs))
        got, got_each = ours.score(hyps, refs)
        assert abs(got - expected) < 5e-5  # observed: identical (the same jar and requests)
        assert got_each == pytest.approx(expected_each, abs=1e-12)


def test_meteor_request_line():
    # '|||' removed from the output, then double spaces made single once (three stay two)
    assert score_line("a ||| b   c", ["r 1", "r ||| 2"]) == "SCORE ||| r 1 ||| r ||| 2 ||| a b  c"


@pytest.mark.skipif(shutil.which("false") is None, reason="no 'false' executable")
def test_meteor_process_failure_is_named():
    with Meteor15(shutil.which("false")) as scorer:
        with pytest.raises(MeteorError, match=r"METEOR 1\.5 .*exit status 1"):
            scorer.score(["a"], [["a"]])


# ----------------------------------------------------------------------------- score_e2e

def _write(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


@needs_java
@pytest.mark.slow
def test_score_e2e_files_on_bundled_sample_equals_official_composition(tmp_path, meteors):
    refs = _sample_groups("valid", "test")
    rng = random.Random(6)
    vocab = sorted({w for g in refs for s in g for w in s.split()})
    hyps = [_perturb(rng, rng.choice(g), vocab, short_ok=False) for g in refs]
    ref_lines: list[str] = []
    for g in refs:
        ref_lines += g + [""]
    # the METEOR process of the fixture is reused (a fresh one is the default; it would cost
    # another ~15 s of jar loading)
    result = e2e.score_e2e_files(_write(tmp_path / "out.txt", hyps),
                                 _write(tmp_path / "ref.txt", ref_lines), meteor=meteors[1])
    assert result.ok and tuple(result.scores) == e2e.E2E_METRICS

    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    [(tok_hyps, tok_refs)] = _coco_tokenize([(hyps, refs)])
    gts, res = _as_coco(tok_hyps, tok_refs)
    expected = {
        "BLEU": SACRE_BLEU.corpus_score(hyps, _streams(refs)).score / 100,
        "NIST": _nist_reference(hyps, refs),
        "METEOR": meteors[0].compute_score(gts, res)[0],
        "ROUGE_L": Rouge().compute_score(gts, res)[0],
        "CIDEr": Cider().compute_score(gts, res)[0],
    }
    for metric in e2e.E2E_METRICS:
        assert f"{result.scores[metric]:.4f}" == f"{expected[metric]:.4f}", metric
        assert abs(result.scores[metric] - expected[metric]) < 5e-5, metric


def test_score_e2e_without_java_keeps_bleu_and_nist():
    refs = _sample_groups("test")
    hyps = [g[0] for g in refs]
    result = e2e.score_e2e(hyps, refs, java="/nonexistent/java")
    assert set(result.scores) == {"BLEU", "NIST"}
    expected_bleu = SACRE_BLEU.corpus_score(hyps, _streams(refs)).score / 100
    assert result.scores["BLEU"] == pytest.approx(expected_bleu, abs=5e-5)
    assert result.scores["NIST"] == pytest.approx(_nist_reference(hyps, refs), abs=5e-5)
    assert set(result.errors) == {"METEOR", "ROUGE_L", "CIDEr"}
    for message in result.errors.values():
        assert "Java not found" in message and "/nonexistent/java" in message


@pytest.mark.skipif(shutil.which("false") is None, reason="no 'false' executable")
def test_score_e2e_names_a_failed_tokenizer():
    result = e2e.score_e2e(["a b c"], [["a b c"]], java=shutil.which("false"))
    assert set(result.scores) == {"BLEU", "NIST"}
    assert set(result.errors) == {"METEOR", "ROUGE_L", "CIDEr"}
    for message in result.errors.values():
        assert "PTB tokenizer failed" in message and "exited with status 1" in message


def test_score_e2e_bad_inputs():
    with pytest.raises(ValueError, match="3 system outputs but 2 reference groups"):
        e2e.score_e2e(["a", "b", "c"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="0 system outputs"):
        e2e.score_e2e([], [])
    with pytest.raises(ValueError, match="1 of 2 instances have no reference"):
        e2e.score_e2e(["a", "b"], [["a"], []])


# ----------------------------------------------------------------------------- files

def test_read_references_groups_and_single_reference(tmp_path):
    multi = _write(tmp_path / "multi.txt", ["a1 ", "a2", "", "b1", ""])
    assert e2e.read_references(multi) == [["a1", "a2"], ["b1"]]
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"a1\r\na2\r\n\r\nb1")
    assert e2e.read_references(crlf) == [["a1", "a2"], ["b1"]]
    # no blank line: one reference per instance (a single multi-reference instance cannot be told
    # apart, as in the official script)
    single = _write(tmp_path / "single.txt", ["x", "y", "z"])
    assert e2e.read_references(single) == [["x"], ["y"], ["z"]]


def test_read_references_errors_name_the_file(tmp_path):
    two_blank = _write(tmp_path / "two_blank.txt", ["a", "", "", "b"])
    with pytest.raises(ValueError, match=r"two_blank\.txt:3: empty reference group \(instance 2\)"):
        e2e.read_references(two_blank)
    with pytest.raises(ValueError, match=r"empty\.txt: no references"):
        e2e.read_references(_write(tmp_path / "empty.txt", []))
    with pytest.raises(ValueError, match=r"refs\.csv: CSV/TSV"):
        e2e.read_references(_write(tmp_path / "refs.csv", ["mr,ref", "a,b"]))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt: not UTF-8"):
        e2e.read_references(latin1)


def test_read_hypotheses_keeps_empty_outputs(tmp_path):
    assert e2e.read_hypotheses(_write(tmp_path / "out.txt", ["h1 ", "", "h3"])) == ["h1", "", "h3"]
    with pytest.raises(ValueError, match=r"none\.txt: no system outputs"):
        e2e.read_hypotheses(_write(tmp_path / "none.txt", []))


def test_score_e2e_files_count_mismatch_names_both_files(tmp_path):
    out = _write(tmp_path / "out.txt", ["h1", "h2", "h3"])
    ref = _write(tmp_path / "ref.txt", ["r1", "r1b", "", "r2"])
    expected = r"out\.txt has 3 system outputs but .*ref\.txt has 2 reference groups"
    with pytest.raises(ValueError, match=expected):
        e2e.score_e2e_files(out, ref)
