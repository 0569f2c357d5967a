"""Readers for the GPT-2 NLG benchmarks of AdaMix / LoRA: E2E, WebNLG 2017, DART.

Each reader returns a list of records ``{"context": str, "completion": str, ...}``, one per
(input, reference) pair, i.e. the rows the reference code writes in its ``*.jsonl`` files with
``src/format_converting_{e2e,webnlg,dart}.py``. The text is kept exactly as that code produces it:

* E2E: ``MR||reference`` per line; the line is stripped (which drops the trailing space every
  reference line carries), context = the MR as is, completion = the reference.
* WebNLG: triples linearised as ``subject : property : object`` joined by `` | `` with the strings
  as they are in ``modifiedtripleset`` (underscores kept, e.g. ``Aarhus_Airport``; the reference
  converter does not replace them, ``replace_underscores=True`` does); only lexicalisations with
  ``comment == "good"`` are kept (the converter drops ``toFix`` ones).
* DART: the same linearisation with the relation lower-cased (as the DART converter does);
  one record per annotation.

Metadata fields (``category``, ``seen``, ``source``, ``entry``) ride along; the encoder only reads
``context`` and ``completion``.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "Record",
    "SEEN_WEBNLG_CATEGORIES",
    "linearise_triples",
    "read_e2e",
    "read_webnlg",
    "read_dart",
    "group_references",
]

Record = dict[str, Any]
PathLike = str | Path

# WebNLG 2017: the 10 DBpedia categories of train/dev ("seen"); the test set adds 5 unseen ones
# (Artist, Athlete, CelestialBody, MeanOfTransportation, Politician). Same list as the reference
# converter's `seen`.
SEEN_WEBNLG_CATEGORIES = frozenset({
    "Airport", "Astronaut", "Building", "City", "ComicsCharacter",
    "Food", "Monument", "SportsTeam", "University", "WrittenWork",
})


def linearise_triples(
    triples: Iterable[Sequence[str]],
    *,
    lowercase_relation: bool = False,
    replace_underscores: bool = False,
) -> str:
    """``[(s, r, o), ...]`` -> ``"s : r : o | s2 : r2 : o2"`` (the reference code's format).

    Args:
        triples: (subject, relation, object) string triples, in file order.
        lowercase_relation: lower-case the relation (the DART converter does, WebNLG's does not).
        replace_underscores: replace ``_`` by a space in all three strings (off in the reference
            code; DBpedia ids like ``Abilene,_Texas`` otherwise keep their underscores).
    """
    parts = []
    for subj, rel, obj in triples:
        if lowercase_relation:
            rel = rel.lower()
        if replace_underscores:
            subj, rel, obj = (s.replace("_", " ") for s in (subj, rel, obj))
        parts.append(f"{subj} : {rel} : {obj}")
    return " | ".join(parts)


def _check_file(path: PathLike, what: str) -> Path:
    """Path of an existing file, or FileNotFoundError naming it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {p}")
    return p


def _load_json(path: PathLike, what: str) -> Any:
    """Parse a JSON file; errors name the file (and line / column for syntax errors)."""
    p = _check_file(path, what)
    try:
        with p.open("r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{p}: invalid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{p}: not UTF-8 ({err})") from err


def read_e2e(path: PathLike) -> list[Record]:
    """Read an E2E file in the reference code's format, one ``MR||reference`` per line.

    Blank lines are skipped (a trailing newline at the end of the file is normal). Context and
    completion are taken after stripping the line, exactly as ``format_converting_e2e.py``.

    Returns:
        One record ``{"context": MR, "completion": reference}`` per line, in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path:LINE`` (1-based) of a line without exactly one ``||`` or with an empty
            MR or reference.
    """
    p = _check_file(path, "E2E")
    records: list[Record] = []
    with p.open("r", encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            n_sep = line.count("||")
            if n_sep != 1:
                raise ValueError(
                    f"{p}:{lineno}: expected 'MR||reference' with exactly one '||', "
                    f"found {n_sep}: {line[:80]!r}"
                )
            context, completion = line.split("||")
            if not context.strip() or not completion.strip():
                side = "MR" if not context.strip() else "reference"
                raise ValueError(f"{p}:{lineno}: empty {side} in {line[:80]!r}")
            records.append({"context": context, "completion": completion})
    return records


def _webnlg_entry(entry: Any, index: int, p: Path) -> dict[str, Any]:
    """The inner dict of one ``entries`` item (``{"<id>": {...}}``), validated."""
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ValueError(f"{p}: entries[{index}]: expected a one-key object {{id: entry}}")
    (body,) = entry.values()
    missing = [k for k in ("modifiedtripleset", "lexicalisations", "category")
               if not isinstance(body, dict) or k not in body]
    if missing:
        raise ValueError(f"{p}: entries[{index}]: missing field(s) {missing}")
    return body


def read_webnlg(
    path: PathLike,
    categories: Iterable[str] | None = None,
    *,
    replace_underscores: bool = False,
) -> list[Record]:
    """Read a WebNLG 2017 JSON file (``{"entries": [{"1": {...}}, {"2": {...}}, ...]}``).

    Args:
        path: ``train.json`` / ``dev.json`` / ``test.json`` in the reference code's format.
        categories: keep only entries of these DBpedia categories (``None``: all).
        replace_underscores: see :func:`linearise_triples` (off = the reference code).

    Returns:
        One record per ``good`` lexicalisation: ``{"context", "completion", "category",
        "seen": category in SEEN_WEBNLG_CATEGORIES, "entry": 0-based index in entries}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: invalid JSON or an entry of the wrong shape (message names file and index).
    """
    p = Path(path)
    data = _load_json(p, "WebNLG")
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ValueError(f"{p}: expected a JSON object with an 'entries' list")
    keep = None if categories is None else set(categories)
    records: list[Record] = []
    for index, entry in enumerate(data["entries"]):
        body = _webnlg_entry(entry, index, p)
        category = body["category"]
        if keep is not None and category not in keep:
            continue
        try:
            triples = [
                (t["subject"], t["property"], t["object"]) for t in body["modifiedtripleset"]
            ]
            lexs = [(lex["comment"], lex["lex"]) for lex in body["lexicalisations"]]
        except (KeyError, TypeError) as err:
            raise ValueError(f"{p}: entries[{index}]: malformed triple or lexicalisation "
                             f"({type(err).__name__}: {err})") from err
        context = linearise_triples(triples, replace_underscores=replace_underscores)
        for comment, text in lexs:
            if comment != "good":
                continue
            records.append({"context": context, "completion": text, "category": category,
                            "seen": category in SEEN_WEBNLG_CATEGORIES, "entry": index})
    return records


def read_dart(path: PathLike, *, replace_underscores: bool = False) -> list[Record]:
    """Read a DART JSON file (a list of ``{tripleset, annotations[{source, text}], ...}``).

    Args:
        path: e.g. ``dart-v1.1.1-full-dev.json``.
        replace_underscores: see :func:`linearise_triples` (off = the reference code).

    Returns:
        One record per annotation: ``{"context", "completion", "source", "entry"}``; relations are
        lower-cased in the context as in the reference converter.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: invalid JSON or an entry of the wrong shape (message names file and index).
    """
    p = Path(path)
    data = _load_json(p, "DART")
    if not isinstance(data, list):
        raise ValueError(f"{p}: expected a JSON list of entries")
    records: list[Record] = []
    for index, entry in enumerate(data):
        try:
            triples = entry["tripleset"]
            annotations = [(a["source"], a["text"]) for a in entry["annotations"]]
        except (KeyError, TypeError) as err:
            raise ValueError(f"{p}: entry {index}: missing or malformed tripleset/annotations "
                             f"({type(err).__name__}: {err})") from err
        if not all(isinstance(t, list) and len(t) == 3 for t in triples):
            raise ValueError(
                f"{p}: entry {index}: every triple must be [subject, relation, object]"
            )
        context = linearise_triples(triples, lowercase_relation=True,
                                    replace_underscores=replace_underscores)
        for source, text in annotations:
            records.append({"context": context, "completion": text, "source": source,
                            "entry": index})
    return records


def group_references(records: Iterable[Record]) -> list[Record]:
    """Group records by context for multi-reference evaluation.

    Returns:
        One item per unique context, in first-seen order: ``{"context": str, "references":
        [completion, ...] (file order)}`` plus every other field whose value is the same for all
        records of that context (e.g. WebNLG ``category`` / ``seen``; DART ``source`` only when
        all references share it).
    """
    groups: dict[str, Record] = {}
    for rec in records:
        context = rec["context"]
        meta = {k: v for k, v in rec.items() if k not in ("context", "completion")}
        group = groups.get(context)
        if group is None:
            groups[context] = {"context": context, "references": [rec["completion"]], **meta}
            continue
        group["references"].append(rec["completion"])
        for key in [k for k in group if k not in ("context", "references")]:
            if key not in meta or meta[key] != group[key]:
                del group[key]  # differs between references: not a property of the context
    return list(groups.values())
