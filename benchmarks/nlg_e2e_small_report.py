"""Tables of ``nlg_e2e_small.py`` from its cached runs (pure: no torch, no model).

A run entry (one method, one seed) holds its training figures and, per inference policy, the
official E2E scores of the decoded test set::

    {"method": "adamix_lora", "seed": 0, "trained_params": int, "serving_params": int,
     "train_seconds": float, "steps": int, "examples": int,
     "policies": {"merged": {"scores": {"BLEU": 0.41, ...}, "decode_seconds": float,
                             "empty": int, "contexts": int}, ...}}

BLEU, METEOR and ROUGE_L are shown x 100 (the paper's scale); NIST and CIDEr as scored.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
PERCENT = {"BLEU", "METEOR", "ROUGE_L"}
POLICIES = ("merged", "fixed", "random", "ensemble")
Rows = dict[str, list[dict[str, Any]]]  # method -> cached runs, seed order


@dataclass
class ReportContext:
    backbone: str          # what the stand-in is, with its held-out perplexity
    budget: str            # the equal training budget, in words
    device: str
    date: str
    command: str
    labels: dict[str, str]  # method -> row label


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for a single value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def shown(metric: str, value: float) -> float:
    return 100.0 * value if metric in PERCENT else value


def cell(values: Sequence[float], digits: int = 2) -> str:
    """``mean ± std`` (sample std), ``mean`` alone for one value, ``-`` for none."""
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def metric_values(runs: Sequence[dict[str, Any]], policy: str, metric: str) -> list[float]:
    out = []
    for run in runs:
        scores = run.get("policies", {}).get(policy, {}).get("scores", {})
        if metric in scores:
            out.append(shown(metric, scores[metric]))
    return out


def main_table(rows: Rows, ctx: ReportContext) -> list[str]:
    lines = ["| row | seeds | " + " | ".join(METRICS) + " | trained params | serving params "
             "| train s | decode s |", "|---" * (len(METRICS) + 6) + "|"]
    for method, runs in rows.items():
        done = [r for r in runs if "merged" in r.get("policies", {})]
        if not runs:
            continue
        scores = [cell(metric_values(done, "merged", m)) for m in METRICS]
        train = cell([r["train_seconds"] for r in runs], 0)
        decode = cell([r["policies"]["merged"]["decode_seconds"] for r in done], 0)
        lines.append(f"| {ctx.labels.get(method, method)} | {len(done)} | " + " | ".join(scores)
                     + f" | {runs[0]['trained_params']:,} | {runs[0]['serving_params']:,} | "
                     f"{train} | {decode} |")
    return lines


def seed_table(rows: Rows, ctx: ReportContext) -> list[str]:
    lines = ["| row | seed | policy | " + " | ".join(METRICS) + " | empty outputs | decode s |",
             "|---" * (len(METRICS) + 5) + "|"]
    for method, runs in rows.items():
        for run in runs:
            for policy in POLICIES:
                entry = run.get("policies", {}).get(policy)
                if entry is None:
                    continue
                values = [f"{shown(m, entry['scores'][m]):.2f}" if m in entry["scores"] else "-"
                          for m in METRICS]
                lines.append(f"| {ctx.labels.get(method, method)} | {run['seed']} | {policy} | "
                             + " | ".join(values) + f" | {entry['empty']} of {entry['contexts']}"
                             f" | {entry['decode_seconds']:.0f} |")
    return lines


def policy_table(rows: Rows, ctx: ReportContext) -> list[str]:
    lines = ["| row | policy | seeds | " + " | ".join(METRICS) + " |",
             "|---" * (len(METRICS) + 3) + "|"]
    for method, runs in rows.items():
        if not any(len(r.get("policies", {})) > 1 for r in runs):
            continue
        for policy in POLICIES:
            n = sum(policy in r.get("policies", {}) for r in runs)
            if n:
                lines.append(f"| {ctx.labels.get(method, method)} | {policy} | {n} | "
                             + " | ".join(cell(metric_values(runs, policy, m)) for m in METRICS)
                             + " |")
    return lines


def missing_runs(rows: Rows, seeds: Sequence[int], policies: dict[str, Sequence[str]]) -> list[str]:
    """``method seed N (policy)`` for every run or decode not yet in the cache."""
    out = []
    for method, runs in rows.items():
        by_seed = {r["seed"]: r for r in runs}
        for seed in seeds:
            run = by_seed.get(seed)
            if run is None:
                out.append(f"{method} seed {seed} (not trained)")
                continue
            out += [f"{method} seed {seed} ({p})" for p in policies[method]
                    if p not in run.get("policies", {})]
    return out


def format_report(rows: Rows, ctx: ReportContext, seeds: Sequence[int],
                  policies: dict[str, Sequence[str]]) -> str:
    """The RESULTS.md section: settings, the main table (merged policy), every seed, policies."""
    missing = missing_runs(rows, seeds, policies)
    head = [
        f"## E2E on a stand-in pretrained GPT-2 ({ctx.date})",
        "",
        f"- Backbone: {ctx.backbone}",
        f"- Budget: {ctx.budget}",
        f"- Device: {ctx.device}",
        f"- Command: `python benchmarks/nlg_e2e_small.py {ctx.command}`",
        "- Scores: the whole E2E test set (630 MRs), the paper's beam search, the project's "
        "official-equivalent E2E scorer; mean ± sample std over seeds; BLEU, METEOR, ROUGE_L "
        "x 100.",
        "",
    ]
    if missing:
        head += [f"**Incomplete: {len(missing)} runs or decodes are not in the cache yet** "
                 f"({'; '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}).", ""]
    body = (["### Served model (merged experts)", ""] + main_table(rows, ctx)
            + ["", "### AdaMix inference policies", ""] + policy_table(rows, ctx)
            + ["", "### Every run", ""] + seed_table(rows, ctx))
    return "\n".join(head + body) + "\n"
