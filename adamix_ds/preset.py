"""Presets: the model, AdaMix, data and schedule of a run, as a YAML file.

Each preset file starts with a comment block showing its exact launch command. Keys are checked:
an unknown key is an error naming the file and the key (a typo must not silently fall back to a
default). Command-line flags of ``launch/train_nlg.py`` override single preset values.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import AdaMixConfig, ConfigError
from .tasks.base import PASS_SCHEDULES


@dataclass
class TrainSettings:
    """Optimiser, schedule and loop settings (the ds_config owns batch, precision and ZeRO)."""

    epochs: float = 1.0
    max_steps: int | None = None          # optimizer steps; overrides epochs when set
    lr: float = 2e-4
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    warmup_ratio: float | None = None     # fraction of all steps; replaces warmup_steps
    label_smoothing: float = 0.1
    consistency: str = "paired"
    fused_loss: bool = False                 # loss from hidden states in chunks (no full logits)
    gradient_checkpointing: bool = False     # recompute each block in backward (routes replayed)
    seed: int = 110
    log_every: int = 10
    save_every: int | None = None         # optimizer steps between resumable checkpoints
    keep_checkpoints: int = 2
    route_check_every: int = 100             # cross-rank route digest check (0 = never)
    collective_timeout_s: float = 600.0      # a collective waits this long for a silent rank
    sample_after: int = 0                    # decode this many test inputs at the end (rank 0)
    eval_every: int | str | None = None      # NLU dev evaluation: "epoch" or every N steps
    select_best: bool = False                # keep and report the best dev evaluation's weights

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)
        for flag in ("fused_loss", "gradient_checkpointing", "select_best"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"train.{flag} must be true or false, "
                                  f"got {getattr(self, flag)!r}")
        if self.consistency not in PASS_SCHEDULES:
            raise ConfigError(f"train.consistency must be one of {list(PASS_SCHEDULES)}, "
                              f"got {self.consistency!r}")
        if self.max_steps is None and not self.epochs > 0:
            raise ConfigError(f"train.epochs must be > 0, got {self.epochs!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"train.max_steps must be >= 1, got {self.max_steps!r}")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.eval_every is not None and self.eval_every != "epoch" and not (
                isinstance(self.eval_every, int) and not isinstance(self.eval_every, bool)
                and self.eval_every >= 1):
            raise ConfigError(f"train.eval_every must be 'epoch' or a number of optimizer steps "
                              f">= 1, got {self.eval_every!r}")
        if self.select_best and self.eval_every is None:
            raise ConfigError("train.select_best needs train.eval_every ('epoch' or N steps): "
                              "the best checkpoint is chosen among the dev evaluations")
        if not self.collective_timeout_s > 0:
            raise ConfigError(f"train.collective_timeout_s must be > 0, "
                              f"got {self.collective_timeout_s!r}")
        if not self.lr > 0 or self.warmup_steps < 0 or not 0 <= self.label_smoothing < 1:
            raise ConfigError("train: need lr > 0, warmup_steps >= 0, 0 <= label_smoothing < 1")


@dataclass
class Preset:
    """A whole run: backbone + AdaMix + data + training."""

    backbone: str = "gpt2-medium"
    init: str = "pretrained"
    backbone_config: dict[str, Any] = field(default_factory=dict)  # overrides for init=random
    tokenizer: str | None = None          # default: the backbone dir, else the bundled BPE
    task: str = "e2e"
    data_dir: str | None = None           # default: the bundled E2E sample
    max_seq_len: int = 512
    max_train_examples: int | None = None  # NLG: the first N; NLU: a fixed seeded subset
    lmbff_seed: int | None = None         # NLU: prompt-based few-shot on this LM-BFF split
    lmbff_k: int = 16                        # examples per class of the LM-BFF split
    train_pooler: bool = True                # NLU (BERT): train the pooler with the classifier
    adamix: AdaMixConfig = field(default_factory=AdaMixConfig)
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self) -> None:
        if not isinstance(self.train_pooler, bool):
            raise ConfigError(f"train_pooler must be true or false, got {self.train_pooler!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> Preset:
        values = dict(values)
        _reject_unknown(cls, values, source)
        try:
            adamix = AdaMixConfig.from_dict(values.pop("adamix", {}), source=f"{source}: adamix")
            train_values = values.pop("train", {})
            _reject_unknown(TrainSettings, train_values, f"{source}: train")
            return cls(adamix=adamix, train=TrainSettings(**train_values), **values)
        except (TypeError, ConfigError) as err:
            raise ConfigError(f"{source}: {err}") from err

    @classmethod
    def load(cls, path: str | Path) -> Preset:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--preset {path}: no such file")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: invalid YAML: {err}") from err
        return cls.from_dict(values, str(path))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["adamix"] = self.adamix.to_dict()
        out["train"]["adam_betas"] = list(self.train.adam_betas)
        return out


def _reject_unknown(cls: type, values: dict[str, Any], source: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")


# flag -> (section or None, key, type): the preset values the training launchers can override
Overrides = dict[str, tuple[str | None, str, type]]


def add_override_flags(parser: Any, overrides: Overrides) -> None:
    """One ``--<flag>`` per entry of ``overrides`` on an argparse parser (default: not given)."""
    for flag, (_, _, kind) in overrides.items():
        parser.add_argument(f"--{flag}", type=kind, default=None,
                            help=f"override the preset's {flag}")


def preset_with_overrides(path: str | Path, args: Any, overrides: Overrides,
                          **extra: dict[str, Any]) -> Preset:
    """The preset at ``path`` with every given override flag of ``args`` applied, validated as
    one preset (errors say they came with command-line overrides). ``extra``: section -> values
    set as well (e.g. ``train={"fused_loss": True}``)."""
    values = Preset.load(path).to_dict()
    for flag, (section, key, _) in overrides.items():
        value = getattr(args, flag)
        if value is not None:
            (values[section] if section else values)[key] = value
    for section, updates in extra.items():
        values[section].update(updates)
    return Preset.from_dict(values, source=f"{path} (with command-line overrides)")
