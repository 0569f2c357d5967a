"""``sbatch launch/slurm/train_nlg.sbatch`` on a real Slurm: munged, slurmctld and slurmd started
here (one node, two tasks), each job training two CPU ranks to the end.

Needs Debian's ``slurm-wlm`` and ``munge`` and root (``.ci/run`` installs them; skipped
otherwise). The cluster gets its own config, ports, state and munge socket in a temporary
directory, and every daemon and job started is stopped at the end. Oracles: an uninterrupted
job; a second job sent ``scancel --signal=USR1`` saves, requeues itself (the script's
``scontrol requeue``), resumes from its checkpoint and ends with the uninterrupted job's losses
and adaptation.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
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

pytestmark = [pytest.mark.multirank, pytest.mark.slow]

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel")
STEPS = 40


def _missing() -> str | None:
    absent = [d for d in DAEMONS if shutil.which(d) is None]
    if absent:
        return f"Slurm / munge not installed ({absent}); apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "starting slurmd / munged needs root"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if (why := _missing()) is not None:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log", "munge"):
        (root / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    sock = root / "munge" / "munge.sock"
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=adamixci", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", f"AuthInfo=socket={sock}",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/builtin", "MpiDefault=none", "ReturnToService=2", "JobRequeue=1",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        f"NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN",
        f"PartitionName=ci Nodes={host} Default=YES MaxTime=INFINITE State=UP "
        "OverSubscribe=YES", ""]))
    env = dict(os.environ, SLURM_CONF=str(conf))
    key = Path("/etc/munge/munge.key")
    if not key.is_file():
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
    procs = [subprocess.Popen(
        ["munged", "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
         f"--pid-file={root / 'munge' / 'munged.pid'}", f"--log-file={root / 'log' / 'munged.log'}",
         f"--seed-file={root / 'munge' / 'seed'}"], env=env)]
    deadline = time.monotonic() + 20
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    procs += [subprocess.Popen(["slurmctld", "-D", "-i"], env=env),
              subprocess.Popen(["slurmd", "-D"], env=env)]
    try:
        deadline = time.monotonic() + 60
        while True:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                                   text=True).stdout.strip()
            if state == "idle":
                break
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text()[-2000:] for p in (root / "log").iterdir())
                pytest.fail(f"the Slurm node never became idle ({state!r})\n{logs}")
            time.sleep(0.5)
        yield root, env
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _submit(cluster, name: str, preset: Path, ds_config: Path) -> tuple[str, Path]:
    root, env = cluster
    out = root / name
    job_env = {**child_env(), "SLURM_CONF": env["SLURM_CONF"], "PYTHON": sys.executable,
               "MASTER_PORT": str(free_port())}
    job = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0",
         "--cpus-per-task=1", "--time=20:00", "--open-mode=append",
         f"--output={root / name}.%j.out",
         str(REPO_ROOT / "launch" / "slurm" / "train_nlg.sbatch"), str(ds_config), str(preset),
         str(out)], cwd=REPO_ROOT, env=job_env, capture_output=True, text=True, check=True)
    return job.stdout.strip().split(";")[0], out


def _state(cluster, job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=cluster[1],
                          capture_output=True, text=True).stdout.strip()


def _wait_until_gone(cluster, job: str, timeout: float, on_pending=None) -> None:
    deadline = time.monotonic() + timeout
    while (state := _state(cluster, job)) != "":
        if state == "PENDING" and on_pending is not None:
            on_pending()
        assert time.monotonic() < deadline, f"job {job} still {state} after {timeout} s"
        time.sleep(1)


def _job_output(cluster, name: str) -> str:
    return "\n".join(p.read_text(errors="replace")
                     for p in sorted(cluster[0].glob(f"{name}.*.out")))


@pytest.fixture(scope="module")
def inputs(cluster):
    root, _ = cluster
    preset = yaml.safe_load((REPO_ROOT / "tests/multirank/presets/tiny.yaml").read_text())
    preset["train"].update(max_steps=STEPS, route_check_every=0)
    (root / "preset.yaml").write_text(yaml.safe_dump(preset))
    config = json.loads((REPO_ROOT / "ds_configs" / "cpu_zero2.json").read_text())
    config["train_micro_batch_size_per_gpu"] = 2
    (root / "zero2.json").write_text(json.dumps(config))
    return root / "preset.yaml", root / "zero2.json"


@pytest.fixture(scope="module")
def uninterrupted(cluster, inputs):
    job, out = _submit(cluster, "uninterrupted", *inputs)
    _wait_until_gone(cluster, job, 300)
    text = _job_output(cluster, "uninterrupted")
    assert f"train_nlg: finished at step {STEPS}" in text, text[-3000:]
    return out


def test_sbatch_trains_two_ranks_to_the_end(uninterrupted):
    assert [int(r["step"]) for r in log_rows(uninterrupted)] == list(range(1, STEPS + 1))
    assert json.loads((uninterrupted / "run_status.json").read_text())["status"] == "finished"


def test_usr1_saves_requeues_and_the_job_finishes_as_the_uninterrupted_one(
        cluster, inputs, uninterrupted):
    root, env = cluster
    job, out = _submit(cluster, "preempted", *inputs)
    deadline = time.monotonic() + 300
    while len(log_rows(out)) < 4:          # training is under way: the handlers are installed
        assert time.monotonic() < deadline and _state(cluster, job), _job_output(cluster,
                                                                                 "preempted")
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", job], env=env, check=True)

    def start_now() -> None:  # Slurm holds a requeued job ~2 min (BeginTime); skip the wait
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env,
                       capture_output=True)

    _wait_until_gone(cluster, job, 600, on_pending=start_now)
    text = _job_output(cluster, "preempted")
    assert "preempted at step" in text and "resuming from" in text, text[-3000:]
    assert f"train_nlg: finished at step {STEPS}" in text
    assert json.loads((out / "run_status.json").read_text())["status"] == "finished"
    assert_rows_close(log_rows(out), log_rows(uninterrupted), 1e-6,
                      "preempted + requeued vs uninterrupted (real Slurm)")
    assert_tensors_close(adaptation_tensors(out), adaptation_tensors(uninterrupted), 1e-6,
                         "preempted + requeued vs uninterrupted (real Slurm)")
