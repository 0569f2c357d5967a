"""The E2E NLG challenge scores (tuetschek/e2e-metrics: BLEU, NIST, METEOR, ROUGE_L, CIDEr) as a
Hugging Face ``evaluate`` module: ``evaluate.load(adamix_ds.evaluation.hf_metrics.metric_path(
"e2e_nlg"))``. The scoring is :func:`adamix_ds.evaluation.metrics.e2e.score_e2e`."""
import evaluate

from adamix_ds.evaluation.hf_metrics import flatten_results, text_metric_info
from adamix_ds.evaluation.metrics.e2e import score_e2e

_CITATION = """\
@article{dusek2020evaluating,
  title={Evaluating the state-of-the-art of End-to-End Natural Language Generation: The {E2E NLG}
         challenge},
  author={Du{\\v{s}}ek, Ond{\\v{r}}ej and Novikova, Jekaterina and Rieser, Verena},
  journal={Computer Speech \\& Language}, volume={59}, pages={123--156}, year={2020}
}
"""

_DESCRIPTION = """\
The official E2E NLG challenge scorer (measure_scores.py): BLEU (0-1) and NIST as the NIST mteval
script computes them, METEOR 1.5, ROUGE_L and CIDEr as the MS-COCO caption evaluator computes them
(these three need Java for the PTB tokenizer and METEOR).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts, one per meaning representation.
    references: list of lists of reference texts (any number >= 1 per input).
    java: optional java executable (default $ADAMIX_JAVA, then java on PATH).
    strict: if True (default) raise when a metric cannot be computed (e.g. no Java); if False
        leave it out and report why under "errors".
Returns:
    BLEU, NIST, METEOR, ROUGE_L, CIDEr.
Examples:
    >>> metric = evaluate.load(metric_path("e2e_nlg"))
    >>> metric.compute(predictions=["the cat sat"], references=[["the cat sat", "a cat sat"]])
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class E2eNlg(evaluate.Metric):
    """The E2E challenge's five metrics."""

    def _info(self):
        return text_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION,
                                ["https://github.com/tuetschek/e2e-metrics"])

    def _compute(self, predictions, references, java=None, strict=True):
        return flatten_results({"all": score_e2e(predictions, references, java=java)},
                               strict=strict)
