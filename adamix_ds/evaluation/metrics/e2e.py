"""The E2E NLG challenge scorer (tuetschek/e2e-metrics, ``measure_scores.py -p``) in one call.

BLEU and NIST as its Python MT-Eval port (:mod:`.mteval`, raw strings), METEOR, ROUGE_L and
CIDEr as its MS-COCO caption evaluator (PTB tokenization, :mod:`.ptb`; METEOR 1.5 jar,
:mod:`.meteor`; :mod:`.rouge`; :mod:`.cider`). The values agree with the official script's
printout (``%.4f``, BLEU in 0-1) on any input it accepts.

Files are read like the official script's plain-text mode: UTF-8, lines split as Python's
``str.splitlines`` splits them and stripped; references are groups of lines separated by a blank
line (a file without blank lines is single-reference, one per line); system outputs are one per
line, blank lines included (an empty output).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from .base import MetricResult
from .cider import cider_d
from .java import JavaNotFoundError, find_java
from .meteor import Meteor15, MeteorError
from .mteval import BleuAccumulator, NistAccumulator, mteval_tokenize
from .ptb import PTBTokenizerError, ptb_tokenize
from .rouge import rouge_l

PathLike = str | Path

E2E_METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
_JAVA_METRICS = ("METEOR", "ROUGE_L", "CIDEr")  # computed on the PTB tokenizer's output
_TABULAR = re.compile(r"\.[ct]sv$", re.I)  # the official script reads these as CSV / TSV


def _read_lines(path: PathLike, what: str) -> list[str]:
    """The stripped lines of a UTF-8 text file, split like the official script splits them."""
    p = Path(path)
    if _TABULAR.search(str(p)):
        layout = ("one reference per line, instances separated by blank lines"
                  if what == "reference" else "one output per line")
        raise ValueError(f"{p}: CSV/TSV {what} files are not supported; give plain text, {layout}")
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {p}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{p}: not UTF-8 ({err})") from err
    # codecs' readline (used by the official script) splits at every str.splitlines() boundary;
    # a BOM is kept, as there
    return [line.strip() for line in text.splitlines()]


def read_references(path: PathLike) -> list[list[str]]:
    """Reference groups of a plain-text E2E reference file, one group per instance.

    Groups are consecutive non-blank lines separated by one blank line; a trailing blank line is
    ignored. A file with a single group (no blank line) is taken as single-reference: one
    instance per line, as the official script does.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a CSV/TSV file; not UTF-8; no references; an empty group (two blank lines in a
            row, or a blank first line), naming the file and line.
    """
    p = Path(path)
    groups: list[list[str]] = [[]]
    starts = [1]  # 1-based line where each group starts
    for lineno, line in enumerate(_read_lines(p, "reference"), start=1):
        if line:
            groups[-1].append(line)
        else:
            groups.append([])
            starts.append(lineno + 1)
    if not groups[-1]:
        groups.pop()  # only one trailing empty group goes, as in the official script
    if len(groups) == 1:
        groups = [[line] for line in groups[0]]
    elif any(not g for g in groups):
        bad = next(i for i, g in enumerate(groups) if not g)
        raise ValueError(f"{p}:{starts[bad]}: empty reference group (instance {bad + 1}): blank "
                         f"lines separate instances, so a blank first line or two blank lines in "
                         f"a row leave an instance without references")
    if not groups:
        raise ValueError(f"{p}: no references (the file is empty or blank)")
    return groups


def read_hypotheses(path: PathLike) -> list[str]:
    """System outputs of a plain-text file, one per line (stripped; a blank line is an empty
    output).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a CSV/TSV file; not UTF-8; an empty file.
    """
    lines = _read_lines(path, "system output")
    if not lines:
        raise ValueError(f"{Path(path)}: no system outputs (the file is empty)")
    return lines


def _check_inputs(hypotheses: Sequence[str], references: Sequence[Sequence[str]]
                  ) -> tuple[list[str], list[list[str]]]:
    """Lists of outputs and reference groups (a bare string is a group of one), checked."""
    if isinstance(hypotheses, str):
        raise TypeError("hypotheses must be a sequence of strings, not one string")
    hyps = list(hypotheses)
    refs = [[refs] if isinstance(refs, str) else list(refs) for refs in references]
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} system outputs but {len(refs)} reference groups: one group "
                         f"of references per output is needed")
    if not hyps:
        raise ValueError("nothing to score: 0 system outputs and 0 reference groups")
    empty = [i for i, group in enumerate(refs) if not group]
    if empty:
        raise ValueError(f"{len(empty)} of {len(refs)} instances have no reference (first: "
                         f"instance {empty[0]}, 0-based)")
    for what, items in (("system output", hyps), ("reference", [r for g in refs for r in g])):
        bad = next((x for x in items if not isinstance(x, str)), None)
        if bad is not None:
            raise TypeError(f"every {what} must be a str, got {type(bad).__name__}")
    return hyps, refs


def _mteval(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> tuple[float, float]:
    """BLEU and NIST of the raw strings (each sentence tokenized once for both)."""
    bleu, nist = BleuAccumulator(), NistAccumulator()
    for hyp, group in zip(hyps, refs, strict=True):
        hyp_tokens = mteval_tokenize(hyp)
        ref_tokens = [mteval_tokenize(r) for r in group]
        bleu.add(hyp_tokens, ref_tokens)
        nist.add(hyp_tokens, ref_tokens)
    return bleu.score(), nist.score()


def score_e2e(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
              java: str | None = None, *, meteor: Meteor15 | None = None) -> MetricResult:
    """The official E2E scores of ``hypotheses[i]`` against the group ``references[i]``.

    Args:
        hypotheses: one system output per instance (raw text).
        references: one non-empty group of references per instance (raw text).
        java: java executable for METEOR and the PTB tokenizer (default: ``$ADAMIX_JAVA``, then
            PATH).
        meteor: a running :class:`Meteor15` to use (and leave running), e.g. to score several
            outputs without loading the jar (~15 s) each time; by default one is started and
            stopped here.

    Returns:
        ``scores`` with the keys of :data:`E2E_METRICS` (BLEU 0-1, NIST, METEOR 0-1, ROUGE_L 0-1,
        CIDEr); a metric that could not be computed is in ``errors`` instead, with the reason
        (no Java: METEOR, ROUGE_L and CIDEr; a failed tokenizer: the same three; a failed METEOR
        process: METEOR only).

    Raises:
        ValueError: different numbers of outputs and reference groups, no instances, or an
            instance without references (the counts are in the message).
        TypeError: an output or reference that is not a string.
    """
    hyps, refs = _check_inputs(hypotheses, references)
    result = MetricResult()
    own_meteor: Meteor15 | None = None
    java_exe: str | None = None
    try:
        java_exe = find_java(java)
        if meteor is None:
            # started first: the jar's ~15 s of loading overlap the rest
            meteor = own_meteor = Meteor15(java_exe)
    except JavaNotFoundError as err:
        result.errors.update({m: str(err) for m in _JAVA_METRICS})
    except OSError as err:  # the jar is missing, or java cannot be started
        result.errors["METEOR"] = f"METEOR 1.5 could not be started: {err}"
    try:
        result.scores["BLEU"], result.scores["NIST"] = _mteval(hyps, refs)
        if java_exe is not None:
            _coco_scores(hyps, refs, java_exe, meteor, result)
    finally:
        if own_meteor is not None:
            own_meteor.close()
    # the official order, for printing
    result.scores = {m: result.scores[m] for m in E2E_METRICS if m in result.scores}
    result.errors = {m: result.errors[m] for m in E2E_METRICS if m in result.errors}
    return result


def _coco_scores(hyps: list[str], refs: list[list[str]], java: str, meteor: Meteor15 | None,
                 result: MetricResult) -> None:
    """METEOR, ROUGE_L and CIDEr on PTB-tokenized text, into ``result``."""
    flat_refs = [r for group in refs for r in group]
    try:
        # two blocks, as the COCO evaluator tokenizes references and outputs in two runs
        tok_refs_flat, tok_hyps = ptb_tokenize([flat_refs, hyps], java)
    except (PTBTokenizerError, OSError) as err:
        for m in _JAVA_METRICS:
            result.errors.setdefault(m, f"PTB tokenizer failed: {err}")
        return
    tok_refs, start = [], 0
    for group in refs:
        tok_refs.append(tok_refs_flat[start:start + len(group)])
        start += len(group)
    result.scores["ROUGE_L"] = rouge_l(tok_hyps, tok_refs)[0]
    result.scores["CIDEr"] = cider_d(tok_hyps, tok_refs)[0]
    if meteor is not None:
        try:
            result.scores["METEOR"] = meteor.score(tok_hyps, tok_refs)[0]
        except (MeteorError, OSError) as err:
            result.errors["METEOR"] = str(err)


def score_e2e_files(hypotheses_path: PathLike, references_path: PathLike,
                    java: str | None = None, *, meteor: Meteor15 | None = None
                    ) -> MetricResult:
    """:func:`score_e2e` of a system output file against a reference file (see
    :func:`read_hypotheses`, :func:`read_references`).

    Raises:
        ValueError: unreadable files (see the readers), or different numbers of instances,
            naming both files and their counts.
    """
    hyps = read_hypotheses(hypotheses_path)
    refs = read_references(references_path)
    if len(hyps) != len(refs):
        raise ValueError(f"{hypotheses_path} has {len(hyps)} system outputs but "
                         f"{references_path} has {len(refs)} reference groups (instances are "
                         f"separated by blank lines in the reference file)")
    return score_e2e(hyps, refs, java, meteor=meteor)
