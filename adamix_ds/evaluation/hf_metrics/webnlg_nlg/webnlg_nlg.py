"""WebNLG 2017 BLEU / METEOR / TER as the AdaMix / LoRA paper reports them (GenerationEval), as a
Hugging Face ``evaluate`` module: ``evaluate.load(adamix_ds.evaluation.hf_metrics.metric_path(
"webnlg_nlg"))``. The scoring is :func:`adamix_ds.evaluation.metrics.webnlg.score_webnlg`."""
import evaluate

from adamix_ds.evaluation.hf_metrics import flatten_results, text_metric_info
from adamix_ds.evaluation.metrics.webnlg import score_webnlg

_CITATION = """\
@inproceedings{gardent2017webnlg,
  title={The {WebNLG} Challenge: Generating Text from {RDF} Data},
  author={Gardent, Claire and Shimorina, Anastasia and Narayan, Shashi and
          Perez-Beltrachini, Laura},
  booktitle={Proceedings of the 10th International Conference on Natural Language Generation},
  pages={124--133}, year={2017}
}
"""

_DESCRIPTION = """\
The WebNLG challenge's GenerationEval metrics as used for WebNLG 2017 in the LoRA and AdaMix
papers: BLEU as multi-bleu-detok.perl (0-100, case-sensitive, mteval-v13a tokenization), METEOR
1.5 (-l en -norm, needs Java) and pyter TER (0-1, lower is better) on nltk-tokenized text. The
paper's files are lower-cased and tokenized by the decoder (see
adamix_ds.evaluation.metrics.webnlg.lora_postprocess).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts, one per input.
    references: list of lists of reference texts (any number >= 1 per input).
    categories: optional list of the DBpedia category of each input; adds seen_* and unseen_*
        scores (the paper's WebNLG S / U; the plain keys are A).
    java: optional java executable for METEOR (default $ADAMIX_JAVA, then java on PATH).
    strict: if True (default) raise when a metric cannot be computed (e.g. no Java); if False
        leave it out and report why under "errors".
Returns:
    BLEU, METEOR, TER (and seen_BLEU, ..., unseen_TER with categories).
Examples:
    >>> metric = evaluate.load(metric_path("webnlg_nlg"))
    >>> metric.compute(predictions=["the cat sat"], references=[["the cat sat", "a cat sat"]])
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WebnlgNlg(evaluate.Metric):
    """GenerationEval's BLEU / METEOR / TER for WebNLG (all, seen, unseen)."""

    def _info(self):
        return text_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION,
                                ["https://github.com/WebNLG/GenerationEval",
                                 "https://github.com/microsoft/LoRA/tree/main/examples/NLG"])

    def _compute(self, predictions, references, categories=None, java=None, strict=True):
        results = score_webnlg(predictions, references, categories=categories, java=java)
        return flatten_results(results, strict=strict)
