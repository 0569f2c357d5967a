"""Result tables for ``launch/eval_nlg.py``: our scores next to the paper's published row."""
from __future__ import annotations

import os
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The paper's E2E result for AdaMix-LoRA on GPT-2 medium (Wang et al. 2022, E2E table), in the
# paper's scale: BLEU, METEOR and ROUGE-L x 100; NIST and CIDEr as the scorer prints them.
PAPER_ROWS: dict[str, dict[str, dict[str, float]]] = {
    "e2e": {"AdaMix-LoRA, GPT-2 M (paper)":
            {"BLEU": 71.0, "NIST": 8.89, "METEOR": 46.8, "ROUGE_L": 72.2, "CIDEr": 2.54}},
}
# Metrics the E2E scorer reports in 0-1 that the paper prints x 100.
_PERCENT = {"e2e": {"BLEU", "METEOR", "ROUGE_L"}}


def paper_scale(task: str, metric: str, value: float) -> float:
    """A scorer value in the scale of the paper's tables."""
    return value * 100 if metric in _PERCENT.get(task, set()) else value


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def markdown_table(report: Mapping[str, Any], paper: Mapping[str, Mapping[str, float]]) -> str:
    """One row per (policy, subset), the random-routing draws as mean ± std, then the paper rows."""
    task = report["task"]
    rows: list[tuple[str, dict[str, list[float]]]] = []
    for policy, run in report["policies"].items():
        for subset, result in run["subsets"].items():
            label = policy if subset == "all" else f"{policy} ({subset})"
            rows.append((label, {m: [v] for m, v in result["scores"].items()}))
    draws = report.get("random_routes") or []
    if draws:
        pooled: dict[str, list[float]] = {}
        for run in draws:
            for metric, value in run["subsets"]["all"]["scores"].items():
                pooled.setdefault(metric, []).append(value)
        rows.append((f"random routing, {len(draws)} draws (mean ± std)", pooled))
    metrics = list(dict.fromkeys(m for _, scores in rows for m in scores))
    for scores in paper.values():
        metrics += [m for m in scores if m not in metrics]
    scale_note = (" BLEU, METEOR and ROUGE_L x 100 (the official scorer prints 0-1)."
                  if task in _PERCENT else "")
    lines = [f"### {task} {report['split']}: {report['contexts']} inputs",
             "", f"Checkpoint `{report['checkpoint']}`.{scale_note}", "",
             "| | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for label, scores in rows:
        cells = [_cell([paper_scale(task, m, v) for v in scores[m]]) if m in scores else "–"
                 for m in metrics]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for label, scores in paper.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{scores[m]:.2f}" if m in scores else "–" for m in metrics) + " |")
    errors = {f"{policy}/{subset}": result["errors"]
              for policy, run in report["policies"].items()
              for subset, result in run["subsets"].items() if result["errors"]}
    if errors:
        lines += ["", "Not computed: " + "; ".join(f"{k}: {e}" for k, e in errors.items())]
    return "\n".join(lines) + "\n"


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
