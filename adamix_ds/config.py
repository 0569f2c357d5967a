"""AdaMixConfig: the one typed, validated description of an AdaMix run's adaptation modules.

Everything that decides the shape or behaviour of the mixture lives here; training-loop settings
(precision, batch, ZeRO) belong to the DeepSpeed config and data / schedule settings to the presets.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METHODS = ("lora", "adapter")
SHARE_SIDES = ("up", "down", "none")
PLACEMENTS = ("ffn", "attn+ffn")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh")
INFERENCE_MODES = ("merged", "fixed", "random", "ensemble")
KL_MODES = ("stopgrad", "symmetric")
EXPERT_INITS = ("copy", "independent")
# Canonical LoRA target names; inject.py maps them to module names per architecture.
CANONICAL_TARGETS = ("q", "k", "v", "o", "ffn_in", "ffn_gate", "ffn_out")


class ConfigError(ValueError):
    """A config value is invalid; the message names the field."""


def _is_pattern(target: str) -> bool:
    """A target that is not a canonical name is read as a regex over full module names."""
    return any(ch in target for ch in ".*+?[]()|\\^$")


@dataclass
class AdaMixConfig:
    """Configuration of the AdaMix adaptation modules.

    Attributes:
        method: ``"lora"`` or ``"adapter"`` (Houlsby bottleneck adapter).
        num_experts: M, adaptation modules per adapted projection.
        share: which projection is shared across experts: ``"up"`` (paper default), ``"down"``,
            or ``"none"``. For LoRA, down = A (d_in -> r) and up = B (r -> d_out).
        rank, alpha, lora_dropout: LoRA rank r, scale numerator (scale = alpha / r) and the
            dropout applied to the LoRA input in training.
        targets: LoRA targets: canonical names (q, k, v, o, ffn_in, ffn_gate, ffn_out) or regexes
            that must fully match module names (e.g. ``r"transformer\\.h\\.\\d+\\.attn\\.c_attn"``).
        bottleneck, activation, placement: adapter width b, its nonlinearity, and where adapters
            sit: ``"ffn"`` (after the FFN output projection, the paper's placement) or
            ``"attn+ffn"`` (Houlsby's two per block).
        consistency_weight: w in loss = CE(pass 1) + w * KL term (100 for GPT-2 NLG, 1 for NLU).
        consistency_mode: ``"stopgrad"`` (the authors' code) or ``"symmetric"`` (plain KL).
        routing_seed: seed of the counter-based router (same on every rank).
        inference: eval-time policy: merged (Eq. 3 average), fixed (expert 0), random, ensemble.
        ensemble_passes: T, routed passes averaged by the ``ensemble`` policy.
        extra_trainable: regexes over parameter names that stay trainable besides the
            adaptation modules (e.g. a classification head for NLU).
        expert_init: ``"copy"`` (the authors' code: one module is drawn and copied into every
            expert, so all experts of a projection start identical and the merged module equals
            each of them) or ``"independent"`` (each expert drawn on its own; a merged LoRA A
            then starts at about 1/sqrt(M) of an expert's norm).
    """

    method: str = "lora"
    num_experts: int = 4
    share: str = "up"
    rank: int = 4
    alpha: float = 32.0
    lora_dropout: float = 0.1
    targets: tuple[str, ...] = ("q", "v")
    bottleneck: int = 8
    activation: str = "gelu_tanh"
    placement: str = "ffn"
    consistency_weight: float = 1.0
    consistency_mode: str = "stopgrad"
    routing_seed: int = 0
    inference: str = "merged"
    ensemble_passes: int = 4
    extra_trainable: tuple[str, ...] = field(default_factory=tuple)
    expert_init: str = "copy"

    def __post_init__(self) -> None:
        # Accept lists / comma strings from JSON or argparse, store tuples (hashable, immutable).
        if isinstance(self.targets, str):
            self.targets = tuple(t.strip() for t in self.targets.split(",") if t.strip())
        self.targets = tuple(self.targets)
        self.extra_trainable = tuple(self.extra_trainable)
        self.validate()

    @property
    def scale(self) -> float:
        """LoRA output scale alpha / r."""
        return self.alpha / self.rank

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        _choice("method", self.method, METHODS)
        _choice("share", self.share, SHARE_SIDES)
        _choice("placement", self.placement, PLACEMENTS)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("inference", self.inference, INFERENCE_MODES)
        _choice("consistency_mode", self.consistency_mode, KL_MODES)
        _choice("expert_init", self.expert_init, EXPERT_INITS)
        _positive_int("num_experts", self.num_experts)
        _positive_int("rank", self.rank)
        _positive_int("bottleneck", self.bottleneck)
        _positive_int("ensemble_passes", self.ensemble_passes)
        if not isinstance(self.routing_seed, int) or self.routing_seed < 0:
            raise ConfigError(f"routing_seed must be a non-negative int, got {self.routing_seed!r}")
        if not self.alpha > 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.consistency_weight < 0:
            raise ConfigError(f"consistency_weight must be >= 0, got {self.consistency_weight!r}")
        if self.method == "lora":
            if not self.targets:
                raise ConfigError("targets must name at least one module for method='lora'")
            for target in self.targets:
                _check_target(target)
        for pattern in self.extra_trainable:
            _compile("extra_trainable", pattern)

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["targets"] = list(self.targets)
        out["extra_trainable"] = list(self.extra_trainable)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> AdaMixConfig:
        """Build from a dict; unknown keys are an error (a typo must not be silently ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown AdaMix field(s) {unknown}; known: {sorted(known)}"
            )
        return cls(**values)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> AdaMixConfig:
        try:
            values = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err
        return cls.from_dict(values, source=str(path))


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")


def _compile(name: str, pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"{name}: invalid regex {pattern!r}: {err}") from err


def _check_target(target: str) -> None:
    if target in CANONICAL_TARGETS:
        return
    if not _is_pattern(target):
        raise ConfigError(
            f"targets: unknown target {target!r}; use one of {list(CANONICAL_TARGETS)} "
            "or a regex over full module names (e.g. 'transformer\\.h\\.\\d+\\.attn\\.c_attn')"
        )
    _compile("targets", target)
