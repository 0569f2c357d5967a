"""The E2E benchmark's report, on hand-made cache entries with hand-computed means and stds."""
from __future__ import annotations

from nlg_e2e_small_report import ReportContext, cell, format_report, mean_std


def _run(seed: int, bleu: float, policies=("merged",)) -> dict:
    scores = {"BLEU": bleu, "NIST": 5.0 + seed, "METEOR": 0.30, "ROUGE_L": 0.50, "CIDEr": 1.0}
    return {"method": "m", "seed": seed, "trained_params": 1000, "serving_params": 100,
            "train_seconds": 10.0 * (seed + 1),
            "policies": {p: {"scores": scores, "decode_seconds": 4.0, "empty": 0, "contexts": 630}
                         for p in policies}}


def test_mean_and_sample_std_by_hand() -> None:
    # 0.40, 0.42, 0.47: mean 0.43; deviations -0.03, -0.01, 0.04; sum sq 0.0026; /2 -> 0.0013
    mean, std = mean_std([40.0, 42.0, 47.0])
    assert abs(mean - 43.0) < 1e-12 and abs(std - 13.0 ** 0.5) < 1e-12
    assert mean_std([5.0]) == (5.0, None)
    assert cell([40.0, 42.0, 47.0]) == "43.00 ± 3.61" and cell([5.0]) == "5.00" and cell([]) == "-"


def test_report_rows_percent_scale_and_missing_runs() -> None:
    rows = {"lora": [_run(0, 0.40), _run(1, 0.42), _run(2, 0.47)],
            "adamix_lora": [_run(0, 0.50, ("merged", "fixed"))]}
    ctx = ReportContext("tiny", "3 steps", "CPU", "2026-12-01", "--x",
                        {"lora": "LoRA", "adamix_lora": "AdaMix"})
    text = format_report(rows, ctx, [0, 1, 2], {"lora": ("merged",),
                                                 "adamix_lora": ("merged", "fixed", "random")})
    # BLEU x 100, NIST as scored (5, 6, 7: mean 6, std 1), train seconds 10/20/30: 20 ± 10
    assert ("| LoRA | 3 | 43.00 ± 3.61 | 6.00 ± 1.00 | 30.00 ± 0.00 | 50.00 ± 0.00 | 1.00 ± 0.00"
            " | 1,000 | 100 | 20 ± 10 | 4 ± 0 |") in text
    assert "| AdaMix | fixed | 1 | 50.00 | 5.00 | 30.00 | 50.00 | 1.00 |" in text
    assert "| LoRA | 2 | merged | 47.00 | 7.00 |" in text
    assert "Incomplete: 3 runs or decodes" in text
    assert "adamix_lora seed 0 (random)" in text and "adamix_lora seed 1 (not trained)" in text
