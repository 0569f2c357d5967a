"""Plain English text for pre-training a stand-in decoder, and its packing into LM blocks.

The stand-in GPT-2 must never see E2E text, so that E2E stays an unseen adaptation task:

* ``webnlg``: the ``good`` lexicalisations of WebNLG 2017 (``train.json``; held out: ``dev.json``);
* ``dart``: DART annotations whose ``source`` is not E2E (DART v1.1.1 copies about 4,300 E2E
  references into its dev file; they are dropped, and the count is reported);
* ``glue``: the sentences of the GLUE tasks present (``train.tsv``; held out: ``dev.tsv``);
* ``e2e_refs``: the references (never the MRs) of an E2E ``train.txt`` (held out: ``valid.txt``):
  only for the demo's warm-up, which is scored on the test references;
* ``webnlg_pairs`` / ``dart_pairs``: the same texts, each after its linearised triple set, laid out
  as the fine-tuning encoding lays out a data-to-text example (``context <eos> text <eos>``), to
  show a small model names to copy from its context; E2E's MRs and texts stay unseen.

Texts are de-duplicated in first-seen order, each followed by ``<|endoftext|>``, concatenated and
cut into blocks of ``block_size`` tokens (the last partial block is dropped). A pair document holds
:data:`PAIR_SEPARATOR` between context and text, encoded as the end-of-text id.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .glue import read_glue, resolve_glue_file
from .readers import read_dart, read_e2e, read_webnlg

__all__ = ["CORPUS_SOURCES", "GLUE_TEXT_TASKS", "PAIR_SEPARATOR", "TextCorpus", "collect_texts",
           "pack_blocks", "pair_document"]

PathLike = str | Path
CORPUS_SOURCES = ("webnlg", "dart", "glue", "e2e_refs", "webnlg_pairs", "dart_pairs")
GLUE_TEXT_TASKS = ("CoLA", "SST-2", "MRPC", "RTE", "STS-B")
# the GPT-2 end-of-text token as text; pack_blocks encodes it as the tokenizer's eos id
PAIR_SEPARATOR = "<|endoftext|>"
_DART_FILE = "dart-v1.1.1-full-dev.json"
_SPLITS = {"train": {"webnlg": "train.json", "dart": _DART_FILE, "glue": "train",
                     "e2e_refs": "train.txt", "webnlg_pairs": "train.json",
                     "dart_pairs": _DART_FILE},
           "heldout": {"webnlg": "dev.json", "glue": "dev", "e2e_refs": "valid.txt",
                       "webnlg_pairs": "dev.json"}}


def pair_document(context: str, text: str) -> str:
    """One data-to-text document: ``context``, :data:`PAIR_SEPARATOR`, ``text``."""
    return f"{context} {PAIR_SEPARATOR} {text}"


@dataclass
class TextCorpus:
    """De-duplicated texts with where they came from.

    Attributes:
        texts: the documents, in first-seen order.
        counts: source -> documents taken from it (after de-duplication).
        dropped: reason -> documents left out (E2E annotations in DART, duplicates).
        files: the files read, for the digest.
    """

    texts: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def digest(self) -> str:
        """SHA-1 of the texts (12 hex digits): identifies the corpus a model was trained on."""
        h = hashlib.sha1()
        for text in self.texts:
            h.update(text.encode("utf-8") + b"\0")
        return h.hexdigest()[:12]


def _find(data_dir: Path, sub: str, name: str) -> Path:
    for candidate in (data_dir / sub / name, data_dir / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{sub} file {name} not found under {data_dir} (looked for "
                            f"{data_dir / sub / name} and {data_dir / name})")


def _source_texts(source: str, split: str, data_dir: Path, corpus: TextCorpus) -> list[str]:
    name = _SPLITS[split].get(source)
    if name is None:
        return []
    pairs = source.endswith("_pairs")
    family = source.removesuffix("_pairs")

    def document(record: dict[str, Any]) -> str:
        return pair_document(record["context"], record["completion"]) if pairs else \
            record["completion"]

    if family == "webnlg":
        path = _find(data_dir, "webnlg", name)
        corpus.files.append(path)
        return [document(r) for r in read_webnlg(path)]
    if family == "dart":
        path = _find(data_dir, "dart", name)
        corpus.files.append(path)
        records = read_dart(path)
        # DART copies E2E references and MRs into its dev file: neither may reach the stand-in
        kept = [document(r) for r in records if "e2e" not in str(r["source"]).lower()]
        corpus.dropped["dart_e2e_annotations"] = len(records) - len(kept)
        return kept
    if source == "e2e_refs":
        path = _find(data_dir, "e2e", name)
        corpus.files.append(path)
        return [r["completion"] for r in read_e2e(path)]
    texts: list[str] = []
    glue_dir = data_dir / "glue" if (data_dir / "glue").is_dir() else data_dir
    for task in GLUE_TEXT_TASKS:
        try:
            path = resolve_glue_file(task, name, glue_dir)
        except FileNotFoundError:
            continue  # a GLUE folder need not hold every task
        corpus.files.append(path)
        for ex in read_glue(task, name, glue_dir):
            texts += [t for t in (ex.text_a, ex.text_b) if t]
    if not texts:
        raise FileNotFoundError(f"no GLUE {name}.tsv of {list(GLUE_TEXT_TASKS)} under {glue_dir}")
    return texts


def collect_texts(data_dir: PathLike, sources: Sequence[str], split: str = "train") -> TextCorpus:
    """The de-duplicated documents of ``sources`` for ``split`` (``train`` | ``heldout``).

    Raises:
        ValueError: an unknown source or split.
        FileNotFoundError: a source's file is missing (the message names the paths tried).
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    unknown = [s for s in sources if s not in CORPUS_SOURCES]
    if unknown:
        raise ValueError(f"unknown corpus source(s) {unknown}; known: {list(CORPUS_SOURCES)}")
    corpus, seen = TextCorpus(), set()
    for source in sources:
        taken = 0
        for text in _source_texts(source, split, Path(data_dir), corpus):
            text = " ".join(text.split())
            if not text:
                continue
            if text in seen:
                corpus.dropped["duplicates"] = corpus.dropped.get("duplicates", 0) + 1
                continue
            seen.add(text)
            corpus.texts.append(text)
            taken += 1
        corpus.counts[source] = taken
    return corpus


def pack_blocks(texts: Iterable[str], tokenizer: Any, block_size: int,
                order_seed: int | None = 0, max_blocks: int | None = None) -> torch.Tensor:
    """Token blocks for causal-LM training: (num_blocks, block_size) int64.

    Documents are shuffled with ``order_seed`` (``None``: file order), each is followed by the
    tokenizer's end-of-text id, and the stream is cut into full blocks. A
    :func:`pair_document` becomes ``BPE(context) + [eos] + BPE(" " + text) + [eos]``, the layout
    of :func:`adamix_ds.data.encoding.build_example`.
    """
    texts = list(texts)
    if order_seed is not None:
        perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(order_seed))
        texts = [texts[i] for i in perm.tolist()]
    eos = tokenizer.eos_token_id
    # each document's pieces between separators, tokenised in one batch; piece i > 0 keeps its
    # leading space, as the fine-tuning encoding tokenises " " + completion
    pieces = [text.split(PAIR_SEPARATOR) for text in texts]
    flat = [p.strip() if i == 0 else " " + p.strip() for doc in pieces for i, p in enumerate(doc)]
    encoded = iter(tokenizer(flat, add_special_tokens=False)["input_ids"])
    stream: list[int] = []
    for doc in pieces:
        for _ in doc:
            stream += next(encoded)
            stream.append(eos)
        if max_blocks is not None and len(stream) >= max_blocks * block_size:
            break
    n = len(stream) // block_size
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n == 0:
        raise ValueError(f"the corpus has {len(stream)} tokens, fewer than one block of "
                         f"{block_size}")
    return torch.tensor(stream[: n * block_size], dtype=torch.long).view(n, block_size)
