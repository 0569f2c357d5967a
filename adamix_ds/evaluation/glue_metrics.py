"""GLUE metrics: accuracy, binary F1, Matthews correlation, Pearson and Spearman correlation.

Pure Python (``math.fsum`` for the sums); inputs may be lists, numpy arrays or torch tensors of
predicted class ids (argmax of the logits) or, for STS-B, predicted scores. Degenerate inputs
(a constant vector, an MCC denominator of 0, no positive class at all for F1) give ``0.0`` as
scikit-learn does, instead of NaN, so a collapsed model scores 0 rather than breaking model
selection. Metric names are those of the HF ``evaluate`` ``glue`` metric, and ``combined_score``
(the mean, for tasks with two metrics) is the name the Transformers ``run_glue.py`` script uses.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from adamix_ds.data.glue import get_glue_task

__all__ = ["accuracy", "binary_f1", "matthews_corrcoef", "pearson", "spearman", "average_ranks",
           "glue_metrics", "main_metric"]

# Few-shot (LM-BFF) single-sentence tasks that are not in GLUE; scored by accuracy.
_EXTRA_TASKS = {"subj": ("accuracy",), "mpqa": ("accuracy",)}


def _as_list(values: Any, what: str) -> list[Any]:
    out = values.tolist() if hasattr(values, "tolist") else list(values)
    if out and isinstance(out[0], (list, tuple)):
        raise ValueError(f"{what} must be 1-D (class ids or scores); for logits pass their argmax")
    return out


def _pair(predictions: Any, labels: Any) -> tuple[list[Any], list[Any]]:
    p, y = _as_list(predictions, "predictions"), _as_list(labels, "labels")
    if len(p) != len(y):
        raise ValueError(f"{len(p)} predictions but {len(y)} labels")
    if not p:
        raise ValueError("no predictions to score")
    return p, y


def accuracy(predictions: Any, labels: Any) -> float:
    """Fraction of predictions equal to the label."""
    p, y = _pair(predictions, labels)
    return sum(int(a == b) for a, b in zip(p, y, strict=True)) / len(p)


def binary_f1(predictions: Any, labels: Any, positive: int = 1) -> float:
    """F1 of the ``positive`` class: ``2 TP / (2 TP + FP + FN)``; 0.0 when TP + FP + FN = 0."""
    p, y = _pair(predictions, labels)
    tp = sum(1 for a, b in zip(p, y, strict=True) if a == positive and b == positive)
    fp = sum(1 for a, b in zip(p, y, strict=True) if a == positive and b != positive)
    fn = sum(1 for a, b in zip(p, y, strict=True) if a != positive and b == positive)
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0  # no positives anywhere: sklearn's zero_division=0


def matthews_corrcoef(predictions: Any, labels: Any) -> float:
    """Matthews correlation, multi-class form (Gorodkin 2004; binary = the usual TP/TN formula).

    ``(c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2)(s^2 - sum_k t_k^2))`` with ``s`` samples,
    ``c`` correct, ``p_k`` / ``t_k`` times class ``k`` is predicted / true. A zero denominator
    (only one class predicted, or only one class present) gives 0.0, as in scikit-learn.
    """
    p, y = _pair(predictions, labels)
    classes = set(p) | set(y)
    s = len(p)
    c = sum(int(a == b) for a, b in zip(p, y, strict=True))
    pk = {k: 0 for k in classes}
    tk = {k: 0 for k in classes}
    for a, b in zip(p, y, strict=True):
        pk[a] += 1
        tk[b] += 1
    cov_pt = c * s - sum(pk[k] * tk[k] for k in classes)
    cov_pp = s * s - sum(v * v for v in pk.values())
    cov_tt = s * s - sum(v * v for v in tk.values())
    if cov_pp == 0 or cov_tt == 0:
        return 0.0
    return cov_pt / math.sqrt(cov_pp * cov_tt)  # integer arithmetic up to here: exact


def pearson(x: Any, y: Any) -> float:
    """Pearson correlation; 0.0 when either vector is constant (correlation undefined)."""
    a = [float(v) for v in _as_list(x, "x")]
    b = [float(v) for v in _as_list(y, "y")]
    if len(a) != len(b) or not a:
        raise ValueError(f"pearson needs two non-empty vectors of equal length, got {len(a)}, "
                         f"{len(b)}")
    ma, mb = math.fsum(a) / len(a), math.fsum(b) / len(b)
    da = [v - ma for v in a]
    db = [v - mb for v in b]
    saa = math.fsum(v * v for v in da)
    sbb = math.fsum(v * v for v in db)
    if saa == 0.0 or sbb == 0.0:
        return 0.0
    r = math.fsum(u * v for u, v in zip(da, db, strict=True)) / math.sqrt(saa * sbb)
    return max(-1.0, min(1.0, r))  # rounding can step just past +-1


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span.

    ``[5, 7, 5] -> [1.5, 3, 1.5]``.
    """
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        shared = (i + j) / 2 + 1  # mean of 1-based ranks i+1 .. j+1
        for k in range(i, j + 1):
            ranks[order[k]] = shared
        i = j + 1
    return ranks


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation: Pearson of the average ranks (ties handled like scipy)."""
    a = [float(v) for v in _as_list(x, "x")]
    b = [float(v) for v in _as_list(y, "y")]
    if len(a) != len(b):
        raise ValueError(f"spearman needs equal lengths, got {len(a)} and {len(b)}")
    return pearson(average_ranks(a), average_ranks(b))


def _task_metrics(task: str) -> tuple[str, ...]:
    if task.lower() in _EXTRA_TASKS:
        return _EXTRA_TASKS[task.lower()]
    return get_glue_task(task).metrics


_METRIC_FNS = {
    "accuracy": accuracy,
    "f1": binary_f1,
    "matthews_correlation": matthews_corrcoef,
    "pearson": pearson,
    "spearmanr": spearman,
}


def glue_metrics(task: str, predictions: Any, labels: Any) -> dict[str, float]:
    """The GLUE metrics of ``task`` (names as in ``adamix_ds.data.GLUE_TASKS``, or subj / mpqa).

    | task                       | keys                                          |
    |----------------------------|-----------------------------------------------|
    | CoLA                       | ``matthews_correlation``                      |
    | SST-2, MNLI, QNLI, RTE, subj, mpqa | ``accuracy``                          |
    | MRPC, QQP                  | ``accuracy``, ``f1``, ``combined_score`` (mean) |
    | STS-B                      | ``pearson``, ``spearmanr``, ``combined_score`` (mean) |

    Args:
        predictions: class ids (argmax of logits), or predicted scores for STS-B.
        labels: gold class ids, or gold scores for STS-B.
    """
    names = _task_metrics(task)
    result = {name: float(_METRIC_FNS[name](predictions, labels)) for name in names}
    if len(result) > 1:
        result["combined_score"] = sum(result.values()) / len(result)
    return result


def main_metric(task: str) -> str:
    """The metric for model selection and reporting: ``matthews_correlation`` for CoLA,
    ``pearson`` for STS-B, ``accuracy`` otherwise (MRPC and QQP included), as in the AdaMix and
    LoRA GLUE tables."""
    if task.lower() in _EXTRA_TASKS:
        return "accuracy"
    return get_glue_task(task).main_metric
