"""SIGKILL at many instants, inside checkpoint writes too; the same command always finishes the run
as if nothing had happened.

One process trains ``tiny_dropout.yaml`` (10 steps, dropout on, a checkpoint every 2 steps)
through ``slow_save_worker.py``, which pauses before each checkpoint file so a kill can land
inside a save deterministically. The test kills it (SIGKILL, no handler runs) at each planned
instant, then runs the same command again, until a run finishes. Oracles: the uninterrupted run
of the same command: its final adaptation equals the survivor's bit for bit (CPU, fp32) and its
log equals the survivor's log; and every restart resumes exactly at the last checkpoint that was
finished (its manifest written) when the kill landed, so only the steps after it ran twice.
"""
from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.dist_env import single_process_env
from tests.multirank.conftest import (
    HERE,
    REPO_ROOT,
    RUN_TIMEOUT,
    adaptation_tensors,
    kill_tree,
    log_rows,
    new_log,
    run_ok,
    single_cmd,
    train_args,
)

pytestmark = [pytest.mark.multirank, pytest.mark.slow]

TINY_DROPOUT = HERE / "presets" / "tiny_dropout.yaml"
STEPS = 10


def _ds_config(root: Path) -> Path:
    config = json.loads((REPO_ROOT / "ds_configs" / "cpu_zero0.json").read_text())
    config["train_micro_batch_size_per_gpu"] = 2
    path = root / "cpu_zero0_micro2.json"
    path.write_text(json.dumps(config))
    return path


def _writing(out: Path, tag: str, pattern: str) -> Callable[[], bool]:
    return lambda: any((out / "checkpoints" / tag).glob(pattern + ".writing"))


def _logged(out: Path, step: int) -> Callable[[], bool]:
    return lambda: any(r["step"] >= step for r in log_rows(out))


_seen: dict[Path, float] = {}


def _training(log: Path) -> float | None:
    """When this attempt's progress bar first appeared (training under way), else None."""
    if log not in _seen and log.is_file() and "adamix:" in log.read_text(errors="replace"):
        _seen[log] = time.monotonic()
    return _seen.get(log)


def _finished_step(out: Path) -> int:
    """The step of the newest checkpoint whose save finished (its manifest exists)."""
    done = [int(m.parent.name.removeprefix("step"))
            for m in (out / "checkpoints").glob("step*/manifest.json")]
    return max(done, default=0)


def test_sigkill_at_many_instants_then_the_same_command_ends_as_the_uninterrupted_run(tmp_path):
    config = _ds_config(tmp_path)
    reference = tmp_path / "reference"
    run_ok("uninterrupted", single_cmd([*train_args(config, TINY_DROPOUT, reference),
                                        "--save_every", "2"]), reference, single_process_env())

    out = tmp_path / "killed"
    args = [str(HERE / "slow_save_worker.py"),
            *train_args(config, TINY_DROPOUT, out)[1:], "--save_every", "2"]
    started_at, current = {"t": 0.0}, {"log": tmp_path / "none"}
    # a random instant once training runs (a kill during start-up could land while DeepSpeed
    # JIT-loads its comm op and leave torch's build lock behind, which would stall later runs)
    delay = random.Random(20261206).uniform(0.0, 1.5)
    plan: list[tuple[str, Callable[[], bool]]] = [
        ("inside the step-2 model-states write",
         _writing(out, "step00000002", "mp_rank_00_model_states.pt")),
        ("inside the step-4 model-states write",
         _writing(out, "step00000004", "mp_rank_00_model_states.pt")),
        ("just after step 5 was logged", _logged(out, 5)),
        (f"{delay:.2f} s into training",
         lambda: _training(current["log"]) is not None
         and time.monotonic() - _training(current["log"]) > delay),
        ("inside the step-8 model-states write",
         _writing(out, "step00000008", "mp_rank_00_model_states.pt")),
    ]
    env = single_process_env()
    kills, resumed_from, expected_from = [], [], []
    for attempt in range(len(plan) + 1):
        expected_from.append(_finished_step(out))
        log = current["log"] = new_log(out)
        with open(log, "w") as handle:
            proc = subprocess.Popen(single_cmd(args), cwd=REPO_ROOT, env=env, stdout=handle,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        started_at["t"] = time.monotonic()
        name, trigger = plan[attempt] if attempt < len(plan) else ("", lambda: False)
        try:
            while proc.poll() is None:
                if time.monotonic() - started_at["t"] > RUN_TIMEOUT:
                    pytest.fail(f"attempt {attempt} hung\n{log.read_text()[-4000:]}")
                if trigger():
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills.append(name)
                    break
                time.sleep(0.02)
        finally:
            kill_tree(proc)
            proc.wait()
        text = log.read_text()
        match = re.search(r"resuming from \S+ at step (\d+)", text)
        started = "adamix:" in text  # the progress bar: past start-up and any resume
        resumed_from.append(int(match.group(1)) if match else (0 if started else None))
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, f"attempt {attempt}:\n{text[-4000:]}"
    else:
        pytest.fail("the run never finished")

    print(f"kills survived: {len(kills)}: {kills}")
    assert len(kills) == len(plan), kills        # every planned instant was hit
    # each restart that got going began at the last complete checkpoint, never earlier
    checked = [(got, want) for got, want in zip(resumed_from, expected_from, strict=True)
               if got is not None]
    assert resumed_from[-1] is not None and all(got == want for got, want in checked), \
        (resumed_from, expected_from)
    assert f"train_nlg: finished at step {STEPS}" in text
    survivor, uninterrupted = adaptation_tensors(out), adaptation_tensors(reference)
    assert survivor.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert torch.equal(survivor[name], tensor), f"{name} differs after {len(kills)} kills"
    keys = ("step", "loss", "task_loss", "consistency", "lr")
    assert [{k: r[k] for k in keys} for r in log_rows(out)] == \
        [{k: r[k] for k in keys} for r in log_rows(reference)]
