"""launch/slurm/train_nlg.sbatch, run for real under stand-ins for `srun` and `scontrol`.

The stand-in `srun` starts SLURM_NTASKS copies of the task command with SLURM_PROCID /
SLURM_LOCALID set, as SLURM does on one node; `scontrol show hostnames` prints 127.0.0.1. So the
script's own rank wiring (SLURM_* -> RANK / WORLD_SIZE / LOCAL_RANK, MASTER_ADDR from the node
list) is what brings up the 2-rank job.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dist_env import free_port

REPO = Path(__file__).resolve().parents[2]

FAKE_SRUN = """#!/bin/bash
# Stand-in for srun on one node: drop srun's own options, start SLURM_NTASKS tasks.
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i "$@" & pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""
FAKE_SCONTROL = """#!/bin/bash
[[ "$1 $2" == "show hostnames" ]] || exit 64
echo 127.0.0.1
"""


@pytest.mark.multirank
@pytest.mark.slow
def test_sbatch_script_runs_two_ranks(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHON": sys.executable, "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "node[1]",
           "SLURM_SUBMIT_DIR": str(REPO), "MASTER_PORT": str(free_port()),
           "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    out_dir = tmp_path / "run"
    cmd = ["bash", str(REPO / "launch/slurm/train_nlg.sbatch"), "ds_configs/cpu_zero2.json",
           "tests/multirank/presets/tiny.yaml", str(out_dir), "--max_steps", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("train_nlg: finished at step 2") == 2, "both ranks must finish"
    with open(out_dir / "train_log.csv", newline="") as handle:
        assert [row["step"] for row in csv.DictReader(handle)] == ["1", "2"]
    assert (out_dir / "adaptation" / "adamix_model.safetensors").is_file()
    # Feedback: the loss curve, and DeepSpeed's CSV monitor (enabled in cpu_zero2.json).
    assert (out_dir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out_dir / "monitor" / "adamix" / "Train_adamix_loss.csv", newline="") as handle:
        assert [row["step"] for row in csv.DictReader(handle)] == ["1", "2"]
