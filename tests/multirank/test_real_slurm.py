"""``sbatch launch/slurm/train_nlg.sbatch`` on a real Slurm started here
(:mod:`tests.multirank.local_slurm`): two nodes, each slurmd in its own network namespace with
its own address and hostname, one rank per node; or, where namespaces are not allowed, one node
with two tasks. Each job trains two CPU ranks to the end.

Needs Debian's ``slurm-wlm`` and ``munge`` and root (``.ci/run`` installs them; skipped
otherwise). Every daemon, job, namespace and bridge started is stopped at the end. Oracles: an
uninterrupted job; a second job sent ``scancel --signal=USR1`` saves, requeues itself (the script's
``scontrol requeue``), resumes from its checkpoint and ends with the uninterrupted job's losses
and adaptation.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.dist_env import child_env, free_port
from tests.multirank.conftest import (
    REPO_ROOT,
    adaptation_tensors,
    assert_rows_close,
    assert_tensors_close,
    log_rows,
)
from tests.multirank.local_slurm import LocalSlurm, missing_requirement, namespaces_work

pytestmark = [pytest.mark.multirank, pytest.mark.slow]

STEPS = 40


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two nodes in their own network namespaces where the machine allows it, else one node."""
    if (why := missing_requirement()) is not None:
        pytest.skip(why)
    nodes = 2 if namespaces_work(f"adxprobe{os.getpid() % 10000}") else 1
    slurm = LocalSlurm(tmp_path_factory.mktemp("slurm"), nodes=nodes)
    slurm.start()
    try:
        yield slurm
    finally:
        slurm.stop()


def _submit(cluster: LocalSlurm, name: str, preset: Path, ds_config: Path) -> tuple[str, Path]:
    """sbatch the training script for two ranks: one per node, or both on the one node."""
    out = cluster.root / name
    job_env = {**child_env(), "SLURM_CONF": cluster.env["SLURM_CONF"], "PYTHON": sys.executable,
               "MASTER_PORT": str(free_port())}
    job = subprocess.run(
        ["sbatch", "--parsable", f"--nodes={cluster.nodes}",
         f"--ntasks-per-node={2 // cluster.nodes}", "--gpus-per-node=0",
         "--cpus-per-task=1", "--time=20:00", "--open-mode=append",
         f"--output={cluster.root / name}.%j.out",
         str(REPO_ROOT / "launch" / "slurm" / "train_nlg.sbatch"), str(ds_config), str(preset),
         str(out)], cwd=REPO_ROOT, env=job_env, capture_output=True, text=True, check=True)
    return job.stdout.strip().split(";")[0], out


def _state(cluster: LocalSlurm, job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=cluster.env,
                          capture_output=True, text=True).stdout.strip()


def _wait_until_gone(cluster: LocalSlurm, job: str, timeout: float, on_pending=None) -> None:
    deadline = time.monotonic() + timeout
    while (state := _state(cluster, job)) != "":
        if state == "PENDING" and on_pending is not None:
            on_pending()
        assert time.monotonic() < deadline, f"job {job} still {state} after {timeout} s"
        time.sleep(1)


def _job_output(cluster: LocalSlurm, name: str) -> str:
    return "\n".join(p.read_text(errors="replace")
                     for p in sorted(cluster.root.glob(f"{name}.*.out")))


@pytest.fixture(scope="module")
def inputs(cluster):
    preset = yaml.safe_load((REPO_ROOT / "tests/multirank/presets/tiny.yaml").read_text())
    preset["train"].update(max_steps=STEPS, route_check_every=0)
    (cluster.root / "preset.yaml").write_text(yaml.safe_dump(preset))
    config = json.loads((REPO_ROOT / "ds_configs" / "cpu_zero2.json").read_text())
    config["train_micro_batch_size_per_gpu"] = 2
    (cluster.root / "zero2.json").write_text(json.dumps(config))
    return cluster.root / "preset.yaml", cluster.root / "zero2.json"


@pytest.fixture(scope="module")
def uninterrupted(cluster, inputs):
    job, out = _submit(cluster, "uninterrupted", *inputs)
    _wait_until_gone(cluster, job, 300)
    text = _job_output(cluster, "uninterrupted")
    assert f"train_nlg: finished at step {STEPS}" in text, text[-3000:] + cluster.logs()
    return out


def test_sbatch_trains_two_ranks_to_the_end(cluster, uninterrupted):
    assert [int(r["step"]) for r in log_rows(uninterrupted)] == list(range(1, STEPS + 1))
    assert json.loads((uninterrupted / "run_status.json").read_text())["status"] == "finished"
    # the script says where each rank runs: rank r on the r-th node when there are two
    placed = dict(re.findall(r"rank (\d) of 2 on (\S+)", _job_output(cluster, "uninterrupted")))
    nodes = cluster.node_names()
    assert placed == ({"0": nodes[0], "1": nodes[1]} if cluster.nodes == 2
                      else {"0": nodes[0], "1": nodes[0]}), placed


def test_usr1_saves_requeues_and_the_job_finishes_as_the_uninterrupted_one(
        cluster, inputs, uninterrupted):
    job, out = _submit(cluster, "preempted", *inputs)
    deadline = time.monotonic() + 300
    while len(log_rows(out)) < 4:          # training is under way: the handlers are installed
        assert time.monotonic() < deadline and _state(cluster, job), _job_output(cluster,
                                                                                 "preempted")
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", job], env=cluster.env, check=True)

    first_pending: float | None = None   # when the requeued job was first seen pending

    def start_now() -> None:
        # Slurm holds a requeued job ~2 min (BeginTime); skip the rest of the wait. Not in the
        # kill's own second: slurmd refuses a launch whose credential is no newer, in whole
        # seconds, than the revocation of the killed instance ("credential revoked").
        nonlocal first_pending
        if first_pending is None:
            first_pending = time.monotonic()
        if time.monotonic() - first_pending >= 3:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"],
                           env=cluster.env, capture_output=True)

    _wait_until_gone(cluster, job, 600, on_pending=start_now)
    text = _job_output(cluster, "preempted")
    assert "preempted at step" in text and "resuming from" in text, text[-3000:]
    assert f"train_nlg: finished at step {STEPS}" in text
    assert json.loads((out / "run_status.json").read_text())["status"] == "finished"
    assert_rows_close(log_rows(out), log_rows(uninterrupted), 1e-6,
                      "preempted + requeued vs uninterrupted (real Slurm)")
    assert_tensors_close(adaptation_tensors(out), adaptation_tensors(uninterrupted), 1e-6,
                         "preempted + requeued vs uninterrupted (real Slurm)")
