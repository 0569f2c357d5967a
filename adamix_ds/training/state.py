"""Resumable checkpoints and preemption.

A checkpoint is DeepSpeed's own (optimizer, scheduler, trainable weights; frozen backbone weights
are excluded: they come from the backbone again) plus the client state AdaMix needs to continue
*exactly*: router step, data position (epoch, micro-batches done) and the optimizer step.

Atomicity: DeepSpeed writes the tag directory; only after every rank has finished does rank 0
write the tag's ``manifest.json`` (every file's size and sha256) and then point ``latest`` at it,
each by writing a temporary file and renaming it. A run killed mid-save resumes from the previous
complete checkpoint. Resume verifies the manifest: a checkpoint whose files are missing, cut short
or changed is named in one line and skipped for the newest intact one; with none intact the run
stops with :class:`CheckpointError` (the launchers exit 2 with its message).

DeepSpeed's checkpoint files are pickles (``torch.load``): they are trusted input, the run's own.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..checkpoint import file_sha256

LATEST = "latest"  # DeepSpeed's own pointer file name, so engine.load_checkpoint(dir) works too
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """No intact checkpoint to resume from; the message names directories and files."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (a full disk, a quota, an I/O error). The partial
    directory is removed; the previous checkpoint and ``latest`` are untouched."""


def _checkpoint_bytes(tag_dir: Path) -> int:
    return sum(f.stat().st_size for f in tag_dir.rglob("*") if f.is_file())


def save_failure(directory: Path, tag: str, err: OSError) -> CheckpointSaveError:
    """Remove the partial ``tag`` directory and describe the failure: what, where, and how much
    space a checkpoint takes (the newest complete one's size) against what is free."""
    partial = directory / tag
    shutil.rmtree(partial, ignore_errors=True)
    previous = latest_tag(directory)
    size = _checkpoint_bytes(directory / previous) if previous else None
    free = shutil.disk_usage(directory).free
    needs = (f"a checkpoint takes {size / 2 ** 20:.1f} MiB (the size of {previous})"
             if size is not None else "no earlier checkpoint to size it by")
    where = f" writing {err.filename}" if err.filename else ""
    kept = f"{directory / previous} and `latest` are unchanged" if previous else "none existed"
    return CheckpointSaveError(
        f"saving checkpoint {partial} failed{where}: {err.strerror or err}; {needs}, "
        f"{free / 2 ** 20:.1f} MiB are free there. The previous checkpoint: {kept}; free space "
        "and run the same command again to resume from it")


def write_manifest(tag_dir: Path, step: int) -> None:
    """Record every file of a finished checkpoint (size, sha256), atomically and durably."""
    files = {str(f.relative_to(tag_dir)): {"size": f.stat().st_size, "sha256": file_sha256(f)}
             for f in sorted(tag_dir.rglob("*")) if f.is_file() and f.name != MANIFEST}
    tmp = tag_dir / f".{MANIFEST}.tmp"
    with open(tmp, "w") as handle:
        json.dump({"step": step, "files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, tag_dir / MANIFEST)


def checkpoint_problem(tag_dir: Path) -> str | None:
    """Why ``tag_dir`` cannot be resumed from (naming the file), or None if it is intact."""
    manifest = tag_dir / MANIFEST
    if not manifest.is_file():
        return f"{manifest} is missing (the save did not finish)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        return f"{manifest} is unreadable ({err})"
    for name, expected in files.items():
        path = tag_dir / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{path} has {size} bytes, the manifest says {expected['size']}"
        if file_sha256(path) != expected["sha256"]:
            return f"{path} does not match its sha256 in the manifest"
    return None


def latest_tag(directory: str | Path) -> str | None:
    path = Path(directory) / LATEST
    return path.read_text().strip() if path.is_file() else None


def save_checkpoint(engine: Any, directory: str | Path, step: int, client_state: dict[str, Any],
                    keep: int = 2) -> str:
    """Collective: all ranks call it. Returns the tag written."""
    directory = Path(directory)
    tag = f"step{step:08d}"
    try:
        engine.save_checkpoint(str(directory), tag=tag, client_state=client_state,
                               save_latest=False, exclude_frozen_parameters=True)
    except OSError as err:
        raise save_failure(directory, tag, err) from err
    if dist.is_initialized():
        dist.barrier()
    if engine.global_rank == 0:
        try:
            write_manifest(directory / tag, step)
        except OSError as err:
            raise save_failure(directory, tag, err) from err
        tmp = directory / f".{LATEST}.tmp"
        tmp.write_text(tag)
        os.replace(tmp, directory / LATEST)
        old = sorted(p for p in directory.glob("step*") if p.is_dir() and p.name != tag)
        for stale in old[:max(0, len(old) - (keep - 1))]:
            shutil.rmtree(stale, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
    return tag


def choose_checkpoint(directory: str | Path) -> str | None:
    """The newest intact checkpoint's tag; None when no save ever finished.

    A save is finished once its manifest exists (written after every rank's files, before
    ``latest`` moves). A ``step*`` directory without one, newer than ``latest``, is a save that
    was interrupted: ignored. A finished checkpoint whose files no longer match the manifest is
    reported in one line on stderr and skipped for the next older one.
    """
    directory = Path(directory)
    pointed = latest_tag(directory)
    tags = sorted((p.name for p in directory.glob("step*") if p.is_dir()), reverse=True)
    problems = []
    for tag in tags:
        if not (directory / tag / MANIFEST).is_file() and (pointed is None or tag > pointed):
            continue                                    # an interrupted save, never finished
        problem = checkpoint_problem(directory / tag)
        if problem is None:
            return tag
        problems.append(problem)
        print(f"adamix-ds: checkpoint {directory / tag} skipped: {problem}", file=sys.stderr,
              flush=True)
    if not problems:
        return None
    raise CheckpointError(f"no intact checkpoint in {directory}: " + "; ".join(problems)
                          + " (move the directory away or pass --no_resume to start over)")


def load_checkpoint(engine: Any, directory: str | Path) -> dict[str, Any] | None:
    """Load the newest intact checkpoint (:func:`choose_checkpoint`); None if there is none.
    Collective: rank 0 verifies, every rank loads the tag it chose."""
    choice: list[Any] = [None]  # rank 0's verdict: ("tag", tag or None) | ("error", message)
    if engine.global_rank == 0:
        try:
            choice = [("tag", choose_checkpoint(directory))]
        except CheckpointError as err:
            choice = [("error", str(err))]   # every rank stops with it, none waits forever
    if dist.is_initialized():
        dist.broadcast_object_list(choice, src=0)
    kind, value = choice[0]
    if kind == "error":
        raise CheckpointError(value)
    tag = value
    if tag is None:
        return None
    path, client_state = engine.load_checkpoint(str(directory), tag=tag, load_module_strict=False)
    if path is None:
        raise CheckpointError(f"{directory}/{tag}: DeepSpeed could not load this checkpoint")
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
