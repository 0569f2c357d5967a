"""WebNLG / DART metrics against independent references: hand-computed cases, sacrebleu (a port of
mteval-v13a / multi-bleu-detok), pyter3 (the TER GenerationEval calls), the METEOR 1.5 jar run on
files the way GenerationEval runs it, and the LoRA decoder's published post-processing."""
from __future__ import annotations

import math
import random
import re
import subprocess
import threading
from pathlib import Path

import pytest

from adamix_ds.data.readers import (
    SEEN_WEBNLG_CATEGORIES,
    group_references,
    read_dart,
    read_e2e,
    read_webnlg,
)
from adamix_ds.evaluation.metrics import pycocoevalcap_jar
from adamix_ds.evaluation.metrics.webnlg import (
    generation_eval_ter,
    generation_eval_tokenize,
    lora_postprocess,
    mteval_13a_tokenize,
    multi_bleu_detok,
    read_categories,
    read_hypotheses,
    read_reference_files,
    read_webnlg_references,
    score_dart,
    score_webnlg,
    sentence_ter,
)

ROOT = Path(__file__).resolve().parents[1]
NO_JAVA = "/nonexistent/bin/java"


def _sentences() -> list:
    """Real sentences: the bundled E2E sample and the WebNLG / DART fixtures."""
    out = [r["completion"] for split in ("train", "valid", "test")
           for r in read_e2e(ROOT / f"assets/e2e_sample/{split}.txt")]
    out += [r["completion"] for r in read_webnlg(ROOT / "tests/data/webnlg/train.json")]
    out += [r["completion"] for r in read_dart(ROOT / "tests/data/dart/dart-v1.1.1-full-dev.json")]
    return out


SENTENCES = _sentences()


def _perturb(rng: random.Random, text: str) -> str:
    """Delete, insert (a word from another sentence) or move words: a plausible system output."""
    words = text.split()
    for _ in range(rng.randint(0, 4)):
        op = rng.random()
        if op < 0.3 and len(words) > 1:
            del words[rng.randrange(len(words))]
        elif op < 0.6:
            words.insert(rng.randrange(len(words) + 1), rng.choice(rng.choice(SENTENCES).split()))
        elif len(words) > 3:
            i = rng.randrange(len(words) - 2)
            block = words[i:i + rng.randint(1, 2)]
            del words[i:i + len(block)]
            j = rng.randrange(len(words) + 1)
            words[j:j] = block
    return " ".join(words)


def _corpus(rng: random.Random, n: int, max_refs: int = 6):
    """n instances: a hypothesis and 1..max_refs references built from real sentences."""
    hyps, refs = [], []
    for _ in range(n):
        base = rng.choice(SENTENCES)
        hyps.append(_perturb(rng, base) if rng.random() < 0.85 else rng.choice(SENTENCES))
        group = [base] + [_perturb(rng, base) if rng.random() < 0.6 else rng.choice(SENTENCES)
                          for _ in range(rng.randint(0, max_refs - 1))]
        refs.append(group)
    return hyps, refs


# ------------------------------------------------------------------------------------------------
# BLEU
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, tokens", [
    ("Hello, world.", ["Hello", ",", "world", "."]),
    ("It costs 3.5 or 1,000 (approx.)", ["It", "costs", "3.5", "or", "1,000", "(", "approx",
                                          ".", ")"]),
    ("1990-2000 state-of-the-art", ["1990", "-", "2000", "state-of-the-art"]),
    ("don't \"quote\" a/b", ["don't", '"', "quote", '"', "a", "/", "b"]),
    ("&quot;x&quot; &amp;lt; <skipped>y", ['"', "x", '"', "<", "y"]),
    ("caf\u00e9\u00a0bar", ["caf\u00e9", "bar"]),  # NBSP is whitespace for Perl too
    ("a\x1cb", ["a\x1cb"]),  # ... but the ASCII separators are not
])
def test_mteval_13a_tokenization_by_hand(text, tokens):
    assert mteval_13a_tokenize(text) == tokens


def test_bleu_hand_computed_multi_reference():
    # hyp: the cat sat on the mat .   (7 tokens)
    # 1-grams: 'the' x2 clipped to 1 -> 6/7; 2-grams: all 6 in one ref or the other -> 6/6;
    # 3-grams: 'sat on the' missing -> 4/5; 4-grams: 'the cat sat on', 'on the mat .' -> 2/4;
    # closest reference length 7 -> BP 1
    stats = multi_bleu_detok(["the cat sat on the mat."],
                             [["the cat sat on a mat.", "a cat is on the mat."]])
    assert stats.precisions == pytest.approx((6 / 7, 1.0, 4 / 5, 2 / 4))
    assert (stats.hyp_len, stats.ref_len, stats.brevity_penalty) == (7, 7, 1.0)
    assert stats.bleu == pytest.approx(100 * (6 / 7 * 1.0 * 4 / 5 * 2 / 4) ** 0.25)


def test_bleu_closest_length_tie_takes_the_shorter_and_brevity_penalty():
    # lengths 5 and 3 are both 1 away from 4: the shorter (3) counts, so no penalty
    assert multi_bleu_detok(["a b c d"], [["a b c d e", "x y z"]]).bleu == pytest.approx(100.0)
    # one reference of 6 words: BP = exp(1 - 6/4), all precisions 1
    stats = multi_bleu_detok(["a b c d"], [["a b c d e f"]])
    assert stats.brevity_penalty == pytest.approx(math.exp(-0.5))
    assert stats.bleu == pytest.approx(100 * math.exp(-0.5))


def test_bleu_zero_precision_case_sensitivity_and_empty_output():
    assert multi_bleu_detok(["a b c x"], [["a b c d"]]).bleu == 0.0  # no matching 4-gram
    assert multi_bleu_detok(["The cat sat down"], [["the cat sat down"]]).precisions[0] == 0.75
    assert multi_bleu_detok([""], [["a b"]]).bleu == 0.0  # the Perl script divides by zero here


def test_bleu_agrees_with_sacrebleu_on_random_corpora():
    """sacrebleu's corpus BLEU with the 13a tokenizer and no smoothing is multi-bleu-detok's
    definition; variable reference counts are given to it as None."""
    sacrebleu = pytest.importorskip("sacrebleu")
    rng = random.Random(0)
    for trial in range(60):
        hyps, refs = _corpus(rng, rng.randint(1, 40))
        if trial % 3 == 1:  # as the LoRA decoder writes them
            hyps = [lora_postprocess(h) for h in hyps]
            refs = [[lora_postprocess(r) for r in g] for g in refs]
        streams = [[g[k] if k < len(g) else None for g in refs]
                   for k in range(max(map(len, refs)))]
        expected = sacrebleu.corpus_bleu(hyps, streams, tokenize="13a", smooth_method="none")
        assert multi_bleu_detok(hyps, refs).bleu == pytest.approx(expected.score, abs=1e-4)


def test_bleu_whitespace_corner_case_differs_from_sacrebleu_by_design():
    """The one legitimate difference: Python's str.split (sacrebleu) splits at \\x1c-\\x1f, Perl's
    \\s (multi-bleu-detok) does not."""
    sacrebleu = pytest.importorskip("sacrebleu")
    hyp, ref = "w x\x1cy z", "w x y z"
    assert multi_bleu_detok([hyp], [[ref]]).hyp_len == 3
    assert sacrebleu.corpus_bleu([hyp], [[ref]], tokenize="13a").sys_len == 4


# ------------------------------------------------------------------------------------------------
# TER
# ------------------------------------------------------------------------------------------------

def test_ter_hand_computed():
    assert sentence_ter("a b c".split(), "a b c".split()) == 0.0
    assert sentence_ter("a b d".split(), "a b c".split()) == pytest.approx(1 / 3)  # 1 substitution
    assert sentence_ter([], "a b c".split()) == pytest.approx(1.0)  # 3 insertions
    assert sentence_ter("a b c d e".split(), "a b".split()) == pytest.approx(3 / 2)  # may pass 1
    # shift: 'c a b' -> 'a b c' is one block move (cost 1) instead of delete + insert (cost 2)
    assert sentence_ter("c a b".split(), "a b c".split()) == pytest.approx(1 / 3)
    # 'b a' -> 'a b': one shift (cost 1) beats two substitutions
    assert sentence_ter("b a".split(), "a b".split()) == pytest.approx(1 / 2)
    # moving 'b' before 'x' gains nothing, so it is not made: 1 deletion, not 1 shift + 1
    assert sentence_ter("a x b".split(), "a b".split()) == pytest.approx(1 / 2)
    with pytest.raises(ValueError):
        sentence_ter(["a"], [])


def test_ter_published_example():
    """Snover et al. (2006), Sec. 2: 13-word reference, 4 edits (shift 'THIS WEEK', substitute
    SAUDIS -> ARABIA and THE -> SAUDI, insert AMERICAN): TER 4/13."""
    ref = "SAUDI ARABIA denied THIS WEEK information published in the AMERICAN new york times"
    hyp = "THIS WEEK THE SAUDIS denied information published in the new york times"
    assert sentence_ter(hyp.split(), ref.split()) == pytest.approx(4 / 13)


def test_ter_matches_pyter3_on_random_pairs():
    pyter = pytest.importorskip("pyter", reason="pyter3 (GenerationEval's TER) not installed")
    rng = random.Random(1)
    for _ in range(150):
        base = lora_postprocess(rng.choice(SENTENCES))
        ref = (lora_postprocess(rng.choice(SENTENCES)) if rng.random() < 0.2
               else _perturb(rng, base)).split()
        hyp = _perturb(rng, base).split()
        assert sentence_ter(hyp, ref) == pytest.approx(pyter.ter(hyp, ref), abs=1e-12)


def test_generation_eval_ter_is_mean_of_per_instance_minimum():
    hyps = ["a b c", "c a b"]
    refs = [["a b d", "x y z w"], ["a b c", ""]]  # instance 2: an empty reference counts 1.0
    per_instance = generation_eval_ter(hyps, refs)
    assert per_instance == pytest.approx([1 / 3, 1 / 3])


# ------------------------------------------------------------------------------------------------
# Tokenisation, subsets, missing Java, inputs
# ------------------------------------------------------------------------------------------------

def test_lora_postprocess_is_the_decoders_tokenize_lower():
    """gpt2_decode.py: lower(), then ' '.join(re.split('(\\W)', s)).split() joined by spaces."""
    for text in SENTENCES[::7] + ["The Café's price: £20-25.", "Ölüm\tx\u00a0y"]:
        expected = " ".join(" ".join(re.split(r"(\W)", text.lower())).split())
        assert lora_postprocess(text) == expected
    assert lora_postprocess("A-b", lower=False) == "A - b"


def test_generation_eval_tokenize_is_nltk_word_tokenize_of_the_line():
    nltk = pytest.importorskip("nltk")
    for text in SENTENCES[::11] + ['he said "we cannot" -- ok']:
        assert generation_eval_tokenize(text) == " ".join(
            nltk.word_tokenize(text, preserve_line=True))


def test_seen_unseen_subsets_and_missing_java():
    sacrebleu = pytest.importorskip("sacrebleu")
    rng = random.Random(2)
    hyps, refs = _corpus(rng, 30)
    categories = [rng.choice(["Airport", "Food", "Artist", "Politician"]) for _ in hyps]
    results = score_webnlg(hyps, refs, categories=categories, java=NO_JAVA)
    assert list(results) == ["all", "seen", "unseen"]
    for name, keep in (("all", None), ("seen", True), ("unseen", False)):
        idx = [i for i, c in enumerate(categories)
               if keep is None or (c in SEEN_WEBNLG_CATEGORIES) == keep]
        sub_h, sub_r = [hyps[i] for i in idx], [refs[i] for i in idx]
        streams = [[g[k] if k < len(g) else None for g in sub_r]
                   for k in range(max(map(len, sub_r)))]
        result = results[name]
        assert list(result.scores) == ["BLEU", "TER"]
        assert "Java not found" in result.errors["METEOR"]
        assert result.scores["BLEU"] == pytest.approx(sacrebleu.corpus_bleu(
            sub_h, streams, tokenize="13a", smooth_method="none").score, abs=1e-4)
        tok_h = [generation_eval_tokenize(h) for h in sub_h]
        tok_r = [[generation_eval_tokenize(r) for r in g] for g in sub_r]
        expected_ter = sum(min(sentence_ter(h.split(), r.split()) for r in g)
                           for h, g in zip(tok_h, tok_r, strict=True)) / len(idx)
        assert result.scores["TER"] == pytest.approx(expected_ter)
    # all categories seen: no unseen subset; DART: the same metrics on one subset
    assert list(score_webnlg(hyps[:3], refs[:3], ["Food"] * 3, java=NO_JAVA)) == ["all", "seen"]
    dart = score_dart(hyps, refs, java=NO_JAVA)
    assert dart.scores == results["all"].scores and set(dart.errors) == {"METEOR"}


def test_java_from_environment_variable(monkeypatch):
    monkeypatch.setenv("ADAMIX_JAVA", NO_JAVA)
    result = score_dart(["a b"], [["a b"]])
    assert "ADAMIX_JAVA" in result.errors["METEOR"] and result.scores["BLEU"] == 0.0


@pytest.mark.parametrize("hyps, refs, categories, message", [
    (["a"], [["a"], ["b"]], None, "1 hypotheses but 2 reference sets"),
    (["a"], [[]], None, "instance 0 has no reference"),
    (["a"], ["a"], None, "must be a list of strings"),
    ("a", [["a"]], None, "list of strings"),
    (["a", "b"], [["a"], ["b"]], ["Food"], "2 hypotheses but 1 categories"),
])
def test_bad_inputs_are_clear_errors(hyps, refs, categories, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        score_webnlg(hyps, refs, categories, java=NO_JAVA)


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------

def test_reference_readers(tmp_path: Path):
    (tmp_path / "refs").mkdir()
    for k, lines in enumerate(["a0\nb0\nc0\n", "a1\n\nc1\n", "a2\nb2\n\n"]):
        (tmp_path / "refs" / f"reference{k}").write_text(lines, encoding="utf-8")
    expected = [["a0", "a1", "a2"], ["b0", "b2"], ["c0", "c1"]]
    assert read_reference_files(tmp_path / "refs" / "reference") == expected
    assert read_webnlg_references(tmp_path / "refs") == expected  # the directory
    assert read_webnlg_references(tmp_path / "refs" / "reference") == expected  # the stem
    grouped = tmp_path / "grouped.txt"
    grouped.write_text("a0\na1\n\nb0\n\nc0\nc1\n", encoding="utf-8")
    assert read_webnlg_references(grouped) == [["a0", "a1"], ["b0"], ["c0", "c1"]]

    (tmp_path / "refs" / "reference3").write_text("x\ny\n", encoding="utf-8")
    with pytest.raises(ValueError, match="reference3 has 2 lines but .*reference0 has 3"):
        read_reference_files(tmp_path / "refs" / "reference")
    (tmp_path / "refs" / "reference3").unlink()
    (tmp_path / "refs" / "reference0").write_text("a0\n\nc0\n", encoding="utf-8")
    (tmp_path / "refs" / "reference2").write_text("a2\n\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 is empty in every file"):
        read_reference_files(tmp_path / "refs" / "reference")
    with pytest.raises(FileNotFoundError, match="missing"):
        read_webnlg_references(tmp_path / "missing")


def test_hypothesis_and_category_readers(tmp_path: Path):
    hyp = tmp_path / "hyp"
    hyp.write_text("one\u2028still one\n\ntwo\n", encoding="utf-8")  # split at \n only
    assert read_hypotheses(hyp) == ["one\u2028still one", "", "two"]
    cats = tmp_path / "cats"
    cats.write_text("Airport\n Food \n", encoding="utf-8")
    assert read_categories(cats) == ["Airport", "Food"]
    cats.write_text("Airport\n\nFood\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"cats:2: empty category"):
        read_categories(cats)
    (tmp_path / "empty").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        read_hypotheses(tmp_path / "empty")


# ------------------------------------------------------------------------------------------------
# METEOR: the jar on files, as GenerationEval runs it
# ------------------------------------------------------------------------------------------------

def _meteor_like_generation_eval(directory: Path, hyps_tok, refs_tok) -> float:
    """eval.py's meteor_score: files of tokenised text, every instance's references padded to
    -nr (as the LoRA decoder pads them, with its first reference), the jar's last line."""
    num_refs = max(map(len, refs_tok))
    directory.mkdir()
    (directory / "hypothesis_meteor").write_text("\n".join(hyps_tok), encoding="utf-8")
    (directory / "reference_meteor").write_text(
        "\n".join(r for g in refs_tok for r in g + [g[0]] * (num_refs - len(g))), encoding="utf-8")
    jar = pycocoevalcap_jar("meteor/meteor-1.5.jar")
    out = subprocess.run(["java", "-Xmx2G", "-jar", str(jar), "hypothesis_meteor",
                          "reference_meteor", "-l", "en", "-norm", "-r", str(num_refs)],
                         cwd=directory, check=True, capture_output=True).stdout
    last = out.split(b"\n")[-2]
    assert last.startswith(b"Final score:"), out[-500:]
    return float(last.split()[-1])


@pytest.mark.slow
def test_meteor_matches_the_jar_run_as_generation_eval_does(tmp_path: Path):
    nltk = pytest.importorskip("nltk")
    try:
        subprocess.run(["java", "-version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no java on PATH")
    rng = random.Random(3)
    hyps, refs = _corpus(rng, 40)
    groups = group_references(read_webnlg(ROOT / "tests/data/webnlg/train.json"))
    hyps += [_perturb(rng, g["references"][0]) for g in groups]  # non-ASCII names
    refs += [g["references"] for g in groups]
    for i in range(20):  # half as the LoRA decoder writes them, half raw
        hyps[i], refs[i] = lora_postprocess(hyps[i]), [lora_postprocess(r) for r in refs[i]]
    hyps[25] = "a ||| b " + hyps[25]  # the stdio field separator, as text
    categories = [rng.choice(["Airport", "Artist"]) for _ in hyps]

    def tok(text: str) -> str:  # eval.py: ' '.join(nltk.word_tokenize(text)), per line
        return " ".join(nltk.word_tokenize(text, preserve_line=True))

    direct = []
    thread = threading.Thread(target=lambda: direct.append(_meteor_like_generation_eval(
        tmp_path / "meteor", [tok(h) for h in hyps], [[tok(r) for r in g] for g in refs])))
    thread.start()  # the two JVMs load their paraphrase tables in parallel
    ours = score_webnlg(hyps, refs, categories=categories)
    thread.join()
    assert ours["all"].ok, ours["all"].errors
    assert ours["all"].scores["METEOR"] == pytest.approx(direct[0], abs=1e-12)
    # the subsets are scored by the same jar process, on the same instance lists as BLEU / TER
    # (checked against sacrebleu and pyter above)
    assert all(0 < ours[s].scores["METEOR"] < 1 for s in ("seen", "unseen"))
