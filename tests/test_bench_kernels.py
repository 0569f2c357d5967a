"""benchmarks/bench_kernels.py keeps working between GPU runs: its CPU mode (Triton interpreter,
tiny shapes) runs every benchmark, checks each Triton output against eager before timing, and
writes a results section labelled as a code-path check, never as GPU figures."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_kernels.py"


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the no-GPU path, also on a GPU machine
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cpu_mode_runs_every_benchmark_and_labels_its_results(tmp_path: Path) -> None:
    results = tmp_path / "results.md"
    # aot_eager: the torch.compile code path without inductor's C++ build (minutes on 2 cores)
    proc = _run("--cpu", "--compile_backend", "aot_eager", "--tokens", "130", "--warmup", "0",
                "--repeats", "1", "--results", str(results))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = results.read_text()
    assert "Triton interpreter" in text and "NOT GPU figures" in text
    for table in ("**adapter fwd**", "**adapter fwd+bwd**", "**lora c_attn fwd**",
                  "**fused LM loss fwd+bwd**"):
        assert table in text, table
    assert "compile ms" in text and "compile / triton" in text
    # one token count (130: not a multiple of any block) x three tables + the loss row, each
    # with the error column it checked before timing
    rows = [line for line in text.splitlines() if line.startswith("| d=") or
            line.startswith("| 2x24")]
    assert len(rows) == 4 and all("e-" in row or "0.0e+00" in row for row in rows), text
    assert "n/a (CPU)" in text  # no CUDA memory figure is made up on the CPU


def test_without_cuda_it_refuses_to_produce_gpu_figures() -> None:
    proc = _run("--benches", "adapter")
    assert proc.returncode != 0
    assert "no CUDA device; run with --cpu" in proc.stderr


def test_bad_arguments_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_kernels"] = bench  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    for argv, flag, value in ((["--cpu", "--models", "gpt2-small"], "--models", "gpt2-small"),
                              (["--cpu", "--benches", "adapter,flash"], "--benches", "flash"),
                              (["--loss_shape", "8,512"], "--loss_shape", "4 numbers")):
        with pytest.raises(SystemExit) as exit_info:
            bench.parse_args(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and flag in err and value in err, err
