"""Feedback during training: a tqdm bar on rank 0, a CSV log, DeepSpeed's monitor (TensorBoard /
CSV / W&B as the ds_config enables them), and a loss-curve PNG at the end."""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

FIELDS = ("step", "loss", "task_loss", "consistency", "lr", "tokens_per_s", "elapsed_s")


class TrainMonitor:
    """Rank 0 writes; other ranks hold a silent instance so call sites need no rank checks."""

    def __init__(self, output_dir: Path, total_steps: int, start_step: int, engine: Any,
                 enabled: bool) -> None:
        self.enabled, self.engine = enabled, engine
        self.path = output_dir / "train_log.csv"
        self.start = time.perf_counter()
        self._bar: tqdm | None = None
        if enabled:
            fresh = not self.path.exists() or start_step == 0
            if not fresh:
                self._drop_rows_after(start_step)
            self._file = open(self.path, "w" if fresh else "a", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=FIELDS)
            if fresh:
                self._writer.writeheader()
            self._bar = tqdm(total=total_steps, initial=start_step, desc="adamix", unit="step",
                             dynamic_ncols=True)

    def _drop_rows_after(self, step: int) -> None:
        """A resumed run repeats the steps after its checkpoint (a kill, or a fallback to an older
        checkpoint): their first rows go, so every step is logged once, as it counted."""
        with open(self.path, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "elapsed_s": round(time.perf_counter() - self.start, 3), **values}
        self._writer.writerow({k: row.get(k, "") for k in FIELDS})
        self._file.flush()
        monitor = getattr(self.engine, "monitor", None)
        if monitor is not None and monitor.enabled:
            monitor.write_events([(f"Train/adamix/{k}", float(v), step) for k, v in values.items()])
        self._bar.set_postfix(loss=f"{values['loss']:.4f}", kl=f"{values['consistency']:.4f}",
                              lr=f"{values['lr']:.2e}", refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def close(self) -> Path | None:
        """Close the log and draw the loss curve; returns the PNG path (rank 0)."""
        if not self.enabled:
            return None
        self._bar.close()
        self._file.close()
        return plot_loss_curve(self.path, self.path.with_name("loss_curve.png"))


def plot_loss_curve(csv_path: Path, png_path: Path) -> Path | None:
    """Loss, task loss and consistency term against the optimizer step."""
    import matplotlib
    matplotlib.use("Agg")  # no display on training nodes
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    steps = [int(r["step"]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, axis in (("loss", left), ("task_loss", left), ("consistency", right)):
        axis.plot(steps, [float(r[key]) for r in rows], label=key)
    left.set_xlabel("optimizer step"), right.set_xlabel("optimizer step")
    left.set_title("loss"), right.set_title("consistency KL (unweighted)")
    left.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
