"""The RESULTS.md section of ``benchmarks/nlu_minilm.py``: a table from cached runs, and a reading.

Pure formatting: no torch, no model. ``nlu_minilm.py`` trains and caches the runs, picks those
with the current settings (``collect``) and hands them here as ``rows``:
``{(task, method): [run entry, ...]}``, where a run entry is the JSON object the cache holds
(``metrics``, ``seed``, ``train_seconds``, ``serving_params``, ``date``, ``device``, ...).
"""
from __future__ import annotations

import argparse
import datetime
import statistics
from dataclasses import dataclass
from typing import Any

LABELS = {"head": "head only", "full": "full fine-tuning", "adapter": "adapter (1 expert)",
          "lora": "LoRA (Q,V)", "adamix": "AdaMix (4 experts, merged)"}

Rows = dict[tuple[str, str], list[dict[str, Any]]]


@dataclass(frozen=True)
class ReportContext:
    """What the table's header says besides the runs and the command-line settings."""

    model: str            # package name and version of the encoder, e.g. "`gt-...` 1.0.0"
    lora_params: int      # merged LoRA (Q,V) parameters at the run's rank
    adapter_params: int   # one merged Houlsby adapter per FFN
    torch_version: str
    this_device: str      # named when no cached run says which device it ran on
    command: str          # this invocation's arguments, as typed


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt_pct(values: list[float]) -> str:
    """Fractions as 'mean ± sample std' in percent; '(n=1)' where one value has no spread."""
    if not values:
        return "—"
    m, s = mean_std([100 * v for v in values])
    return f"{m:.2f} ± {s:.2f}" if s is not None else f"{m:.2f} (n={len(values)})"


def reading(rows: Rows, args: argparse.Namespace) -> list[str]:
    """A data-driven reading of the table: where AdaMix wins, where it does not, at what cost."""
    out = []
    for task in args.tasks:
        acc = {m: [r["metrics"]["accuracy"] for r in rows[(task, m)]] for m in args.methods}
        acc = {m: v for m, v in acc.items() if v}
        if "adamix" not in acc or len(acc) < 2:
            continue
        means = {m: 100 * statistics.fmean(v) for m, v in acc.items()}
        spread = {m: (100 * statistics.stdev(v) if len(v) > 1 else 0.0) for m, v in acc.items()}
        best = max(means, key=means.get)
        parts = []
        for other in ("adapter", "lora", "full", "head"):
            if other in means:
                d = means["adamix"] - means[other]
                noise = max(spread["adamix"], spread[other])
                if min(len(acc["adamix"]), len(acc[other])) < 2:
                    tag = "one seed, no spread"
                elif abs(d) <= noise:
                    tag = "within seed spread"
                else:
                    tag = "better" if d > 0 else "worse"
                parts.append(f"{d:+.2f} pt vs {LABELS[other]} ({tag})")
        if best == "adamix":
            lead = f"AdaMix is the best row ({means['adamix']:.2f})"
        elif means["adamix"] == means[best]:
            lead = f"AdaMix ties for best with {LABELS[best]} ({means[best]:.2f})"
        else:
            lead = (f"AdaMix does not win: {LABELS[best]} is best ({means[best]:.2f} vs "
                    f"{means['adamix']:.2f})")
        out.append(f"{task}: {lead}; accuracy " + ", ".join(parts) + ".")
    for task in args.tasks:
        ada = [r["train_seconds"] for r in rows.get((task, "adamix"), [])]
        single = [r["train_seconds"] for r in rows.get((task, "adapter"), [])]
        if ada and single:
            out.append(f"{task} training time: AdaMix {statistics.fmean(ada):.0f}s vs single "
                       f"adapter {statistics.fmean(single):.0f}s per run "
                       f"({statistics.fmean(ada) / statistics.fmean(single):.2f}x; AdaMix's paired "
                       f"consistency pass forwards every batch twice).")
    return out


def rows_examples(rows: Rows, task: str, field: str) -> str:
    """The distinct example counts of one task's runs ('?' before any run), e.g. '3,668'."""
    counts = {r[field] for (t, _), rs in rows.items() if t == task for r in rs}
    return "/".join(f"{c:,}" for c in sorted(counts)) if counts else "?"


def format_report(rows: Rows, args: argparse.Namespace, ctx: ReportContext) -> str:
    """The Markdown section: heading, command, set-up paragraph, table, generated reading."""
    runs = [r for v in rows.values() for r in v]
    dates = sorted({r["date"] for r in runs}) or [datetime.date.today().isoformat()]
    devices = sorted({r["device"] for r in runs}) or [ctx.this_device]
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    train_cmds = sorted({r["command"] for r in runs})
    hidden, layers = args.dims
    caps = []
    if args.max_train is not None:
        caps.append(f"--max_train {args.max_train}")
    if args.max_dev is not None:
        caps.append(f"--max_dev {args.max_dev}")
    lines = [
        f"### GLUE on pretrained MiniLM-L6: head / full FT / adapter / LoRA / AdaMix — {when}, "
        f"{', '.join(devices)}",
        "",
    ]
    lines.append(f"Command: `python benchmarks/nlu_minilm.py {ctx.command}`".rstrip())
    other = [c for c in train_cmds if c != ctx.command]
    if other:
        lines.append("Runs from the cache, trained by: "
                     + "; ".join(f"`python benchmarks/nlu_minilm.py {c}`".rstrip() for c in other))
    lines.append(
        f"Model: {ctx.model} (all-MiniLM-L6-v2: BERT, {layers} layers x "
        f"{hidden}; pooler from the checkpoint, classifier new), fp32, torch "
        f"{ctx.torch_version}. Data: GLUE "
        + ", ".join(f"{t} (train {rows_examples(rows, t, 'train_examples')}, dev "
                    f"{rows_examples(rows, t, 'dev_examples')})" for t in args.tasks)
        + f"; SST-2 train = a fixed seeded {args.sst2_train:,}-example subset, same for every run. "
        f"{args.epochs} epoch(s), batch {args.batch_size} (length-bucketed, dynamic padding), "
        f"max_seq_len {args.max_seq_len}, AdamW (weight decay {args.weight_decay} on every "
        f"trained tensor), linear warmup {args.warmup:.0%} then linear decay to 0, grad-norm clip "
        f"{args.max_grad_norm}; learning rates (our choice for this small model, not tuned per "
        f"task): " + ", ".join(f"{m} {args.lr[m]:g}" for m in args.methods)
        + f". Adapter: Houlsby bottleneck {args.bottleneck} after each FFN output, GELU; AdaMix: "
        f"{args.experts} experts, shared up-projection, routing seed = run seed, paired "
        f"consistency, weight 1.0, stop-gradient KL, served merged (Eq. 3); LoRA r="
        f"{args.lora_rank}, alpha {2 * args.lora_rank}, dropout 0.1, on Q,V: "
        f"{ctx.lora_params:,} merged params vs the adapter's {ctx.adapter_params:,}. Head = "
        f"`bert.pooler.dense` + `classifier`, trained in every row. Seeds "
        f"{','.join(map(str, args.seeds))} (model head init, data order, dropout, routing); dev "
        f"score after the last epoch, no checkpoint selection.")
    if caps:
        lines.append(f"**Capped smoke run ({' '.join(caps)}): not the full sets; these numbers "
                     f"say nothing about the methods.**")
    lines += [
        "",
        "Serving params = trained parameters that exist at inference (AdaMix merged = "
        "one adapter + head; full FT = all). Accuracy / F1 in %, mean ± std over seeds "
        "(sample std). Train s = mean training wall time per run (evaluation excluded).",
        "",
        "| task | method | serving params | trained params | accuracy | F1 | seeds | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in args.tasks:
        for method in args.methods:
            lines.append(table_row(task, method, rows[(task, method)]))
    read = reading(rows, args)
    if read:
        lines += ["", "Reading (generated from the table; differences within the seed spread are "
                  "not evidence either way): " + " ".join(read)]
    lines.append("")
    return "\n".join(lines)


def table_row(task: str, method: str, runs: list[dict[str, Any]]) -> str:
    """One Markdown row: a method's runs on a task, or 'not run' when none is cached."""
    if not runs:
        return f"| {task} | {LABELS[method]} | — | — | not run | — | 0 | — |"
    acc = [r["metrics"]["accuracy"] for r in runs]
    f1 = fmt_pct([r["metrics"]["f1"] for r in runs]) if task == "MRPC" else "—"
    seeds = ",".join(str(r["seed"]) for r in runs)
    seed_txt = seeds if len(runs) >= 3 else f"n={len(runs)} ({seeds})"
    return (f"| {task} | {LABELS[method]} | {runs[0]['serving_params']:,} | "
            f"{runs[0]['trained_params']:,} | {fmt_pct(acc)} | {f1} | {seed_txt} | "
            f"{statistics.fmean(r['train_seconds'] for r in runs):.0f} |")
