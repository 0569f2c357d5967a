"""Dev evaluation during training, and keeping the best evaluation's adaptation.

With ``train.eval_every`` ("epoch" or N optimizer steps) the loop scores the task's eval split
under the served (merged) policy at each due step and at the last step; the history goes to
``<output_dir>/dev_history.json``. With ``train.select_best`` each new best (by the task's main
metric, :class:`~adamix_ds.evaluation.selection.DevSelection`) is exported to
``<output_dir>/best_adaptation`` (atomic, as ``adaptation``), which the task scores at the end
beside the last step's. The selection state travels in the resumable checkpoint, so a resumed
run evaluates at the same steps and keeps the same best.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import save_adaptation
from ..evaluation.report import atomic_write_text
from ..evaluation.selection import DevSelection
from ..preset import Preset
from ..routing import Router
from ..tasks.base import BEST_ADAPTATION, TrainTask
from .engine import gather_adaptation_state

HISTORY_FILE = "dev_history.json"


class DevEvaluator:
    """When to score the dev split, and what to keep. Every rank holds one (collective)."""

    def __init__(self, task: TrainTask, preset: Preset, batches_per_epoch: int,
                 accumulation: int, output_dir: Path, rank: int) -> None:
        train = preset.train
        if train.eval_every is not None and task.evaluate is None:
            raise ValueError("train.eval_every: this task family has no dev evaluation during "
                             "training (NLU GLUE / LM-BFF tasks have)")
        self.task, self.preset, self.output_dir, self.rank = task, preset, output_dir, rank
        self.every = train.eval_every
        self.batches_per_epoch, self.accumulation = batches_per_epoch, accumulation
        self.selection = (DevSelection(task.selection_metric or "")
                          if self.every is not None else None)

    @property
    def enabled(self) -> bool:
        return self.selection is not None

    def epochs_done(self, position: dict[str, int]) -> float:
        """Finished epochs after the micro-batches consumed so far (fractional mid-epoch)."""
        return position["epoch"] + position["batch"] / self.batches_per_epoch

    def due(self, step: int, position: dict[str, int], total_steps: int) -> bool:
        """Evaluate after this optimizer step? Every N steps, at each epoch end, and at the end.

        An epoch ends inside step ``s`` when its last micro-batch is among the step's
        ``accumulation`` micro-batches.
        """
        if not self.enabled:
            return False
        if step == total_steps:
            return True
        if self.every == "epoch":
            consumed = position["epoch"] * self.batches_per_epoch + position["batch"]
            before = consumed - self.accumulation
            return consumed // self.batches_per_epoch > before // self.batches_per_epoch
        return step % int(self.every) == 0

    def run(self, engine: Any, router: Router, step: int, position: dict[str, int]) -> None:
        """Score the dev split now; export the adaptation if this is the best so far."""
        module = engine.module
        module.eval()
        try:
            with torch.no_grad():
                metrics = self.task.evaluate(module, router)
        finally:
            module.train()
        epoch = round(self.epochs_done(position), 6)
        is_best = self.selection.record(step, epoch, metrics)
        if is_best and self.preset.train.select_best:
            cfg = self.preset.adamix
            state = gather_adaptation_state(module, cfg)  # collective (ZeRO-3)
            if self.rank == 0:
                save_adaptation(module, self.output_dir / BEST_ADAPTATION, cfg, state=state,
                                extra={"step": step, "epoch": epoch,
                                       "dev_metrics": metrics,
                                       "preset": self.preset.to_dict()})
        if self.rank == 0:
            metric = self.selection.metric
            print(f"adamix-ds: dev at step {step} (epoch {epoch:g}): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                  + (f"  [best {metric} so far]" if is_best else ""), flush=True)
            atomic_write_text(self.output_dir / HISTORY_FILE,
                              json.dumps(self.selection.state_dict(), indent=2) + "\n")

    def state_dict(self) -> dict[str, Any] | None:
        return self.selection.state_dict() if self.selection is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.enabled and state is not None:
            self.selection = DevSelection.from_state_dict(state)
