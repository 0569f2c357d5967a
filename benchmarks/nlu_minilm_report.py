"""The RESULTS.md section of ``benchmarks/nlu_minilm.py``: tables from cached runs, and a reading.

Pure formatting: no torch, no model. ``nlu_minilm.py`` trains and caches the runs, picks those
with the current settings (``collect``) and hands them here as ``rows``:
``{(task, variant): [run entry, ...]}``, where a :class:`Variant` is one table row (a method and
the settings it overrides) and a run entry is the JSON object the cache holds (``metrics``,
``seed``, ``train_seconds``, ``serving_params``, ``date``, ``device``; runs with dev selection
add ``last_metrics``, ``best_epoch`` and ``dev_history`` (one metrics dict per epoch); AdaMix
runs add ``policies`` and ``experts``).
"""
from __future__ import annotations

import argparse
import datetime
import statistics
from dataclasses import dataclass
from typing import Any

LABELS = {"head": "head only", "full": "full fine-tuning", "adapter": "adapter (1 expert)",
          "lora": "LoRA (Q,V)", "adamix": "AdaMix"}
#: settings a variant may override, with their parser (``nlu_minilm.py --variants``)
OVERRIDABLE = {"consistency": str, "consistency_weight": float, "experts": int, "epochs": int}


@dataclass(frozen=True)
class Variant:
    """One table row: a method, with some run settings overridden (e.g. AdaMix, consistency off).

    overrides: sorted ``(setting, value)`` pairs, values already parsed.
    """

    method: str
    overrides: tuple[tuple[str, Any], ...] = ()

    def settings(self, args: argparse.Namespace) -> argparse.Namespace:
        """``args`` with this variant's overrides applied (a copy)."""
        return argparse.Namespace(**{**vars(args), **dict(self.overrides)})

    def label(self, args: argparse.Namespace) -> str:
        """The row's name, from the effective settings."""
        if self.method != "adamix":
            base = LABELS[self.method]
        else:
            v = self.settings(args)
            if v.experts == 1:
                base = "adapter + paired consistency (AdaMix, 1 expert)"
            else:
                base = f"AdaMix ({v.experts} experts, merged)"
            if v.consistency == "off":
                base += ", consistency off"
            elif v.consistency_weight != 1.0:
                base += f", consistency weight {v.consistency_weight:g}"
        epochs = dict(self.overrides).get("epochs")
        return base + (f", {epochs} epochs" if epochs is not None else "")


Rows = dict[tuple[str, Variant], list[dict[str, Any]]]


def parse_variants(spec: str) -> list[Variant]:
    """``"adapter;adamix;adamix:consistency=off,epochs=40"`` -> variants (ValueError names the
    bad item)."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        method, _, rest = item.partition(":")
        if method not in LABELS:
            raise ValueError(f"variant {item!r}: method {method!r} is not one of {list(LABELS)}")
        overrides = {}
        for pair in filter(None, (p.strip() for p in rest.split(","))):
            key, _, value = pair.partition("=")
            if key not in OVERRIDABLE or not value:
                raise ValueError(f"variant {item!r}: expected setting=value with setting in "
                                 f"{list(OVERRIDABLE)}, got {pair!r}")
            try:
                overrides[key] = OVERRIDABLE[key](value)
            except ValueError as err:
                raise ValueError(f"variant {item!r}: {key}={value!r}: {err}") from err
        out.append(Variant(method, tuple(sorted(overrides.items()))))
    return out


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt_pct(values: list[float]) -> str:
    """Fractions as 'mean ± sample std' in percent; '(n=1)' where one value has no spread."""
    if not values:
        return "—"
    m, s = mean_std([100 * v for v in values])
    return f"{m:.2f} ± {s:.2f}" if s is not None else f"{m:.2f} (n={len(values)})"


def _verdict(d: float, noise: float, n: int) -> str:
    if n < 2:
        return "one seed, no spread"
    if abs(d) <= noise:
        return "within seed spread"
    return "better" if d > 0 else "worse"


def _paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, str] | None:
    """Accuracy of ``a`` minus ``b`` in points on the seeds both rows have (mean of the per-seed
    differences, which equals the difference of the means when the seed sets match), and its
    verdict against the larger of the two rows' spreads on those seeds. ``a``, ``b``: seed ->
    accuracy fraction. None when the rows share no seed."""
    common = sorted(a.keys() & b.keys())
    if not common:
        return None
    d = 100 * statistics.fmean(a[s] - b[s] for s in common)
    spreads = [100 * statistics.stdev(r[s] for s in common) if len(common) > 1 else 0.0
               for r in (a, b)]
    tag = _verdict(d, max(spreads), len(common))
    if len(common) < max(len(a), len(b)):
        tag += f"; on seed{'s' if len(common) > 1 else ''} {','.join(map(str, common))} only"
    return d, tag


def reading(rows: Rows, args: argparse.Namespace) -> list[str]:
    """A data-driven reading: the best row of each task among the rows with the most seeds, then
    each AdaMix row against every non-AdaMix row and, for an ablation, against the default AdaMix
    row, on the seeds the two share; then cost."""
    out = []
    default = Variant("adamix")
    for task in args.tasks:
        acc = {v: {r["seed"]: r["metrics"]["accuracy"] for r in rows.get((task, v), [])}
               for v in args.variants}
        acc = {v: a for v, a in acc.items() if a}
        others = [v for v in acc if v.method != "adamix"]
        adamix = [v for v in acc if v.method == "adamix"]
        if not others or not adamix:
            continue
        n_max = max(len(a) for a in acc.values())
        means = {v: 100 * statistics.fmean(a.values()) for v, a in acc.items()}
        top = max(means[v] for v in acc if len(acc[v]) == n_max)
        best = [v.label(args) for v in acc if len(acc[v]) == n_max and means[v] == top]
        fewer = [f"{v.label(args)} (n={len(a)})" for v, a in acc.items() if len(a) < n_max]
        out.append(f"{task}: the best row is {' = '.join(best)} ({top:.2f})"
                   + (f"; not ranked, fewer seeds: {', '.join(fewer)}." if fewer else "."))
        for ada in adamix:
            baselines = others + ([default] if ada != default and default in acc else [])
            parts = []
            for o in baselines:
                paired = _paired_difference(acc[ada], acc[o])
                if paired is not None:
                    parts.append(f"{paired[0]:+.2f} pt vs {o.label(args)} ({paired[1]})")
            if parts:
                out.append(f"{task}: {ada.label(args)}: accuracy " + ", ".join(parts) + ".")
    for task in args.tasks:
        single = [r["train_seconds"] for v in args.variants if v == Variant("adapter")
                  for r in rows.get((task, v), [])]
        for ada in (v for v in args.variants if v.method == "adamix"):
            times = [r["train_seconds"] for r in rows.get((task, ada), [])]
            if times and single:
                ratio = statistics.fmean(times) / statistics.fmean(single)
                out.append(f"{task} training time: {ada.label(args)} "
                           f"{statistics.fmean(times):.0f}s vs single adapter "
                           f"{statistics.fmean(single):.0f}s per run ({ratio:.2f}x).")
    return out


def rows_examples(rows: Rows, task: str, field: str) -> str:
    """The distinct example counts of one task's runs ('?' before any run), e.g. '3,668'."""
    counts = {r[field] for (t, _), rs in rows.items() if t == task for r in rs}
    return "/".join(f"{c:,}" for c in sorted(counts)) if counts else "?"


@dataclass(frozen=True)
class ReportContext:
    """What the table's header says besides the runs and the command-line settings."""

    model: str            # package name and version of the encoder, e.g. "`gt-...` 1.0.0"
    lora_params: int      # merged LoRA (Q,V) parameters at the run's rank
    adapter_params: int   # one merged Houlsby adapter per FFN
    torch_version: str
    this_device: str      # named when no cached run says which device it ran on
    command: str          # this invocation's arguments, as typed


def format_report(rows: Rows, args: argparse.Namespace, ctx: ReportContext) -> str:
    """The Markdown section: heading, command, set-up paragraph, tables, generated reading."""
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
    methods = list(dict.fromkeys(v.method for v in args.variants))
    lines = [
        f"### GLUE on pretrained MiniLM-L6: {' / '.join(LABELS[m] for m in methods)} — "
        f"{when}, {', '.join(devices)}",
        "",
    ]
    lines.append(f"Command: `python benchmarks/nlu_minilm.py {ctx.command}`".rstrip())
    other = [c for c in train_cmds if c != ctx.command]
    if other:
        lines.append("Runs from the cache, trained by: "
                     + "; ".join(f"`python benchmarks/nlu_minilm.py {c}`".rstrip() for c in other))
    head = ("`classifier` (pooler frozen, as the authors' run_glue)" if args.freeze_pooler
            else "`bert.pooler.dense` + `classifier`")
    selection = ("dev scored after every epoch (merged), the best epoch's weights kept (the "
                 "authors' protocol); `last` = the last epoch's score"
                 if args.select_best else "dev score after the last epoch, no checkpoint "
                 "selection")
    consistency = ("no consistency pass" if args.consistency == "off" else
                   f"paired consistency, weight {args.consistency_weight:g}, stop-gradient KL")
    lines.append(
        f"Model: {ctx.model} (all-MiniLM-L6-v2: BERT, {layers} layers x "
        f"{hidden}; pooler from the checkpoint, classifier new), fp32, torch "
        f"{ctx.torch_version}. Data: GLUE "
        + ", ".join(f"{t} (train {rows_examples(rows, t, 'train_examples')}, dev "
                    f"{rows_examples(rows, t, 'dev_examples')})" for t in args.tasks)
        + (f"; SST-2 train = a fixed seeded {args.sst2_train:,}-example subset, same for every "
           "run" if "SST-2" in args.tasks else "")
        + f". {args.epochs} epoch(s) unless a row says otherwise, batch {args.batch_size} "
        f"(length-bucketed, dynamic padding), max_seq_len {args.max_seq_len}, AdamW (weight "
        f"decay {args.weight_decay} on every trained tensor), linear warmup {args.warmup:.0%} "
        f"then linear decay to 0, grad-norm clip {args.max_grad_norm}; learning rates (our "
        f"choice for this small model, not tuned per task): "
        + ", ".join(f"{m} {args.lr[m]:g}" for m in methods)
        + f". Adapter: Houlsby bottleneck {args.bottleneck} after each FFN output, GELU; AdaMix: "
        f"{args.experts} experts unless a row says otherwise, shared up-projection, routing "
        f"seed = run seed, {consistency} unless a row says otherwise, served merged (Eq. 3)"
        + (f"; LoRA r={args.lora_rank}, alpha {2 * args.lora_rank}, dropout 0.1, on Q,V: "
           f"{ctx.lora_params:,} merged params vs the adapter's {ctx.adapter_params:,}"
           if "lora" in methods else "")
        + f". Head = {head}, trained in every row. Seeds {','.join(map(str, args.seeds))} "
        f"(model head init, data order, dropout, routing); {selection}.")
    if caps:
        lines.append(f"**Capped smoke run ({' '.join(caps)}): not the full sets; these numbers "
                     f"say nothing about the methods.**")
    lines += [
        "",
        "Serving params = trained parameters that exist at inference (AdaMix merged = "
        "one adapter + head; full FT = all). Accuracy / F1 in %, mean ± std over seeds "
        "(sample std). Train s = mean training wall time per run (evaluation excluded).",
        "",
        "| task | row | serving params | trained params | accuracy | F1 | last-epoch accuracy "
        "| best epoch | seeds | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task in args.tasks:
        for variant in args.variants:
            lines.append(table_row(task, variant.label(args), rows.get((task, variant), [])))
    lines += policy_table(rows, args)
    lines += curve_lines(rows, args)
    read = reading(rows, args)
    if read:
        lines += ["", "Reading (generated from the table; two rows are compared on the seeds both "
                  "have; differences within the seed spread are not evidence either way): "
                  + " ".join(read)]
    lines.append("")
    return "\n".join(lines)


def table_row(task: str, label: str, runs: list[dict[str, Any]]) -> str:
    """One Markdown row: a variant's runs on a task, or 'not run' when none is cached."""
    if not runs:
        return f"| {task} | {label} | — | — | not run | — | — | — | 0 | — |"
    acc = [r["metrics"]["accuracy"] for r in runs]
    f1 = fmt_pct([r["metrics"]["f1"] for r in runs]) if task == "MRPC" else "—"
    last = fmt_pct([r.get("last_metrics", r["metrics"])["accuracy"] for r in runs])
    best = [r["best_epoch"] for r in runs if "best_epoch" in r]
    best_txt = ",".join(str(b) for b in best) if best else "—"
    seeds = ",".join(str(r["seed"]) for r in runs)
    seed_txt = seeds if len(runs) >= 3 else f"n={len(runs)} ({seeds})"
    return (f"| {task} | {label} | {runs[0]['serving_params']:,} | "
            f"{runs[0]['trained_params']:,} | {fmt_pct(acc)} | {f1} | {last} | {best_txt} | "
            f"{seed_txt} | {statistics.fmean(r['train_seconds'] for r in runs):.0f} |")


def policy_table(rows: Rows, args: argparse.Namespace) -> list[str]:
    """Accuracy of every inference policy of the AdaMix rows (at the selected checkpoint):
    merged, random route, ensemble, and each expert served alone (``fixed`` = expert 0)."""
    entries = [(task, v, rs) for (task, v), rs in rows.items()
               if v.method == "adamix" and rs and all("policies" in r for r in rs)]
    if not entries:
        return []
    width = max(len(r["experts"]) for _, _, rs in entries for r in rs)
    lines = ["", "Inference policies of the AdaMix rows (accuracy %, mean ± std over the same "
             "seeds; single expert k = expert k's down-projection with the shared up-projection, "
             "`fixed` is expert 0; merged − single = merged minus the mean of the single experts, "
             "per seed, then mean ± std):", "",
             "| task | row | merged | random route | ensemble | "
             + " | ".join(f"expert {k}" for k in range(width)) + " | merged − single |",
             "|---|---|---|---|---|" + "---|" * width + "---|"]
    for task, variant, runs in entries:
        cells = [fmt_pct([r["policies"][p]["accuracy"] for r in runs])
                 for p in ("merged", "random", "ensemble")]
        for k in range(width):
            have = [r["experts"][k]["accuracy"] for r in runs if k < len(r["experts"])]
            cells.append(fmt_pct(have))
        gain = [r["policies"]["merged"]["accuracy"]
                - statistics.fmean(e["accuracy"] for e in r["experts"]) for r in runs]
        m, s = mean_std([100 * g for g in gain])
        cells.append(f"{m:+.2f} ± {s:.2f}" if s is not None else f"{m:+.2f} (n=1)")
        lines.append(f"| {task} | {variant.label(args)} | " + " | ".join(cells) + " |")
    return lines


def curve_lines(rows: Rows, args: argparse.Namespace) -> list[str]:
    """Mean dev accuracy over seeds after each epoch of the rows scored every epoch, so a slower
    start (AdaMix's experts share the updates) shows beside the best epoch. Past 10 epochs, every
    (E/10)-th epoch: the same ten points of the schedule for a 10- and a 40-epoch row."""
    out = []
    for task in args.tasks:
        for variant in args.variants:
            runs = rows.get((task, variant), [])
            if not runs or not all("dev_history" in r for r in runs):
                continue
            n = min(len(r["dev_history"]) for r in runs)
            epochs = range(1, n + 1) if n <= 10 else sorted({k * n // 10 for k in range(1, 11)})
            means = [100 * statistics.fmean(r["dev_history"][e - 1]["accuracy"] for r in runs)
                     for e in epochs]
            points = [f"{e}: {m:.1f}" for e, m in zip(epochs, means, strict=True)]
            out.append(f"- {task}, {variant.label(args)}: " + ", ".join(points))
    if not out:
        return []
    return ["", "Dev accuracy (%) after each epoch, mean over the row's seeds (epoch: accuracy):",
            "", *out]
