"""Reading and checking a DeepSpeed config before anything expensive starts.

The ds_config owns precision, micro-batch, gradient accumulation, clipping, ZeRO and monitoring;
the preset owns model, AdaMix, data, optimiser and schedule. A ds_config that also sets an
optimizer / scheduler (a second owner of the learning rate) or contradicts itself is refused here,
with the file named, instead of failing deep inside ``deepspeed.initialize``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DSConfigError(ValueError):
    """The DeepSpeed config is invalid; the message names the file and the key."""


def read_ds_config(path: str | Path, world_size: int | None = None) -> dict[str, Any]:
    """Load and validate ``path``; with ``world_size`` also check the batch arithmetic."""
    path = Path(path)
    if not path.is_file():
        raise DSConfigError(f"--ds_config {path}: no such file")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DSConfigError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from err
    check_ds_config(config, str(path), world_size)
    return config


def _auto_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every "auto" value, nested sections included (DeepSpeed would silently
    replace them with defaults: bf16.enabled = "auto" trains in fp32)."""
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _auto_keys(v, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _enabled(config: dict[str, Any], section: str) -> bool:
    return bool(config.get(section, {}).get("enabled", False))


def check_ds_config(config: dict[str, Any], source: str, world_size: int | None = None) -> None:
    """Raise :class:`DSConfigError` naming ``source`` and the offending keys."""
    def fail(message: str) -> None:
        raise DSConfigError(f"{source}: {message}")

    autos = _auto_keys(config)
    if autos:
        fail(f"'auto' values {autos} need the HF Trainer to fill them; give numbers")
    for owned in ("optimizer", "scheduler"):
        if owned in config:
            fail(f"'{owned}' is set by the preset (lr, weight decay, warmup); remove it here so "
                 "the learning rate has one owner")
    if _enabled(config, "fp16") and _enabled(config, "bf16"):
        fail("fp16.enabled and bf16.enabled are both true; choose one precision")
    micro = config.get("train_micro_batch_size_per_gpu")
    accum = config.get("gradient_accumulation_steps", 1)
    if not _is_count(micro):
        fail(f"train_micro_batch_size_per_gpu must be an int >= 1, got {micro!r}")
    if not _is_count(accum):
        fail(f"gradient_accumulation_steps must be an int >= 1, got {accum!r}")
    total = config.get("train_batch_size")
    if total is not None and world_size is not None and total != micro * accum * world_size:
        fail(f"train_batch_size {total} != train_micro_batch_size_per_gpu {micro} x "
             f"gradient_accumulation_steps {accum} x world size {world_size}")
    zero = config.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        fail(f"zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    if zero.get("offload_param", {}).get("device", "none") != "none" and stage != 3:
        fail(f"zero_optimization.offload_param needs stage 3, got stage {stage}")
    if zero.get("offload_optimizer", {}).get("device", "none") != "none" and stage < 1:
        fail("zero_optimization.offload_optimizer needs stage >= 1")
    clip = config.get("gradient_clipping", 0.0)
    if not isinstance(clip, (int, float)) or clip < 0:
        fail(f"gradient_clipping must be a number >= 0, got {clip!r}")


def precision(config: dict[str, Any]) -> str:
    """'bf16', 'fp16' or 'fp32' as the ds_config sets it."""
    if _enabled(config, "bf16"):
        return "bf16"
    return "fp16" if _enabled(config, "fp16") else "fp32"


def zero_stage(config: dict[str, Any]) -> int:
    return config.get("zero_optimization", {}).get("stage", 0)


def offloads_optimizer(config: dict[str, Any]) -> bool:
    zero = config.get("zero_optimization", {})
    return zero.get("offload_optimizer", {}).get("device", "none") != "none"
