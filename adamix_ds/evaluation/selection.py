"""Dev evaluations during training and the best of them, for best-checkpoint selection.

The GLUE protocol of the AdaMix authors (and of most GLUE papers) scores the dev set after every
epoch and reports the best epoch. :class:`DevSelection` keeps that history and says when an
evaluation is a new best, so the caller can keep that checkpoint. Higher is better for every
GLUE main metric (accuracy, F1, Matthews, Pearson / Spearman); a tie keeps the earlier
evaluation. Pure Python: the same object serves the DeepSpeed trainer (where it travels in the
resumable checkpoint) and the plain benchmark loop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DevSelection:
    """History of dev evaluations and the index of the best by ``metric``.

    history: one ``{"step", "epoch", "metrics"}`` per evaluation, in order; ``epoch`` is the
        number of finished epochs at that point (fractional when evaluating every N steps).
    """

    metric: str
    history: list[dict[str, Any]] = field(default_factory=list)
    best_index: int | None = None

    def record(self, step: int, epoch: float, metrics: dict[str, float]) -> bool:
        """Add one evaluation; True when it is the new best (strictly above every earlier one).

        Raises:
            KeyError: ``metrics`` lacks the selection metric.
        """
        if self.metric not in metrics:
            raise KeyError(f"dev metrics {sorted(metrics)} lack the selection metric "
                           f"{self.metric!r}")
        value = float(metrics[self.metric])
        self.history.append({"step": step, "epoch": epoch, "metrics": dict(metrics)})
        # NaN (e.g. a constant predictor's correlation) never becomes the best
        if math.isnan(value):
            return False
        if self.best_index is not None and value <= self.best["metrics"][self.metric]:
            return False
        self.best_index = len(self.history) - 1
        return True

    @property
    def best(self) -> dict[str, Any] | None:
        """The best evaluation's history entry, or None before any (non-NaN) evaluation."""
        return None if self.best_index is None else self.history[self.best_index]

    @property
    def last(self) -> dict[str, Any] | None:
        return self.history[-1] if self.history else None

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "history": [dict(h) for h in self.history],
                "best_index": self.best_index}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> DevSelection:
        return cls(state["metric"], [dict(h) for h in state["history"]], state["best_index"])
