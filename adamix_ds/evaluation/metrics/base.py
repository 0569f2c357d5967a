"""The value every scorer returns: the scores it could compute and why the others are missing."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class MetricResult:
    """Corpus-level scores of one system output.

    Attributes:
        scores: metric name -> value, in the official scorer's scale (E2E BLEU is 0-1).
        errors: metric name -> why it could not be computed (e.g. no Java for METEOR); a metric
            is in exactly one of the two dicts.
    """

    scores: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {"scores": dict(self.scores), "errors": dict(self.errors)}
