"""The paper's routing analysis figure: scores of K random-routing decodes as violins, with the
merged model's score marked on each metric."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path


def routing_violin(random_scores: Mapping[str, Sequence[float]], merged: Mapping[str, float],
                   path: str | Path, title: str = "") -> Path:
    """Draw one violin per metric (K random routes) with the merged score as a red line.

    Args:
        random_scores: metric -> its K scores under random routing (K >= 1).
        merged: metric -> the merged model's score (metrics missing here are drawn unmarked).
        path: PNG to write (atomically: a half-written figure is never left behind).
    """
    import matplotlib
    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    metrics = [m for m, values in random_scores.items() if len(values) > 0]
    if not metrics:
        raise ValueError("routing_violin: no random-routing scores to draw")
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.4 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        values = list(random_scores[metric])
        if len(values) > 1 and max(values) > min(values):
            parts = ax.violinplot(values, showextrema=False)
            for body in parts["bodies"]:
                body.set_alpha(0.4)
        ax.scatter([1.0] * len(values), values, s=10, color="tab:blue", zorder=3,
                   label=f"random routing (K={len(values)})")
        if metric in merged:
            ax.axhline(merged[metric], color="tab:red", lw=1.5, label="merged (AdaMix)")
        ax.set_title(metric)
        ax.set_xticks([])
    axes[0][0].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
