"""The PEFT comparison benchmark runs end to end on a one-layer GPT-2 and compares equal work."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")
ROOT = Path(__file__).resolve().parents[1]


def test_bench_vs_peft_smoke(tmp_path: Path) -> None:
    raw = tmp_path / "times.json"
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_vs_peft.py"), "--n_layer", "1",
         "--batch", "1", "--seq", "16", "--repeats", "2", "--warmup", "0",
         "--variants", "peft,adamix_1x,adamix_paired", "--json", str(raw)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(raw.read_text())
    # equal work: PEFT's LoRA r=4 on c_attn and one adamix-ds expert train the same parameters
    # (768 * 4 + 4 * 2304 per layer)
    assert result["trainable"]["peft"] == result["trainable"]["adamix_1x"] == 768 * 4 + 4 * 2304
    assert result["trainable"]["adamix_paired"] > result["trainable"]["adamix_1x"]
    assert result["ratio"]["peft"] == 1.0
    assert all(len(t) == 2 and min(t) > 0 for t in result["times_s"].values())
    assert "| adamix_paired |" in out.stdout
