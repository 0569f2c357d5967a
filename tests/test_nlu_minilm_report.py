"""The generated reading of the MiniLM GLUE table: its verdicts against hand-computed means and
sample standard deviations, and the row format for missing and single-seed methods."""
from __future__ import annotations

import argparse

from nlu_minilm_report import fmt_pct, reading, table_row


def _runs(accuracies: list[float], seconds: float = 10.0) -> list[dict]:
    return [{"metrics": {"accuracy": a, "f1": a}, "seed": i, "train_seconds": seconds,
             "serving_params": 1234, "trained_params": 5678} for i, a in enumerate(accuracies)]


def _args(methods: list[str]) -> argparse.Namespace:
    return argparse.Namespace(tasks=["MRPC"], methods=methods)


def test_fmt_pct_sample_std():
    # mean 0.75, sample std of (70, 75, 80) = sqrt((25 + 0 + 25) / 2) = 5.
    assert fmt_pct([0.70, 0.75, 0.80]) == "75.00 ± 5.00"
    assert fmt_pct([0.5]) == "50.00 (n=1)"
    assert fmt_pct([]) == "—"


def test_reading_verdicts():
    # adamix mean 72, std 1 (71, 72, 73); adapter mean 75, std 1: -3 pt, beyond the spread.
    # lora mean 72.5, std 2.5 (70, 72.5, 75): +(-0.5), within the spread. full: one seed.
    rows = {("MRPC", "adamix"): _runs([0.71, 0.72, 0.73], seconds=30.0),
            ("MRPC", "adapter"): _runs([0.74, 0.75, 0.76], seconds=15.0),
            ("MRPC", "lora"): _runs([0.70, 0.725, 0.75]),
            ("MRPC", "full"): _runs([0.80])}
    text = " ".join(reading(rows, _args(["full", "adapter", "lora", "adamix"])))
    assert "AdaMix does not win: full fine-tuning is best (80.00 vs 72.00)" in text
    assert "-3.00 pt vs adapter (1 expert) (worse)" in text
    assert "-0.50 pt vs LoRA (Q,V) (within seed spread)" in text
    assert "-8.00 pt vs full fine-tuning (one seed, no spread)" in text
    assert "AdaMix 30s vs single adapter 15s per run (2.00x" in text


def test_reading_adamix_best_and_no_adamix():
    rows = {("MRPC", "adamix"): _runs([0.80, 0.82, 0.84]),
            ("MRPC", "adapter"): _runs([0.70, 0.71, 0.72])}
    text = " ".join(reading(rows, _args(["adapter", "adamix"])))
    assert "AdaMix is the best row (82.00)" in text
    assert "+11.00 pt vs adapter (1 expert) (better)" in text
    assert reading({("MRPC", "adapter"): _runs([0.7])}, _args(["adapter"])) == []


def test_table_row():
    assert table_row("RTE", "head", []) == "| RTE | head only | — | — | not run | — | 0 | — |"
    row = table_row("MRPC", "lora", _runs([0.70, 0.80]))
    # two seeds: F1 shown for MRPC, seeds flagged as fewer than three; mean train time 10 s.
    assert row == ("| MRPC | LoRA (Q,V) | 1,234 | 5,678 | 75.00 ± 7.07 | 75.00 ± 7.07 | "
                   "n=2 (0,1) | 10 |")
