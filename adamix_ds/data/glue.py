"""GLUE tasks for the AdaMix NLU experiments: readers, encoding and batch collation.

Files are the ones ``download_glue_data.py`` writes, one folder per task inside ``data_dir``
(``data_dir/RTE/train.tsv`` ...). The columns read (header names, or positions for CoLA) and the
labels in id order:

| task  | text columns                                | label column           | labels            |
|-------|---------------------------------------------|------------------------|-------------------|
| CoLA  | no header, 4 columns: position 3 (0-based)  | position 1             | 0 1               |
| SST-2 | ``sentence``                                | ``label``              | 0 1               |
| MRPC  | ``#1 String``, ``#2 String`` (file has BOM) | ``Quality``            | 0 1               |
| QQP   | ``question1``, ``question2``                | ``is_duplicate``       | 0 1               |
| STS-B | ``sentence1``, ``sentence2`` (10 columns)   | ``score``              | float score       |
| MNLI  | ``sentence1``, ``sentence2`` (12 / 16)      | ``gold_label``         | entailment        |
|       |                                             |                        | neutral           |
|       |                                             |                        | contradiction     |
| QNLI  | ``question``, ``sentence``                  | ``label``              | entailment        |
|       |                                             |                        | not_entailment    |
| RTE   | ``sentence1``, ``sentence2``                | ``label``              | entailment        |
|       |                                             |                        | not_entailment    |

Label ids follow the Hugging Face ``glue`` datasets, so predictions are comparable with models
fine-tuned there. Without ``data_dir`` the readers use the bundled 40-row samples
(``assets/glue``, see its README). Pure Python + torch; no deepspeed.
"""
from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .paths import bundled_asset, env_data_dir

__all__ = [
    "NluExample", "GlueTask", "GLUE_TASKS", "GlueFormatError", "get_glue_task",
    "resolve_glue_file", "read_glue", "encode_glue", "collate_nlu",
]

PathLike = str | Path
Column = str | int  # a header name, or a position in a headerless file (CoLA)


@dataclass(frozen=True)
class NluExample:
    """One labelled sentence (pair): ``label`` is a class id, or a float score for STS-B."""

    text_a: str
    text_b: str | None
    label: int | float
    guid: str


@dataclass(frozen=True)
class GlueTask:
    """Where a task's fields are in its TSV files and how it is scored.

    Attributes:
        name: folder name in the GLUE download (``"SST-2"``, ``"STS-B"`` ...).
        text_columns: one or two columns (header names, or positions when ``header`` is False).
        label_column: the label column (same convention).
        labels: label strings as written in the files, in id order; ``()`` for regression.
        label_names: human-readable names in the same order (for ``id2label``).
        metrics: what :func:`adamix_ds.evaluation.glue_metrics.glue_metrics` reports.
        main_metric: the metric used for model selection and in the paper's tables.
        splits: split name -> file name (MNLI has two dev sets).
        header: whether the first line is a header (all but CoLA).
        num_columns: fields per row in a headerless file (with a header: the header's width).
    """

    name: str
    text_columns: tuple[Column, ...]
    label_column: Column
    labels: tuple[str, ...]
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    main_metric: str
    splits: Mapping[str, str]
    header: bool = True
    num_columns: int | None = None

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        """Output width of the classification head (1 for STS-B regression)."""
        return len(self.labels) or 1


_TRAIN_DEV = {"train": "train.tsv", "dev": "dev.tsv"}
_BINARY = ("0", "1")
_ENTAIL = ("entailment", "not_entailment")

# Main metrics follow the AdaMix / LoRA GLUE tables: Matthews correlation for CoLA, Pearson for
# STS-B, accuracy for every other task (MRPC and QQP included, although GLUE also reports F1).
GLUE_TASKS: dict[str, GlueTask] = {t.name: t for t in (
    GlueTask("CoLA", (3,), 1, _BINARY, ("unacceptable", "acceptable"),
             ("matthews_correlation",), "matthews_correlation", _TRAIN_DEV,
             header=False, num_columns=4),
    GlueTask("SST-2", ("sentence",), "label", _BINARY, ("negative", "positive"),
             ("accuracy",), "accuracy", _TRAIN_DEV),
    GlueTask("MRPC", ("#1 String", "#2 String"), "Quality", _BINARY,
             ("not_equivalent", "equivalent"), ("accuracy", "f1"), "accuracy", _TRAIN_DEV),
    GlueTask("QQP", ("question1", "question2"), "is_duplicate", _BINARY,
             ("not_duplicate", "duplicate"), ("accuracy", "f1"), "accuracy", _TRAIN_DEV),
    GlueTask("STS-B", ("sentence1", "sentence2"), "score", (), (),
             ("pearson", "spearmanr"), "pearson", _TRAIN_DEV),
    GlueTask("MNLI", ("sentence1", "sentence2"), "gold_label",
             ("entailment", "neutral", "contradiction"), ("entailment", "neutral", "contradiction"),
             ("accuracy",), "accuracy",
             {"train": "train.tsv", "dev_matched": "dev_matched.tsv",
              "dev_mismatched": "dev_mismatched.tsv"}),
    GlueTask("QNLI", ("question", "sentence"), "label", _ENTAIL, _ENTAIL,
             ("accuracy",), "accuracy", _TRAIN_DEV),
    GlueTask("RTE", ("sentence1", "sentence2"), "label", _ENTAIL, _ENTAIL,
             ("accuracy",), "accuracy", _TRAIN_DEV),
)}

_SPLIT_ALIASES = {"validation": "dev", "validation_matched": "dev_matched",
                  "validation_mismatched": "dev_mismatched"}


class GlueFormatError(ValueError):
    """A malformed row; the message starts with ``<file> line <n>:``."""


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def get_glue_task(name: str) -> GlueTask:
    """The task spec; accepts GLUE folder names and HF config names (``"sst2"``, ``"stsb"``)."""
    by_key = {_key(t): spec for t, spec in GLUE_TASKS.items()}
    try:
        return by_key[_key(name)]
    except KeyError:
        raise ValueError(
            f"unknown GLUE task {name!r}; expected one of {tuple(GLUE_TASKS)}"
        ) from None


def _present(base: Path) -> str:
    """'RTE (train, dev), ...' for the task folders found under ``base`` (for error messages)."""
    found = []
    for spec in GLUE_TASKS.values():
        splits = [s for s, f in spec.splits.items() if (base / spec.name / f).is_file()]
        if splits:
            found.append(f"{spec.name} ({', '.join(splits)})")
    return ", ".join(found) or "no GLUE task folders"


def resolve_glue_file(task: str, split: str, data_dir: PathLike | None = None) -> Path:
    """Path of ``<data_dir>/<TASK>/<split file>`` (``data_dir`` may also be the task folder).

    Raises:
        ValueError: unknown task or split.
        FileNotFoundError: the file is missing; the message lists what ``data_dir`` holds.
    """
    spec = get_glue_task(task)
    split = _SPLIT_ALIASES.get(split.lower(), split.lower())
    if split not in spec.splits:
        raise ValueError(f"unknown split {split!r} for {spec.name}; expected one of "
                         f"{tuple(spec.splits)}")
    name = spec.splits[split]
    if data_dir is None:
        data_dir = env_data_dir("glue")
    if data_dir is None:
        return bundled_asset(f"glue/{spec.name}/{name}")
    base = Path(data_dir)
    candidates = [base / spec.name / name, base / name]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"GLUE {spec.name} {split} file not found: looked for "
        + " and ".join(str(c) for c in candidates)
        + f"; {base} holds: {_present(base)}; {spec.name} splits are {dict(spec.splits)}")


def _column_index(col: Column, header: list[str] | None, path: Path) -> int:
    if isinstance(col, int):
        return col
    assert header is not None
    if col not in header:
        raise GlueFormatError(f"{path} line 1: header has no column {col!r} (header: {header})")
    return header.index(col)


def read_glue(task: str, split: str, data_dir: PathLike | None = None) -> list[NluExample]:
    """Read one GLUE split into :class:`NluExample` records (file order; ``guid`` = ``split-i``).

    Rows are split on tabs with no quote handling (``csv.QUOTE_NONE``, as the HF ``glue`` loader
    does): GLUE text contains unbalanced ``"`` that a quoting parser would run across lines.
    Text is kept verbatim (SST-2 sentences end with a space, as in HF ``glue``).

    Args:
        task: ``CoLA`` | ``SST-2`` | ``MRPC`` | ``QQP`` | ``STS-B`` | ``MNLI`` | ``QNLI`` | ``RTE``
            (case and ``-`` / ``_`` ignored).
        split: ``train`` | ``dev`` (MNLI: ``dev_matched`` | ``dev_mismatched``); ``validation*``
            aliases are accepted.
        data_dir: folder holding ``<TASK>/<file>``; ``None`` = the bundled samples.

    Raises:
        FileNotFoundError: see :func:`resolve_glue_file`.
        GlueFormatError: wrong field count, missing header column, unknown label or bad score;
            the message names the file and the 1-based line.
    """
    spec = get_glue_task(task)
    path = resolve_glue_file(task, split, data_dir)
    split = _SPLIT_ALIASES.get(split.lower(), split.lower())
    examples: list[NluExample] = []
    # utf-8-sig drops the BOM that download_glue_data.py writes before MRPC's header.
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None) if spec.header else None
        if spec.header and header is None:
            raise GlueFormatError(f"{path} line 1: empty file, expected a header")
        width = len(header) if header is not None else spec.num_columns
        text_idx = [_column_index(c, header, path) for c in spec.text_columns]
        label_idx = _column_index(spec.label_column, header, path)
        for row in reader:
            if not row:  # blank line (csv.DictReader, used by HF glue, skips these too)
                continue
            where = f"{path} line {reader.line_num}"
            if len(row) != width:
                expected = ", ".join(header) if header else f"{width} fields"
                raise GlueFormatError(f"{where}: expected {width} tab-separated fields "
                                      f"({expected}), got {len(row)}")
            raw = row[label_idx]
            label: int | float
            if spec.is_regression:
                try:
                    label = float(raw)
                except ValueError:
                    raise GlueFormatError(f"{where}: score {raw!r} is not a number") from None
            elif raw in spec.labels:
                label = spec.labels.index(raw)
            else:
                raise GlueFormatError(f"{where}: unknown label {raw!r} for {spec.name} "
                                      f"(expected one of {spec.labels})")
            text_b = row[text_idx[1]] if len(text_idx) > 1 else None
            examples.append(NluExample(row[text_idx[0]], text_b, label, f"{split}-{len(examples)}"))
    return examples


def encode_glue(
    examples: Sequence[NluExample], tokenizer: Any, max_seq_len: int = 128
) -> list[dict[str, Any]]:
    """Tokenize examples for a sequence-classification head.

    Pairs are truncated with ``longest_first`` (tokens are dropped from the longer text first),
    the usual GLUE recipe, so neither side is dropped entirely when one is long (RTE premises).

    Args:
        examples: all single sentences or all pairs.
        tokenizer: a Hugging Face tokenizer (adds the model's special tokens).
        max_seq_len: longest encoded length, special tokens included.

    Returns:
        One dict per example: ``input_ids`` (list of int), ``token_type_ids`` when the tokenizer
        produces them (BERT yes, RoBERTa no), ``labels`` (int class id or float score).
    """
    if not examples:
        return []
    pairs = [ex.text_b is not None for ex in examples]
    if any(pairs) and not all(pairs):
        raise ValueError("encode_glue: mix of single sentences and pairs in one call")
    texts_b = [ex.text_b for ex in examples] if pairs[0] else None
    enc = tokenizer([ex.text_a for ex in examples], texts_b, truncation="longest_first",
                    max_length=max_seq_len)
    features = []
    for i, ex in enumerate(examples):
        feat: dict[str, Any] = {"input_ids": list(enc["input_ids"][i])}
        if "token_type_ids" in enc:
            feat["token_type_ids"] = list(enc["token_type_ids"][i])
        feat["labels"] = ex.label
        features.append(feat)
    return features


def collate_nlu(
    features: Sequence[Mapping[str, Any]], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad encoded examples to the longest in the batch (dynamic padding).

    Args:
        features: dicts from :func:`encode_glue` (``input_ids``, optional ``token_type_ids``,
            ``labels``).
        pad_id: the tokenizer's ``pad_token_id`` (never attended to: the mask is 0 there).
        pad_to_multiple_of: round the width up to a multiple of this (tensor-core shapes).

    Returns:
        ``input_ids``, ``attention_mask`` (1 = real token), ``token_type_ids`` when the features
        have them (padded with 0): int64 ``(B, T)``; ``labels (B,)``: int64 for class ids,
        float32 when any label is a float (STS-B regression, for an MSE loss).
    """
    if not features:
        raise ValueError("collate_nlu: empty batch")
    width = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    has_types = "token_type_ids" in features[0]
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    types = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
        mask[i, :n] = 1
        if has_types:
            types[i, :n] = torch.as_tensor(f["token_type_ids"], dtype=torch.long)
    raw = [f["labels"] for f in features]
    is_float = any(isinstance(v, float) or (torch.is_tensor(v) and v.is_floating_point())
                   for v in raw)
    labels = torch.tensor([float(v) if is_float else int(v) for v in raw],
                          dtype=torch.float32 if is_float else torch.long)
    batch = {"input_ids": ids, "attention_mask": mask}
    if has_types:
        batch["token_type_ids"] = types
    batch["labels"] = labels
    return batch
