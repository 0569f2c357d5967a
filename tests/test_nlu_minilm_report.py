"""The tables and generated reading of the MiniLM GLUE benchmark: verdicts against hand-computed
means and sample standard deviations, the row format for missing, single-seed and best-epoch
runs, the per-policy read-out, the per-epoch dev curve, and the parsing of table rows (variants)."""
from __future__ import annotations

import argparse

import pytest

from nlu_minilm_report import (
    ReportContext,
    Variant,
    curve_lines,
    fmt_pct,
    format_report,
    parse_variants,
    policy_table,
    reading,
    table_row,
)

ADAMIX, ADAPTER, LORA, FULL = (Variant("adamix"), Variant("adapter"), Variant("lora"),
                               Variant("full"))


def _runs(accuracies: list[float], seconds: float = 10.0) -> list[dict]:
    return [{"metrics": {"accuracy": a, "f1": a}, "seed": i, "train_seconds": seconds,
             "serving_params": 1234, "trained_params": 5678} for i, a in enumerate(accuracies)]


def _args(variants: list[Variant]) -> argparse.Namespace:
    return argparse.Namespace(tasks=["MRPC"], variants=variants, experts=4,
                              consistency="paired", consistency_weight=1.0, epochs=3)


def test_fmt_pct_sample_std():
    # mean 0.75, sample std of (70, 75, 80) = sqrt((25 + 0 + 25) / 2) = 5.
    assert fmt_pct([0.70, 0.75, 0.80]) == "75.00 ± 5.00"
    assert fmt_pct([0.5]) == "50.00 (n=1)"
    assert fmt_pct([]) == "—"


def test_reading_verdicts():
    # adamix mean 72, std 1 (71, 72, 73); adapter mean 75, std 1: -3 pt, beyond the spread.
    # lora mean 72.5, std 2.5 (70, 72.5, 75): +(-0.5), within the spread. full: seed 0 only,
    # so it is not ranked and AdaMix is compared on seed 0: 71 - 80 = -9.
    rows = {("MRPC", ADAMIX): _runs([0.71, 0.72, 0.73], seconds=30.0),
            ("MRPC", ADAPTER): _runs([0.74, 0.75, 0.76], seconds=15.0),
            ("MRPC", LORA): _runs([0.70, 0.725, 0.75]),
            ("MRPC", FULL): _runs([0.80])}
    text = " ".join(reading(rows, _args([FULL, ADAPTER, LORA, ADAMIX])))
    assert ("MRPC: the best row is adapter (1 expert) (75.00); not ranked, fewer seeds: "
            "full fine-tuning (n=1).") in text
    assert "-3.00 pt vs adapter (1 expert) (worse)" in text
    assert "-0.50 pt vs LoRA (Q,V) (within seed spread)" in text
    assert "-9.00 pt vs full fine-tuning (one seed, no spread; on seed 0 only)" in text
    assert "AdaMix (4 experts, merged) 30s vs single adapter 15s per run (2.00x)" in text


def test_reading_pairs_rows_on_shared_seeds():
    # adapter: seeds 0-2 = 70, 90, 80 (mean 80, std 10). The 40-epoch row has seed 0 only (80):
    # equal to the adapter's mean, but +10 on seed 0, the one seed both have. AdaMix has seeds
    # 0 and 2 (82, 86): against the adapter on seeds 0, 2 (70, 80) the differences are +12, +6,
    # mean +9, beyond both spreads there (2.83 and 7.07). Consistency off, seeds 0-2 = 79, 99, 81
    # (mean 86.33, the best of the 3-seed rows), against AdaMix on seeds 0, 2: -3, -5, mean -4,
    # beyond both spreads there (2.83 and 1.41).
    off = Variant("adamix", (("consistency", "off"),))
    forty = Variant("adamix", (("epochs", "40"),))
    rows = {("MRPC", ADAPTER): _runs([0.70, 0.90, 0.80]),
            ("MRPC", forty): _runs([0.80]),
            ("MRPC", ADAMIX): [r for r in _runs([0.82, 0.0, 0.86]) if r["seed"] != 1],
            ("MRPC", off): _runs([0.79, 0.99, 0.81])}
    lines = reading(rows, _args([ADAPTER, ADAMIX, off, forty]))
    assert lines[0] == ("MRPC: the best row is AdaMix (4 experts, merged), consistency off "
                        "(86.33); not ranked, fewer seeds: AdaMix (4 experts, merged) (n=2), "
                        "AdaMix (4 experts, merged), 40 epochs (n=1).")
    assert lines[1] == ("MRPC: AdaMix (4 experts, merged): accuracy +9.00 pt vs adapter "
                        "(1 expert) (better; on seeds 0,2 only).")
    assert lines[2] == ("MRPC: AdaMix (4 experts, merged), consistency off: accuracy +6.33 pt vs "
                        "adapter (1 expert) (within seed spread), -4.00 pt vs AdaMix (4 experts, "
                        "merged) (worse; on seeds 0,2 only).")
    assert lines[3] == ("MRPC: AdaMix (4 experts, merged), 40 epochs: accuracy +10.00 pt vs "
                        "adapter (1 expert) (one seed, no spread; on seed 0 only), -2.00 pt vs "
                        "AdaMix (4 experts, merged) (one seed, no spread; on seed 0 only).")


def test_reading_adamix_best_and_no_adamix():
    rows = {("MRPC", ADAMIX): _runs([0.80, 0.82, 0.84]),
            ("MRPC", ADAPTER): _runs([0.70, 0.71, 0.72])}
    text = " ".join(reading(rows, _args([ADAPTER, ADAMIX])))
    assert "MRPC: the best row is AdaMix (4 experts, merged) (82.00)." in text
    assert "+11.00 pt vs adapter (1 expert) (better)" in text
    assert reading({("MRPC", ADAPTER): _runs([0.7])}, _args([ADAPTER])) == []


def test_reading_compares_an_ablation_with_the_default_adamix_row():
    # consistency off 80 +- 1 against AdaMix 78 +- 1: +2 pt, beyond the spread; against the
    # adapter (77 +- 1): +3 pt. Ties for best are named together.
    off = Variant("adamix", (("consistency", "off"),))
    rows = {("MRPC", ADAPTER): _runs([0.76, 0.77, 0.78]),
            ("MRPC", ADAMIX): _runs([0.77, 0.78, 0.79]),
            ("MRPC", off): _runs([0.79, 0.80, 0.81])}
    lines = reading(rows, _args([ADAPTER, ADAMIX, off]))
    assert lines[0] == "MRPC: the best row is AdaMix (4 experts, merged), consistency off (80.00)."
    assert lines[1] == ("MRPC: AdaMix (4 experts, merged): accuracy +1.00 pt vs adapter "
                        "(1 expert) (within seed spread).")
    assert lines[2] == ("MRPC: AdaMix (4 experts, merged), consistency off: accuracy +3.00 pt vs "
                        "adapter (1 expert) (better), +2.00 pt vs AdaMix (4 experts, merged) "
                        "(better).")
    rows[("MRPC", ADAMIX)] = _runs([0.79, 0.80, 0.81])
    assert reading(rows, _args([ADAPTER, ADAMIX, off]))[0] == (
        "MRPC: the best row is AdaMix (4 experts, merged) = AdaMix (4 experts, merged), "
        "consistency off (80.00).")


def test_table_row():
    assert table_row("RTE", "head only", []) == (
        "| RTE | head only | — | — | not run | — | — | — | 0 | — |")
    row = table_row("MRPC", "LoRA (Q,V)", _runs([0.70, 0.80]))
    # two seeds: F1 shown for MRPC, seeds flagged as fewer than three; mean train time 10 s;
    # no selection: the last epoch's accuracy is the accuracy, no best epoch.
    assert row == ("| MRPC | LoRA (Q,V) | 1,234 | 5,678 | 75.00 ± 7.07 | 75.00 ± 7.07 | "
                   "75.00 ± 7.07 | — | n=2 (0,1) | 10 |")
    runs = _runs([0.80, 0.90, 0.85])
    for run, last, best in zip(runs, [0.70, 0.80, 0.90], [4, 7, 2], strict=True):
        run.update(last_metrics={"accuracy": last}, best_epoch=best)
    # best-epoch accuracy 85 ± 5; last-epoch 80 ± 10 (sample std of 70, 80, 90)
    assert table_row("SST-2", "x", runs) == (
        "| SST-2 | x | 1,234 | 5,678 | 85.00 ± 5.00 | — | 80.00 ± 10.00 | 4,7,2 | 0,1,2 | 10 |")


def test_policy_table_means_and_merged_minus_single():
    runs = _runs([0.8, 0.7])
    runs[0].update(policies={"merged": {"accuracy": 0.80}, "random": {"accuracy": 0.70},
                             "ensemble": {"accuracy": 0.75}, "fixed": {"accuracy": 0.60}},
                   experts=[{"accuracy": 0.60}, {"accuracy": 0.80}])
    runs[1].update(policies={"merged": {"accuracy": 0.70}, "random": {"accuracy": 0.70},
                             "ensemble": {"accuracy": 0.65}, "fixed": {"accuracy": 0.70}},
                   experts=[{"accuracy": 0.70}, {"accuracy": 0.50}])
    two = Variant("adamix", (("experts", 2),))
    lines = policy_table({("MRPC", two): runs, ("MRPC", ADAPTER): _runs([0.7])},
                         _args([ADAPTER, two]))
    # merged 75 ± 7.07; random 70 ± 0; ensemble 70 ± 7.07; expert 0: 65 ± 7.07; expert 1:
    # 65 ± 21.21; merged - mean(single): seed 0: 80 - 70 = +10, seed 1: 70 - 60 = +10 -> 10 ± 0
    assert lines[-1] == ("| MRPC | AdaMix (2 experts, merged) | 75.00 ± 7.07 | 70.00 ± 0.00 | "
                         "70.00 ± 7.07 | 65.00 ± 7.07 | 65.00 ± 21.21 | +10.00 ± 0.00 |")
    assert "| expert 0 | expert 1 | merged − single |" in lines[3]
    assert policy_table({("MRPC", ADAPTER): _runs([0.7])}, _args([ADAPTER])) == []


def test_variants_parse_and_label():
    variants = parse_variants("adapter; adamix ;adamix:consistency=off;"
                              "adamix:experts=1;adamix:epochs=40,consistency_weight=2")
    args = _args(variants)
    assert [v.label(args) for v in variants] == [
        "adapter (1 expert)", "AdaMix (4 experts, merged)",
        "AdaMix (4 experts, merged), consistency off",
        "adapter + paired consistency (AdaMix, 1 expert)",
        "AdaMix (4 experts, merged), consistency weight 2, 40 epochs"]
    assert variants[4].settings(args).epochs == 40 and args.epochs == 3
    for bad, message in [("adamix:expert=2", "setting=value"), ("bert", "not one of"),
                         ("adamix:experts=two", "experts='two'")]:
        with pytest.raises(ValueError, match=message):
            parse_variants(bad)


def _report_args(tasks: list[str], variants: list[Variant]) -> argparse.Namespace:
    """``_args`` plus the settings the report's header names."""
    args = _args(variants)
    vars(args).update(
        tasks=tasks, dims=(384, 6), max_train=None, max_dev=None, freeze_pooler=True,
        select_best=True, sst2_train=8000, batch_size=32, max_seq_len=128, weight_decay=0.01,
        warmup=0.06, max_grad_norm=1.0, lr={"adapter": 1e-3, "adamix": 1e-3, "lora": 1e-3},
        bottleneck=16, lora_rank=8, seeds=[0])
    return args


@pytest.mark.parametrize("tasks, variants, sst2, lora", [
    (["MRPC"], [ADAPTER, ADAMIX], False, False),
    (["MRPC", "SST-2"], [ADAPTER, LORA], True, True),
])
def test_header_describes_only_the_tasks_and_methods_in_the_table(
        tasks: list[str], variants: list[Variant], sst2: bool, lora: bool) -> None:
    ctx = ReportContext(model="`m` 1.0", lora_params=73_728, adapter_params=76_128,
                        torch_version="2.x", this_device="CPU", command="--report_only")
    text = format_report({}, _report_args(tasks, variants), ctx)
    assert ("SST-2 train = a fixed seeded 8,000-example subset" in text) == sst2
    assert ("LoRA r=8, alpha 16" in text) == lora
    assert "3 epoch(s) unless a row says otherwise" in text and ". . " not in text


def test_curve_lines_mean_over_seeds_and_ten_points_of_a_long_schedule() -> None:
    def history(accuracies: list[float]) -> list[dict]:
        return [{"accuracy": a} for a in accuracies]

    short = _runs([0.8, 0.8])
    short[0]["dev_history"] = history([0.60, 0.70, 0.80])
    short[1]["dev_history"] = history([0.70, 0.70, 0.90])
    long = _runs([0.9])
    long[0]["dev_history"] = history([e / 100 for e in range(1, 41)])   # epoch e scores e %
    forty = Variant("adamix", (("epochs", 40),))
    rows = {("MRPC", ADAPTER): short, ("MRPC", forty): long, ("MRPC", LORA): _runs([0.7])}
    lines = curve_lines(rows, _args([ADAPTER, LORA, forty]))
    # 3 epochs: every epoch, (60+70)/2, (70+70)/2, (80+90)/2; 40 epochs: every 4th;
    # LoRA has no per-epoch scores and is left out
    assert lines[3:] == [
        "- MRPC, adapter (1 expert): 1: 65.0, 2: 70.0, 3: 85.0",
        "- MRPC, AdaMix (4 experts, merged), 40 epochs: "
        + ", ".join(f"{e}: {e:.1f}" for e in range(4, 41, 4))]
    assert curve_lines({("MRPC", LORA): _runs([0.7])}, _args([LORA])) == []
