"""The benchmark scripts' run cache and results file: the hash ignores key order but not values,
saving one run keeps the others and leaves no temporary file, and the results file gets its
header once, when it is created."""
from __future__ import annotations

import json
from pathlib import Path

from run_cache import RESULTS_HEADER, append_results, load_cache, save_run, settings_hash


def test_settings_hash_ignores_key_order_but_not_values() -> None:
    a = settings_hash({"lr": 1e-3, "epochs": 10, "variant": {"experts": 4}})
    assert a == settings_hash({"variant": {"experts": 4}, "epochs": 10, "lr": 1e-3})
    assert a != settings_hash({"lr": 1e-3, "epochs": 10, "variant": {"experts": 2}})
    assert len(a) == 10 and int(a, 16) >= 0


def test_save_run_keeps_the_other_runs_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "runs.json"
    assert load_cache(path) == {"runs": {}}
    save_run(path, "MRPC/adapter/seed0/aa", {"accuracy": 0.8})
    save_run(path, "MRPC/adamix/seed0/bb", {"accuracy": 0.7})
    save_run(path, "MRPC/adamix/seed0/bb", {"accuracy": 0.75})  # replaced, not duplicated
    assert json.loads(path.read_text()) == {"runs": {"MRPC/adapter/seed0/aa": {"accuracy": 0.8},
                                                     "MRPC/adamix/seed0/bb": {"accuracy": 0.75}}}
    assert [p.name for p in path.parent.iterdir()] == ["runs.json"]


def test_append_results_writes_the_header_only_into_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "RESULTS.md"
    append_results(path, "## first table")
    append_results(path, "## second table")
    assert path.read_text() == RESULTS_HEADER + "## first table\n## second table\n"
    assert RESULTS_HEADER.startswith("# Benchmark results")

    existing = tmp_path / "existing.md"
    existing.write_text("# Kept\n")
    append_results(existing, "## table")
    assert existing.read_text() == "# Kept\n## table\n"
