"""The multi-rank harness: run ``launch/*.py`` as real child processes (a single process,
the DeepSpeed launcher, or ``world`` env:// ranks), with timeouts that turn a hang into a failed
test and a log file per run, and read what the runs leave behind."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.dist_env import child_env, free_port

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
TRAIN = REPO_ROOT / "launch" / "train_nlg.py"
BIN = Path(sys.executable).parent                       # the venv: deepspeed, mpirun
# A run takes 15-40 s on 2 cores (~11 s of it imports per process). The first DeepSpeed run on a
# fresh machine also compiles its shm comm op (~45-80 s, cached in ~/.cache/torch_extensions).
RUN_TIMEOUT = 240


@dataclass
class Run:
    name: str
    rc: int | None
    output: str
    out_dir: Path
    seconds: float

    def describe(self) -> str:
        return (f"{self.name}: rc={self.rc} after {self.seconds:.1f}s; output_dir {self.out_dir}\n"
                f"--- output (tail) ---\n{tail_text(self.output)}")


def tail_text(text: str, limit: int = 8000) -> str:
    """The end of a child's output, with tqdm's carriage-return redraws collapsed."""
    lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    text = "\n".join(line for line in lines if line.strip())
    return text[-limit:]


def train_args(ds_config: Path, preset: Path, out_dir: Path, *flags: str) -> list[str]:
    return [str(TRAIN), "--ds_config", str(ds_config), "--preset", str(preset),
            "--output_dir", str(out_dir), *flags]


def single_cmd(args: list[str]) -> list[str]:
    return [sys.executable, *args]


def launcher_cmd(ranks: int, args: list[str]) -> list[str]:
    return [str(BIN / "deepspeed"), "--num_accelerators", str(ranks),
            "--master_port", str(free_port()), *args]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a child, its process group and all its descendants: the DeepSpeed launcher keeps
    its ranks in its group, mpich's mpirun starts its proxies and ranks in sessions of their own."""
    import psutil  # a DeepSpeed dependency

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def new_log(out_dir: Path, suffix: str = "") -> Path:
    """``<out_dir>.<attempt><suffix>.log`` next to the run directory, a new one per run."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while list(out_dir.parent.glob(f"{out_dir.name}.{attempt}.*log")):
        attempt += 1
    return out_dir.parent / f"{out_dir.name}.{attempt}{suffix}.log"


def run(name: str, cmd: list[str], out_dir: Path, env: dict[str, str],
        timeout: float = RUN_TIMEOUT) -> Run:
    """Run ``cmd`` to completion, its output in a log file (a pipe could be held open by an
    orphaned rank); a run past ``timeout`` is killed and fails the test."""
    start, log = time.monotonic(), new_log(out_dir)
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        proc.wait()
        result = Run(name, None, log.read_text(), out_dir, time.monotonic() - start)
        pytest.fail(f"{name} did not finish within {timeout}s (hang?)\n{result.describe()}")
    finally:
        kill_tree(proc)  # no orphaned rank outlives its test
    return Run(name, proc.returncode, log.read_text(), out_dir, time.monotonic() - start)


def run_ok(name: str, cmd: list[str], out_dir: Path, env: dict[str, str]) -> Run:
    result = run(name, cmd, out_dir, env)
    if result.rc != 0:
        pytest.fail(f"{name} failed\n{result.describe()}")
    print(f"{name}: {result.seconds:.1f}s")
    return result


class Ranks:
    """``world`` train_nlg processes joined by env:// variables, as the DeepSpeed launcher starts
    them (minus the launcher's own start-up: two more deepspeed imports). Each rank logs to
    ``<out_dir>.<attempt>.rank<r>.log``; :meth:`finish` collects them."""

    def __init__(self, name: str, args: list[str], world: int, out_dir: Path) -> None:
        self.name, self.out_dir, self.start = name, out_dir, time.monotonic()
        port = str(free_port())
        first = new_log(out_dir, ".rank0")
        self.logs = [first.with_name(first.name.replace(".rank0.", f".rank{r}."))
                     for r in range(world)]
        self.procs: list[subprocess.Popen] = []
        for rank, log in enumerate(self.logs):
            env = child_env(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                            LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=port)
            with open(log, "w") as handle:
                self.procs.append(subprocess.Popen(
                    single_cmd(args), cwd=REPO_ROOT, env=env, stdout=handle,
                    stderr=subprocess.STDOUT, start_new_session=True))

    def output(self) -> str:
        return "\n".join(f"--- rank {r} (rc={p.poll()}) ---\n{log.read_text()}"
                         for r, (p, log) in enumerate(zip(self.procs, self.logs, strict=True)))

    def result(self) -> Run:
        codes = [p.poll() for p in self.procs]
        rc = None if None in codes else next((c for c in codes if c != 0), 0)
        return Run(self.name, rc, self.output(), self.out_dir, time.monotonic() - self.start)

    def running(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def finish(self, timeout: float = RUN_TIMEOUT, grace: float = 30.0) -> Run:
        """Wait for every rank. Past ``timeout`` (from the start) kill them and fail; once a rank
        has failed, the others get ``grace`` seconds (they may wait for it in a collective)."""
        deadline, failed_at = self.start + timeout, None
        try:
            while True:
                codes = [p.poll() for p in self.procs]
                if None not in codes:
                    break
                now = time.monotonic()
                if failed_at is None and any(c not in (None, 0) for c in codes):
                    failed_at = now
                if now > deadline:
                    pytest.fail(f"{self.name} did not finish within {timeout}s (hang?)\n"
                                f"{self.result().describe()}")
                if failed_at is not None and now - failed_at > grace:
                    break  # the survivors are killed below; rc reports the failure
                time.sleep(0.1)
        finally:
            for proc in self.procs:
                kill_tree(proc)  # no orphan outlives its test
                proc.wait()
        return self.result()


def run_ranks(name: str, args: list[str], world: int, out_dir: Path) -> Run:
    return Ranks(name, args, world, out_dir).finish()


def log_rows(out_dir: Path) -> list[dict[str, float]]:
    path = out_dir / "train_log.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


def steps_of(rows: list[dict[str, float]]) -> list[int]:
    return [int(r["step"]) for r in rows]


def assert_rows_close(actual: list[dict[str, float]], expected: list[dict[str, float]],
                      rtol: float, context: str,
                      keys: tuple[str, ...] = ("loss", "task_loss", "consistency", "lr")) -> None:
    assert steps_of(actual) == steps_of(expected), context
    for a, e in zip(actual, expected, strict=True):
        for key in keys:
            # consistency starts at exactly 0 (B = 0, no dropout): allow float32 noise there.
            atol = 1e-9 if key == "consistency" else 0.0
            assert abs(a[key] - e[key]) <= atol + rtol * abs(e[key]), (
                f"{context}: step {int(e['step'])} {key} {a[key]!r} != {e[key]!r} (rtol {rtol})")


def adaptation_tensors(out_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(out_dir / "adaptation" / "adamix_model.safetensors"))


def assert_tensors_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                         atol: float, context: str) -> None:
    assert sorted(actual) == sorted(expected), context
    for name, tensor in expected.items():
        diff = (actual[name].float() - tensor.float()).abs().max().item()
        assert actual[name].shape == tensor.shape and diff <= atol, (
            f"{context}: {name} differs by {diff:.3g} (atol {atol})")
