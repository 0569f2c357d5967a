"""Resumable checkpoints and preemption.

A checkpoint is DeepSpeed's own (optimizer, scheduler, trainable weights; frozen backbone weights
are excluded: they come from the backbone again) plus the client state AdaMix needs to continue
*exactly*: router step, data position (epoch, micro-batches done) and the optimizer step.

Atomicity: DeepSpeed writes the tag directory; only after every rank has finished does rank 0
point ``latest`` at it, by writing a temporary file and renaming it. A run killed mid-save resumes
from the previous complete checkpoint.
"""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import torch.distributed as dist

LATEST = "latest"  # DeepSpeed's own pointer file name, so engine.load_checkpoint(dir) works too


def latest_tag(directory: str | Path) -> str | None:
    path = Path(directory) / LATEST
    return path.read_text().strip() if path.is_file() else None


def save_checkpoint(engine: Any, directory: str | Path, step: int, client_state: dict[str, Any],
                    keep: int = 2) -> str:
    """Collective: all ranks call it. Returns the tag written."""
    directory = Path(directory)
    tag = f"step{step:08d}"
    engine.save_checkpoint(str(directory), tag=tag, client_state=client_state, save_latest=False,
                           exclude_frozen_parameters=True)
    if dist.is_initialized():
        dist.barrier()
    if engine.global_rank == 0:
        tmp = directory / f".{LATEST}.tmp"
        tmp.write_text(tag)
        os.replace(tmp, directory / LATEST)
        old = sorted(p for p in directory.glob("step*") if p.is_dir() and p.name != tag)
        for stale in old[:max(0, len(old) - (keep - 1))]:
            shutil.rmtree(stale, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
    return tag


def load_checkpoint(engine: Any, directory: str | Path) -> dict[str, Any] | None:
    """Load the latest complete checkpoint; None if there is none."""
    tag = latest_tag(directory)
    if tag is None:
        return None
    path, client_state = engine.load_checkpoint(str(directory), tag=tag, load_module_strict=False)
    if path is None:
        raise RuntimeError(f"{directory}/{tag}: DeepSpeed could not load this checkpoint")
    return client_state


class PreemptionFlag:
    """Set by SIGTERM / SIGUSR1 (SLURM's preemption signals); read at optimizer-step boundaries.

    Ranks may receive the signal at different times, so :meth:`agreed` all-reduces the flag: every
    rank then saves at the same step (a collective save needs all of them).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum

    def agreed(self, device: Any) -> bool:
        import torch
        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
