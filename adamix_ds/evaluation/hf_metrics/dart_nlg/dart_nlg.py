"""DART BLEU / METEOR / TER as the AdaMix / LoRA paper reports them (GenerationEval), as a Hugging
Face ``evaluate`` module: ``evaluate.load(adamix_ds.evaluation.hf_metrics.metric_path(
"dart_nlg"))``. The scoring is :func:`adamix_ds.evaluation.metrics.webnlg.score_dart`."""
import evaluate

from adamix_ds.evaluation.hf_metrics import flatten_results, text_metric_info
from adamix_ds.evaluation.metrics.webnlg import score_dart

_CITATION = """\
@inproceedings{nan2021dart,
  title={{DART}: Open-Domain Structured Data Record to Text Generation},
  author={Nan, Linyong and Radev, Dragomir and others},
  booktitle={Proceedings of NAACL-HLT 2021}, pages={432--447}, year={2021}
}
"""

_DESCRIPTION = """\
The WebNLG challenge's GenerationEval metrics as used for DART in the LoRA and AdaMix papers:
BLEU as multi-bleu-detok.perl (0-100), METEOR 1.5 (-l en -norm, needs Java) and pyter TER (0-1,
lower is better) on nltk-tokenized text.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts, one per input.
    references: list of lists of reference texts (any number >= 1 per input).
    java: optional java executable for METEOR (default $ADAMIX_JAVA, then java on PATH).
    strict: if True (default) raise when a metric cannot be computed (e.g. no Java); if False
        leave it out and report why under "errors".
Returns:
    BLEU, METEOR, TER.
Examples:
    >>> metric = evaluate.load(metric_path("dart_nlg"))
    >>> metric.compute(predictions=["the cat sat"], references=[["the cat sat", "a cat sat"]])
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DartNlg(evaluate.Metric):
    """GenerationEval's BLEU / METEOR / TER for DART."""

    def _info(self):
        return text_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION,
                                ["https://github.com/Yale-LILY/dart",
                                 "https://github.com/WebNLG/GenerationEval"])

    def _compute(self, predictions, references, java=None, strict=True):
        return flatten_results({"all": score_dart(predictions, references, java=java)},
                               strict=strict)
