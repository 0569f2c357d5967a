"""DeepSpeed's CPU all-reduce buffers do not outlive a training run.

Oracle: DeepSpeed itself. A bare ``deepspeed.init_distributed`` on the CPU accelerator, with all
ranks on one machine (``LOCAL_SIZE`` = world size, as its launcher sets it), leaves
``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` behind after its process exits
(the leak, shown on the installed version); a 2-rank ``train_nlg.py`` run under the launcher
leaves none for its port.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dist_env import child_env, free_port
from tests.multirank.conftest import BIN, REPO_ROOT, run_ok, train_args

pytestmark = [pytest.mark.multirank, pytest.mark.slow]
SHM = Path("/dev/shm")


def _buffers(port: int) -> list[Path]:
    return sorted(SHM.glob(f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_*"))


@pytest.fixture(autouse=True)
def _needs_dev_shm():
    pytest.importorskip("deepspeed")
    if not SHM.is_dir():
        pytest.skip("no /dev/shm")


def test_bare_init_distributed_leaves_its_buffers():
    port = free_port()
    code = "import deepspeed; deepspeed.init_distributed(dist_backend='gloo')"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env=child_env(
        RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), LOCAL_SIZE="2", MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for r in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    left = _buffers(port)
    for path in left:
        path.unlink()
    if not left:
        pytest.skip("this DeepSpeed build made no shm all-reduce buffer (no CPU shm comm op)")
    assert [p.name[-2:] for p in left] == ["_0", "_1"]


def test_a_two_rank_run_unlinks_every_buffer(tmp_path):
    config = json.loads((REPO_ROOT / "ds_configs" / "cpu_zero2.json").read_text())
    config["train_micro_batch_size_per_gpu"] = 2
    (tmp_path / "ds.json").write_text(json.dumps(config))
    port = free_port()
    out = tmp_path / "run"
    cmd = [str(BIN / "deepspeed"), "--num_accelerators", "2", "--master_port", str(port),
           *train_args(tmp_path / "ds.json", REPO_ROOT / "tests/multirank/presets/tiny.yaml",
                       out, "--max_steps", "2")]
    run_ok("2 ranks", cmd, out, child_env())
    assert _buffers(port) == []
