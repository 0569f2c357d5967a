"""The memory benchmarks on tiny sizes: they run, print their tables, and the variants they
compare compute the same thing (checkpointing: the same loss and gradients; ZeRO-3 built in
partitions on 2 ranks: the same per-step losses as ZeRO-0)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.dist_env import child_env
from tests.multirank.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def _run(script: str, *flags: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / script), *flags],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_checkpointing_benchmark_compares_equal_steps(tmp_path):
    out = _run("bench_checkpointing_memory.py", "--seq", "16", "--batch", "2", "--n_layer", "2",
               "--threads", "1", "--json", str(tmp_path / "r.json"))
    assert "| checkpointed |" in out and "| plain |" in out
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["plain"]["loss"] == results["checkpointed"]["loss"]
    assert results["plain"]["grad_abs_sum"] == pytest.approx(
        results["checkpointed"]["grad_abs_sum"], rel=1e-6)
    assert all(r["extra_mib"] > 0 for r in results.values())


@pytest.mark.multirank
def test_zero3_memory_benchmark_reports_each_rank_and_equal_losses(tmp_path):
    out = _run("bench_zero3_memory.py", "--backbone", "gpt2", "--n_layer", "2", "--steps", "2",
               "--seq", "32", "--port", "29871", "--json", str(tmp_path / "r.json"),
               env=child_env())
    results = {r["stage"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    assert sorted(results) == [0, 3]
    for stage in (0, 3):
        assert [r["rank"] for r in results[stage]["ranks"]] == [0, 1]
        assert len(results[stage]["losses"]) == 2
    assert results[3]["losses"] == pytest.approx(results[0]["losses"], rel=1e-5)
    assert out.count("\n| 3 |") == 2 and out.count("\n| 0 |") == 2
