"""NLG tasks of the AdaMix GPT-2 experiments (E2E, WebNLG, DART) as ``datasets.Dataset`` objects.

Split files per task, inside ``data_dir`` (a folder with one sub-folder per task, or laid out
like the reference code's ``examples/NLG/data/...``; ``data_dir/<task>/`` is also looked in):

| task   | train                           | valid (alias dev)    | test                |
|--------|---------------------------------|----------------------|---------------------|
| e2e    | ``train.txt``                   | ``valid.txt``        | ``test.txt``        |
| webnlg | ``train.json``                  | ``dev.json``         | ``test.json``       |
| dart   | ``dart-v1.1.1-full-train.json`` | ``...-full-dev.json`` | ``...-full-test.json`` |

Without ``data_dir``, E2E reads the bundled real sample ``assets/e2e_sample`` (400 / 44 / 43
lines); WebNLG and DART need a ``data_dir``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .encoding import build_example, needs_truncation, tokenize_pairs
from .paths import DATA_ENV, bundled_asset, env_data_dir
from .readers import Record, read_dart, read_e2e, read_webnlg

__all__ = [
    "TASKS",
    "SPLIT_FILES",
    "DEFAULT_TOKENIZER",
    "resolve_split_file",
    "load_nlg_records",
    "load_tokenizer",
    "load_nlg_dataset",
]

logger = logging.getLogger(__name__)

TASKS = ("e2e", "webnlg", "dart")
SPLIT_FILES: dict[str, dict[str, str]] = {
    "e2e": {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"},
    "webnlg": {"train": "train.json", "valid": "dev.json", "test": "test.json"},
    "dart": {"train": "dart-v1.1.1-full-train.json", "valid": "dart-v1.1.1-full-dev.json",
             "test": "dart-v1.1.1-full-test.json"},
}
_SPLIT_ALIASES = {"dev": "valid", "validation": "valid"}
_READERS: dict[str, Callable[..., list[Record]]] = {
    "e2e": read_e2e, "webnlg": read_webnlg, "dart": read_dart,
}
_BUNDLED_DATA = {"e2e": "e2e_sample"}
DEFAULT_TOKENIZER = "gpt2_tokenizer"  # under assets/

PathLike = str | Path


def _canonical(task: str, split: str) -> tuple[str, str]:
    """Validated (task, split) with split aliases resolved."""
    task = task.lower()
    if task not in SPLIT_FILES:
        raise ValueError(f"unknown NLG task {task!r}; expected one of {TASKS}")
    split = _SPLIT_ALIASES.get(split.lower(), split.lower())
    if split not in SPLIT_FILES[task]:
        raise ValueError(f"unknown split {split!r} for {task}; expected one of "
                         f"{tuple(SPLIT_FILES[task])} (or 'dev' / 'validation')")
    return task, split


def resolve_split_file(task: str, split: str, data_dir: PathLike | None = None) -> Path:
    """Path of a task's split file (table in the module docstring).

    Raises:
        FileNotFoundError: the file is in neither ``data_dir`` nor ``data_dir/<task>``; or no
            ``data_dir`` was given for a task without a bundled sample.
    """
    task, split = _canonical(task, split)
    name = SPLIT_FILES[task][split]
    if data_dir is None:
        data_dir = env_data_dir(task)
    if data_dir is None:
        if task not in _BUNDLED_DATA:
            raise FileNotFoundError(
                f"no bundled {task} data: pass data_dir (a folder holding {name}) or set "
                f"${DATA_ENV} (a folder holding {task}/{name})"
            )
        return bundled_asset(f"{_BUNDLED_DATA[task]}/{name}")
    base = Path(data_dir)
    candidates = [base / name, base / task / name]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{task} {split} file not found: looked for "
                            + " and ".join(str(c) for c in candidates))


def load_nlg_records(
    task: str, split: str, data_dir: PathLike | None = None, **reader_kwargs: Any
) -> list[Record]:
    """Text records of one split (``read_e2e`` / ``read_webnlg`` / ``read_dart``).

    ``reader_kwargs`` go to the reader (WebNLG: ``categories``; WebNLG / DART:
    ``replace_underscores``). For evaluation pass the result to ``group_references``.
    """
    task, split = _canonical(task, split)
    return _READERS[task](resolve_split_file(task, split, data_dir), **reader_kwargs)


def tokenizer_source(tokenizer: str | None, backbone: str) -> str | None:
    """Where a run's tokenizer comes from: ``tokenizer`` if set, else the backbone's local
    directory when it holds tokenizer files, else ``None`` (the bundled GPT-2 BPE)."""
    if tokenizer:
        return tokenizer
    folder = Path(backbone)
    if (folder / "vocab.json").is_file() or (folder / "tokenizer.json").is_file():
        return str(folder)
    return None


def load_tokenizer(name_or_path: PathLike | None = None) -> Any:
    """The run's tokenizer: the backbone's own (``AutoTokenizer``: GPT-2 BPE, Llama's, ...) or,
    with no source, the bundled GPT-2 BPE.

    Args:
        name_or_path: hub id (``"gpt2"``; needs a cache when offline) or a local folder;
            ``None`` = the bundled ``assets/gpt2_tokenizer`` (works offline).
    """
    # deferred: the readers work without transformers
    from transformers import AutoTokenizer, GPT2TokenizerFast

    source = Path(bundled_asset(DEFAULT_TOKENIZER) if name_or_path is None else name_or_path)
    if ((source / "vocab.json").is_file() and (source / "merges.txt").is_file()
            and not (source / "tokenizer.json").is_file()):
        # bare GPT-2 BPE files (the bundled copy, OpenAI's release) name no tokenizer class
        return GPT2TokenizerFast.from_pretrained(str(source))
    return AutoTokenizer.from_pretrained(str(source))


def load_nlg_dataset(
    task: str,
    split: str,
    data_dir: PathLike | None = None,
    tokenizer: Any = None,
    max_seq_len: int = 512,
    *,
    max_examples: int | None = None,
    **reader_kwargs: Any,
) -> Any:
    """Encoded split as a ``datasets.Dataset`` built in memory from local files.

    Args:
        task: ``e2e`` | ``webnlg`` | ``dart``.
        split: ``train`` | ``valid`` (``dev``) | ``test``.
        data_dir: folder with the split files (module docstring); ``None``: bundled sample (E2E).
        tokenizer: GPT-2 tokenizer; ``None``: :func:`load_tokenizer` (bundled files).
        max_seq_len: longest sequence (512 in the paper's GPT-2 runs); truncation rules in
            ``adamix_ds.data.encoding``.
        max_examples: keep only the first N records (smoke runs).
        reader_kwargs: passed to the reader (see :func:`load_nlg_records`).

    Returns:
        ``Dataset`` with one row per record, in file order, and columns ``input_ids`` (list[int],
        length ``T_i <= max_seq_len``), ``labels`` (same length, -100 on the prompt) and
        ``context_len`` (int). Batch it with ``collate_nlg``.
    """
    from datasets import Dataset  # deferred: only dataset building needs it

    records = load_nlg_records(task, split, data_dir, **reader_kwargs)
    if max_examples is not None:
        records = records[:max_examples]
    tok = load_tokenizer() if tokenizer is None else tokenizer
    ctx_ids, comp_ids = tokenize_pairs(records, tok)
    n_cut = sum(needs_truncation(c, p, max_seq_len) for c, p in zip(ctx_ids, comp_ids, strict=True))
    if n_cut:
        logger.warning("%s/%s: %d of %d examples exceed max_seq_len=%d and were truncated",
                       task, split, n_cut, len(records), max_seq_len)
    examples = [
        build_example(c, p, tok.eos_token_id, max_seq_len)
        for c, p in zip(ctx_ids, comp_ids, strict=True)
    ]
    columns = {key: [ex[key] for ex in examples] for key in ("input_ids", "labels", "context_len")}
    return Dataset.from_dict(columns)
