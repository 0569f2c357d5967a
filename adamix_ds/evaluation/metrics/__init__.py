"""NLG metrics: the official E2E scorer (BLEU, NIST, METEOR, ROUGE_L, CIDEr) and the WebNLG / DART
metrics (BLEU as multi-bleu-detok, METEOR, TER), in pure Python plus the METEOR 1.5 and PTB
tokenizer jars that the PyPI ``pycocoevalcap`` package ships."""
from .base import MetricResult
from .e2e import E2E_METRICS, read_hypotheses, read_references, score_e2e
from .java import JavaNotFoundError, find_java, pycocoevalcap_jar
from .webnlg import WEBNLG_METRICS, score_dart, score_webnlg

__all__ = ["MetricResult", "JavaNotFoundError", "find_java", "pycocoevalcap_jar", "E2E_METRICS",
           "read_hypotheses", "read_references", "score_e2e", "WEBNLG_METRICS", "score_dart",
           "score_webnlg"]
