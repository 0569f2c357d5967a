"""Hugging Face ``evaluate`` modules for the official NLG scores, loadable offline by local path.

    import evaluate
    from adamix_ds.evaluation.hf_metrics import metric_path

    e2e = evaluate.load(metric_path("e2e_nlg"))          # BLEU NIST METEOR ROUGE_L CIDEr
    webnlg = evaluate.load(metric_path("webnlg_nlg"))    # BLEU METEOR TER (+ seen_* / unseen_*)
    dart = evaluate.load(metric_path("dart_nlg"))        # BLEU METEOR TER
    e2e.compute(predictions=["..."], references=[["...", "..."]])

``evaluate.load`` copies the script ``<name>/<name>.py`` into its module cache and imports it from
there, so the scripts import this package absolutely (it must be installed, as ``pip install -e``
does) and define their metric class themselves (``evaluate`` takes the first metric class it
finds in the script's namespace).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..metrics.base import MetricResult

METRIC_NAMES = ("e2e_nlg", "webnlg_nlg", "dart_nlg")


def metric_path(name: str) -> str:
    """Directory of the ``evaluate`` module ``name`` (one of :data:`METRIC_NAMES`), for
    ``evaluate.load(metric_path(name))``.

    Raises:
        ValueError: unknown name (the known ones are listed).
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRIC_NAMES)}")
    return str(Path(__file__).resolve().parent / name)


def text_metric_info(description: str, citation: str, inputs_description: str,
                     reference_urls: list[str]) -> Any:
    """The ``evaluate.MetricInfo`` the three modules share: string predictions, each with a
    sequence of string references."""
    import datasets
    import evaluate

    return evaluate.MetricInfo(
        description=description, citation=citation, inputs_description=inputs_description,
        features=datasets.Features({"predictions": datasets.Value("string"),
                                    "references": datasets.Sequence(datasets.Value("string"))}),
        reference_urls=reference_urls)


def flatten_results(results: Mapping[str, MetricResult], strict: bool = True) -> dict[str, Any]:
    """One flat dict of scores, as ``evaluate`` modules return them: the ``all`` subset's metrics
    under their own names, other subsets' as ``<subset>_<metric>`` (e.g. ``seen_BLEU``).

    Args:
        results: subset name -> :class:`MetricResult`.
        strict: raise if a metric could not be computed; otherwise leave it out and add
            ``"errors": {key: cause}``.

    Raises:
        RuntimeError: (``strict``) naming each missing metric and why.
    """
    scores: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for subset, result in results.items():
        prefix = "" if subset == "all" else f"{subset}_"
        scores.update({prefix + m: v for m, v in result.scores.items()})
        errors.update({prefix + m: e for m, e in result.errors.items()})
    if errors and strict:
        by_cause: dict[str, list] = {}
        for key, cause in errors.items():
            by_cause.setdefault(cause, []).append(key)
        detail = "; ".join(f"{', '.join(keys)}: {cause}" for cause, keys in by_cause.items())
        raise RuntimeError(f"could not compute {detail} (pass strict=False to get the other "
                           f"scores)")
    if errors:
        scores["errors"] = errors
    return scores
