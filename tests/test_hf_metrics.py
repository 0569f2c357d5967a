"""The Hugging Face ``evaluate`` modules load offline by local path and forward to the library."""
from __future__ import annotations

import random

import pytest

evaluate = pytest.importorskip("evaluate")

from adamix_ds.evaluation.hf_metrics import METRIC_NAMES, metric_path  # noqa: E402
from adamix_ds.evaluation.metrics.e2e import score_e2e  # noqa: E402
from adamix_ds.evaluation.metrics.webnlg import score_dart, score_webnlg  # noqa: E402
from tests.test_metrics_webnlg import _corpus  # noqa: E402

NO_JAVA = "/nonexistent/bin/java"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No hub: what users on clusters without internet have."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")


@pytest.fixture(scope="module")
def corpus():
    hyps, refs = _corpus(random.Random(5), 12)
    categories = ["Airport", "Artist"] * 6
    return hyps, refs, categories


def test_metric_path_names_the_known_modules():
    for name in METRIC_NAMES:
        assert metric_path(name).endswith(name)
    with pytest.raises(ValueError, match="e2e_nlg, webnlg_nlg, dart_nlg"):
        metric_path("bleu")


def test_each_module_loads_by_local_path_and_forwards(corpus):
    hyps, refs, categories = corpus
    expected = {
        "e2e_nlg": {"all": score_e2e(hyps, refs, java=NO_JAVA)},
        "dart_nlg": {"all": score_dart(hyps, refs, java=NO_JAVA)},
        "webnlg_nlg": score_webnlg(hyps, refs, categories=categories, java=NO_JAVA),
    }
    outs = {}
    for name in METRIC_NAMES:
        metric = evaluate.load(metric_path(name))
        kwargs = {"categories": categories} if name == "webnlg_nlg" else {}
        out = metric.compute(predictions=hyps, references=refs, java=NO_JAVA, strict=False,
                             **kwargs)
        want_scores, want_errors = {}, {}
        for subset, result in expected[name].items():
            prefix = "" if subset == "all" else f"{subset}_"
            want_scores.update({prefix + m: v for m, v in result.scores.items()})
            want_errors.update({prefix + m: e for m, e in result.errors.items()})
        assert out.pop("errors") == want_errors
        assert out == pytest.approx(want_scores, abs=1e-12)
        outs[name] = out
    assert set(outs["webnlg_nlg"]) == {f"{p}{m}" for p in ("", "seen_", "unseen_")
                                       for m in ("BLEU", "TER")}
    assert set(outs["e2e_nlg"]) == {"BLEU", "NIST"}


def test_missing_metric_raises_unless_not_strict():
    metric = evaluate.load(metric_path("dart_nlg"))
    with pytest.raises(RuntimeError, match=r"could not compute METEOR: .*Java not found.*"
                                           r"strict=False"):
        metric.compute(predictions=["a b"], references=[["a b"]], java=NO_JAVA)


@pytest.mark.parametrize("predictions, references, message", [
    (["a b"], ["a b"], "expected a list"),  # references must be lists of strings
    (["a b", "c"], [["a b"]], "Mismatch in the number of predictions (2) and references (1)"),
    ([1], [["a"]], "expected"),
])
def test_wrong_input_is_a_clear_error(predictions, references, message):
    metric = evaluate.load(metric_path("webnlg_nlg"))
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(
            ")", r"\)")):
        metric.compute(predictions=predictions, references=references, java=NO_JAVA)


def test_wrong_categories_are_a_clear_error():
    metric = evaluate.load(metric_path("webnlg_nlg"))
    with pytest.raises(ValueError, match="2 hypotheses but 1 categories"):
        metric.compute(predictions=["a", "b"], references=[["a"], ["b"]], categories=["Food"],
                       java=NO_JAVA)
