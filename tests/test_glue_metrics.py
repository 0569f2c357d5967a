"""Tests for adamix_ds.evaluation.glue_metrics.

Oracles: small vectors whose confusion matrices, ranks and correlations are worked out by hand in
the comments; degenerate cases against scikit-learn's documented conventions (0.0, not NaN).
When scipy / scikit-learn are installed, an extra cross-check on random vectors with ties.
"""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from adamix_ds.evaluation.glue_metrics import (
    accuracy,
    average_ranks,
    binary_f1,
    glue_metrics,
    main_metric,
    matthews_corrcoef,
    pearson,
    spearman,
)

# Binary example used throughout:
#   idx   0 1 2 3 4
#   pred  1 0 1 1 0
#   gold  1 0 0 1 1
# TP = {0, 3} = 2, TN = {1} = 1, FP = {2} = 1, FN = {4} = 1.
PRED = [1, 0, 1, 1, 0]
GOLD = [1, 0, 0, 1, 1]
ACC = 3 / 5                               # 0.6
F1 = 2 * 2 / (2 * 2 + 1 + 1)              # precision 2/3, recall 2/3 -> 2/3
MCC = (2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2)  # (TP TN - FP FN)/sqrt(3*3*2*2) = 1/6

# Regression example: x = [1, 2, 3, 4], y = [2, 4, 5, 9].
# dx = [-1.5, -0.5, 0.5, 1.5] (mean 2.5), dy = [-3, -1, 0, 4] (mean 5)
# sum dx dy = 4.5 + 0.5 + 0 + 6 = 11, sum dx^2 = 5, sum dy^2 = 26 -> r = 11 / sqrt(130).
X = [1.0, 2.0, 3.0, 4.0]
Y = [2.0, 4.0, 5.0, 9.0]
R = 11 / math.sqrt(130)  # 0.96476...


def test_accuracy_f1_mcc_by_hand():
    assert accuracy(PRED, GOLD) == pytest.approx(ACC)
    assert binary_f1(PRED, GOLD) == pytest.approx(F1)
    assert matthews_corrcoef(PRED, GOLD) == pytest.approx(MCC)
    assert MCC == pytest.approx(1 / 6)
    # F1 of class 0 instead: TP0 = {1} = 1, FP0 = {4} = 1, FN0 = {2} = 1 -> 2 / 4.
    assert binary_f1(PRED, GOLD, positive=0) == pytest.approx(0.5)


def test_mcc_multiclass_by_hand():
    # gold 0 1 2 0 1 2, pred 0 2 1 0 1 2: s = 6, correct c = 4 (idx 0, 3, 4, 5),
    # p_k = t_k = 2 for every class -> (4*6 - 12) / sqrt((36 - 12)(36 - 12)) = 12 / 24.
    assert matthews_corrcoef([0, 2, 1, 0, 1, 2], [0, 1, 2, 0, 1, 2]) == pytest.approx(0.5)


def test_perfect_and_inverse():
    assert matthews_corrcoef([0, 1, 1, 0], [0, 1, 1, 0]) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0, 0, 1], [0, 1, 1, 0]) == pytest.approx(-1.0)
    assert binary_f1([0, 1, 1, 0], [0, 1, 1, 0]) == 1.0
    assert accuracy([1, 0, 0, 1], [0, 1, 1, 0]) == 0.0


def test_degenerate_cases_give_zero():
    # Only one class predicted: sum p_k^2 = s^2, MCC denominator 0 -> 0.0 (sklearn convention).
    assert matthews_corrcoef([1, 1, 1], [0, 1, 1]) == 0.0
    # Only one class anywhere.
    assert matthews_corrcoef([1, 1], [1, 1]) == 0.0
    # No positive predicted nor present: TP + FP + FN = 0 -> 0.0 (sklearn zero_division=0).
    assert binary_f1([0, 0, 0], [0, 0, 0]) == 0.0
    # Positives present, none predicted: TP = 0 -> 0.0.
    assert binary_f1([0, 0, 0], [1, 0, 1]) == 0.0
    # A constant vector has no correlation.
    assert pearson([3.0, 3.0, 3.0], [1.0, 2.0, 3.0]) == 0.0
    assert pearson([1.0, 2.0, 3.0], [0.5, 0.5, 0.5]) == 0.0
    assert spearman([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0


def test_pearson_by_hand():
    assert pearson(X, Y) == pytest.approx(R)
    assert pearson(Y, X) == pytest.approx(R)
    assert pearson(X, [-v for v in Y]) == pytest.approx(-R)
    # Invariant to affine maps of either side.
    assert pearson([10 * v + 3 for v in X], Y) == pytest.approx(R)
    assert pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0)


def test_average_ranks():
    assert average_ranks([5, 7, 5]) == [1.5, 3.0, 1.5]
    assert average_ranks([3.0, 1.0, 2.0]) == [3.0, 1.0, 2.0]
    # three-way tie on ranks 2, 3, 4 -> 3 each.
    assert average_ranks([0, 9, 9, 9, 10]) == [1.0, 3.0, 3.0, 3.0, 5.0]


def test_spearman_by_hand():
    # Monotone but not linear: ranks equal -> 1 (Pearson is below 1).
    assert spearman([1, 2, 3, 4, 5], [1, 4, 9, 16, 100]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4, 5], [1, 4, 9, 16, 100]) < 0.95
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # Ties: x = [1, 2, 2, 3] -> ranks [1, 2.5, 2.5, 4]; y = [10, 20, 30, 30] -> [1, 2, 3.5, 3.5].
    # Centred (mean 2.5): [-1.5, 0, 0, 1.5] and [-1.5, -0.5, 1, 1]:
    # sum of products 2.25 + 0 + 0 + 1.5 = 3.75, sums of squares 4.5 and 4.5 -> 3.75 / 4.5 = 5/6.
    assert spearman([1, 2, 2, 3], [10, 20, 30, 30]) == pytest.approx(5 / 6)


def test_glue_metrics_per_task():
    assert glue_metrics("CoLA", PRED, GOLD) == pytest.approx({"matthews_correlation": MCC})
    for task in ("SST-2", "sst2", "RTE", "QNLI", "MNLI", "subj", "mpqa"):
        assert glue_metrics(task, PRED, GOLD) == pytest.approx({"accuracy": ACC})
    for task in ("MRPC", "qqp"):
        assert glue_metrics(task, PRED, GOLD) == pytest.approx(
            {"accuracy": ACC, "f1": F1, "combined_score": (ACC + F1) / 2})
    # STS-B: x is increasing with y, so Spearman = 1.
    assert glue_metrics("STS-B", X, Y) == pytest.approx(
        {"pearson": R, "spearmanr": 1.0, "combined_score": (R + 1.0) / 2})
    with pytest.raises(ValueError, match="unknown GLUE task"):
        glue_metrics("wnli", PRED, GOLD)


def test_main_metric():
    assert main_metric("CoLA") == "matthews_correlation"
    assert main_metric("stsb") == "pearson"
    for task in ("MRPC", "QQP", "SST-2", "MNLI", "QNLI", "RTE", "subj", "mpqa"):
        assert main_metric(task) == "accuracy"
    for task in ("CoLA", "STS-B", "MRPC", "RTE"):
        assert main_metric(task) in glue_metrics(task, [1.0, 0.0, 1.0], [1.0, 0.0, 0.0])


def test_tensor_and_array_inputs():
    for conv in (np.array, torch.tensor):
        assert accuracy(conv(PRED), conv(GOLD)) == pytest.approx(ACC)
        assert matthews_corrcoef(conv(PRED), conv(GOLD)) == pytest.approx(MCC)
        assert pearson(conv(X), conv(Y)) == pytest.approx(R)
    res = glue_metrics("MRPC", torch.tensor(PRED), np.array(GOLD))
    assert all(isinstance(v, float) for v in res.values())


def test_bad_inputs():
    with pytest.raises(ValueError, match="5 predictions but 4 labels"):
        accuracy(PRED, GOLD[:4])
    with pytest.raises(ValueError, match="no predictions"):
        binary_f1([], [])
    with pytest.raises(ValueError, match="argmax"):
        accuracy(torch.zeros(5, 2), GOLD)
    with pytest.raises(ValueError, match="equal length"):
        pearson([1.0, 2.0], [1.0])


def test_cross_check_scipy_sklearn():
    stats = pytest.importorskip("scipy.stats")
    skm = pytest.importorskip("sklearn.metrics")
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(5, 60)
        y = [rng.randint(0, 1) for _ in range(n)]
        p = [rng.randint(0, 1) for _ in range(n)]
        assert binary_f1(p, y) == pytest.approx(skm.f1_score(y, p, zero_division=0))
        assert matthews_corrcoef(p, y) == pytest.approx(skm.matthews_corrcoef(y, p))
        y3 = [rng.randint(0, 2) for _ in range(n)]
        p3 = [rng.randint(0, 2) for _ in range(n)]
        assert matthews_corrcoef(p3, y3) == pytest.approx(skm.matthews_corrcoef(y3, p3))
        # Scores on a 0.25 grid: many ties.
        a = [rng.randint(0, 20) / 4 for _ in range(n)]
        b = [v + rng.randint(-8, 8) / 4 for v in a]
        assert pearson(a, b) == pytest.approx(stats.pearsonr(a, b)[0])
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0])
