"""LM-BFF few-shot splits (Gao et al., 2021) for SST-2, subj and mpqa, with their prompts.

Layout (as LM-BFF's ``generate_k_shot_data.py`` writes it):
``<data_dir>/<task>/<k>-<seed>/{train,dev,test}.<ext>``

| task  | files    | format                                                   | test rows |
|-------|----------|----------------------------------------------------------|-----------|
| SST-2 | ``.tsv`` | header ``sentence<TAB>label``, no quoting                | 872       |
| subj  | ``.csv`` | no header, RFC 4180 ``label,sentence`` (quoted if commas) | 2,000     |
| mpqa  | ``.csv`` | same as subj                                             | 2,000     |

``train`` and ``dev`` hold ``k`` examples per class (32 rows for k=16); seeds 13, 21, 42, 87, 100.
Without ``data_dir`` the reader uses the bundled ``assets/glue/LM-BFF-k-shot`` (SST-2, 16-13 only).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from .glue import GlueFormatError, NluExample
from .paths import bundled_asset, env_data_dir

__all__ = ["LMBFF_SEEDS", "LmBffTask", "LMBFF_TASKS", "get_lmbff_task", "resolve_lmbff_file",
           "read_lmbff", "format_prompt"]

PathLike = str | Path
LMBFF_SEEDS = (13, 21, 42, 87, 100)


@dataclass(frozen=True)
class LmBffTask:
    """A few-shot task: file format and its manual prompt.

    Attributes:
        name: folder name (``SST-2``, ``subj``, ``mpqa``).
        ext: file extension, ``tsv`` (header, tab-separated) or ``csv`` (no header, ``label,text``).
        template: the prompt as a Python format string with ``{sentence}`` and ``{mask}``.
        lmbff_template: the same prompt in LM-BFF's own template syntax (for reference).
        label_words: label id -> verbalizer word, the word the mask should be filled with.
    """

    name: str
    ext: str
    template: str
    lmbff_template: str
    label_words: dict[int, str]


# LM-BFF's manual templates and label words (its run_experiment.sh): ``_`` is a space there and
# ``*mask*`` directly follows "was", the label word carrying its own leading space (RoBERTa BPE).
LMBFF_TASKS: dict[str, LmBffTask] = {t.name: t for t in (
    LmBffTask("SST-2", "tsv", "{sentence} It was {mask}.", "*cls**sent_0*_It_was*mask*.*sep+*",
              {0: "terrible", 1: "great"}),
    LmBffTask("subj", "csv", "{sentence} This is {mask}.", "*cls**sent_0*_This_is*mask*.*sep+*",
              {0: "subjective", 1: "objective"}),
    LmBffTask("mpqa", "csv", "{sentence} It was {mask}.", "*cls**sent_0*_It_was*mask*.*sep+*",
              {0: "terrible", 1: "great"}),
)}


def get_lmbff_task(name: str) -> LmBffTask:
    """The task spec (case and ``-`` ignored: ``sst2``, ``SST-2``, ``Subj``)."""
    by_key = {k.lower().replace("-", ""): v for k, v in LMBFF_TASKS.items()}
    try:
        return by_key[name.lower().replace("-", "")]
    except KeyError:
        raise ValueError(f"unknown LM-BFF task {name!r}; expected one of {tuple(LMBFF_TASKS)}") \
            from None


def resolve_lmbff_file(task: str, k: int, seed: int, split: str,
                       data_dir: PathLike | None = None) -> Path:
    """Path of ``<data_dir>/<task>/<k>-<seed>/<split>.<ext>``.

    ``data_dir`` may also be the folder that holds ``LM-BFF-k-shot/`` (e.g. the GLUE data folder).

    Raises:
        ValueError: unknown task or split.
        FileNotFoundError: the file is missing; the message lists the ``k-seed`` folders present.
    """
    spec = get_lmbff_task(task)
    if split not in ("train", "dev", "test"):
        raise ValueError(f"unknown split {split!r}; expected train, dev or test")
    rel = Path(spec.name) / f"{k}-{seed}" / f"{split}.{spec.ext}"
    if data_dir is None:
        data_dir = env_data_dir("glue")
    if data_dir is None:
        return bundled_asset(Path("glue/LM-BFF-k-shot") / rel)
    base = Path(data_dir)
    candidates = [base / rel, base / "LM-BFF-k-shot" / rel]
    for path in candidates:
        if path.is_file():
            return path
    present = sorted(p.name for c in candidates if c.parent.parent.is_dir()
                     for p in c.parent.parent.iterdir() if p.is_dir())
    raise FileNotFoundError(f"LM-BFF {spec.name} {k}-{seed} {split} file not found: looked for "
                            + " and ".join(str(c) for c in candidates)
                            + f"; {spec.name} folders present: {present or 'none'}")


def read_lmbff(task: str, k: int = 16, seed: int = 13, split: str = "train",
               data_dir: PathLike | None = None) -> list[NluExample]:
    """Read one LM-BFF split; labels are ids ``0`` / ``1`` (keys of ``label_words``).

    Raises:
        FileNotFoundError: see :func:`resolve_lmbff_file`.
        GlueFormatError: wrong field count or a label other than ``0`` / ``1``; the message names
            the file and the 1-based line.
    """
    spec = get_lmbff_task(task)
    path = resolve_lmbff_file(task, k, seed, split, data_dir)
    with open(path, encoding="utf-8", newline="") as f:
        if spec.ext == "tsv":
            # SST-2 text has unbalanced quotes: no quote handling, like the GLUE files.
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, [])
            if header != ["sentence", "label"]:
                raise GlueFormatError(f"{path} line 1: expected header ['sentence', 'label'], "
                                      f"got {header}")
            text_idx, label_idx = 0, 1
        else:
            # subj / mpqa were written by pandas: real CSV quoting ("" escapes), no header.
            reader = csv.reader(f)
            label_idx, text_idx = 0, 1
        examples: list[NluExample] = []
        for row in reader:
            if not row:
                continue
            where = f"{path} line {reader.line_num}"
            if len(row) != 2:
                raise GlueFormatError(f"{where}: expected 2 fields, got {len(row)}")
            raw = row[label_idx]
            if raw not in ("0", "1"):
                raise GlueFormatError(f"{where}: unknown label {raw!r} (expected '0' or '1')")
            examples.append(NluExample(row[text_idx], None, int(raw), f"{split}-{len(examples)}"))
    return examples


def format_prompt(text: str, task: str, mask_token: str) -> str:
    """The task's prompt around ``text``, e.g. ``"a gem . It was <mask>."`` for SST-2.

    The result still needs the tokenizer's special tokens (``*cls*`` / ``*sep+*`` in LM-BFF).
    """
    return get_lmbff_task(task).template.format(sentence=text, mask=mask_token)
