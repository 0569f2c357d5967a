"""The resumable run cache shared by the benchmark scripts: one JSON file of finished runs.

Each run is stored under a key that ends in the hash of every setting that decides its result, so
a changed setting never reuses an old number, and each entry is written atomically as soon as it
exists, so an interrupted benchmark resumes where it stopped. Also here: the one way a benchmark
appends its table to the results file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def settings_hash(settings: dict[str, Any]) -> str:
    """10 hex digits of the SHA-1 of ``settings`` as sorted JSON."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def load_cache(path: Path) -> dict[str, Any]:
    """The cache at ``path``; ``{"runs": {}}`` if there is none yet."""
    return json.loads(path.read_text()) if path.exists() else {"runs": {}}


def save_run(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Add or replace one run atomically (the file is re-read first: nothing else is lost)."""
    cache = load_cache(path)
    cache["runs"][key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


RESULTS_HEADER = "# Benchmark results\n\nEvery figure: device, date, command.\n\n"


def append_results(path: Path, text: str) -> None:
    """Append ``text`` to the results file at ``path``, starting a new file with its header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "" if path.exists() else RESULTS_HEADER
    with open(path, "a") as handle:
        handle.write(header + text + "\n")
