"""`adamix-ds inspect` reproduces the paper's parameter counts on GPT-2 medium (random init)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adamix_ds.cli import main

# 24 blocks x (down 1024*8 + 8, up 8*1024 + 1024); training: 8 downs + 1 shared up.
ADAPTER_INFERENCE = 24 * (1024 * 8 + 8 + 8 * 1024 + 1024)
ADAPTER_TRAINING = 24 * (8 * (1024 * 8 + 8) + 8 * 1024 + 1024)
# 24 blocks x 2 projections (Q, V) x (A 1024x4 + B 4x1024); training: 8 A + 1 shared B.
LORA_INFERENCE = 24 * 2 * (1024 * 4 + 4 * 1024)
LORA_TRAINING = 24 * 2 * (8 * 1024 * 4 + 4 * 1024)
GPT2_MEDIUM_PARAMS = 354_823_168  # published GPT-2 medium (tied LM head counted once)


def _console_script() -> str:
    script = Path(sys.executable).with_name("adamix-ds")
    return str(script) if script.exists() else shutil.which("adamix-ds")


@pytest.mark.slow
def test_inspect_adapter_counts_exact_command():
    assert ADAPTER_INFERENCE == 417_984 and ADAPTER_TRAINING == 1_795_584
    cmd = [_console_script(), "inspect", "--backbone", "gpt2-medium", "--init", "random",
           "--method", "adapter", "--experts", "8", "--bottleneck", "8", "--share", "up", "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                    env=env).stdout)
    assert out["inference_params"] == ADAPTER_INFERENCE
    assert out["trainable_params"] == ADAPTER_TRAINING
    assert out["backbone_params"] == GPT2_MEDIUM_PARAMS
    assert out["adapted_modules"] == 24


@pytest.mark.slow
def test_inspect_lora_counts(capsys):
    assert LORA_INFERENCE == 393_216 and LORA_TRAINING == 1_769_472
    argv = ["inspect", "--backbone", "gpt2-medium", "--init", "random", "--method", "lora",
            "--experts", "8", "--rank", "4", "--targets", "q,v", "--share", "up", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["inference_params"] == LORA_INFERENCE
    assert out["trainable_params"] == LORA_TRAINING
    assert out["adapted_modules"] == 24


def test_bad_flag_value_is_a_clear_error(capsys):
    argv = ["inspect", "--backbone", "gpt2", "--init", "random", "--experts", "0"]
    assert main(argv) == 2
    assert "num_experts must be an int >= 1" in capsys.readouterr().err


def test_unknown_backbone_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["inspect", "--backbone", "no-such-model-xyz", "--init", "random"]
    assert main(argv) == 2
    assert "unknown backbone 'no-such-model-xyz'" in capsys.readouterr().err


def test_merge_and_export_commands(tmp_path, capsys):
    """merge / export on a checkpoint of a local backbone directory."""
    import torch

    from adamix_ds import AdaMixConfig, adaptation_parameters, inject_adamix
    from adamix_ds.checkpoint import save_adaptation
    from tests.models import tiny_model

    backbone = tiny_model("gpt2")
    backbone.save_pretrained(tmp_path / "backbone")
    cfg = AdaMixConfig(num_experts=3, rank=2)
    inject_adamix(backbone, cfg)
    with torch.no_grad():
        for p in adaptation_parameters(backbone).values():
            p.normal_()
    save_adaptation(backbone, tmp_path / "ckpt", cfg)
    common = ["--backbone", str(tmp_path / "backbone")]
    assert main(["merge", str(tmp_path / "ckpt"), *common, "--out", str(tmp_path / "m")]) == 0
    assert json.loads((tmp_path / "m" / "adamix_config.json").read_text())["merged"] == "average"
    assert main(["export", str(tmp_path / "ckpt"), *common, "--out", str(tmp_path / "p")]) == 0
    peft_cfg = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    assert peft_cfg["r"] == 4 and peft_cfg["fan_in_fan_out"] is True
    assert peft_cfg["lora_alpha"] == cfg.alpha / cfg.rank * 4


def test_export_merged_writes_a_model_that_from_pretrained_serves(tmp_path, capsys):
    """export --merged: a dense directory; plain transformers loads it and its logits equal the
    AdaMix model's merged mode; the backbone directory's tokenizer files travel with it."""
    import torch
    from transformers import AutoModelForCausalLM

    from adamix_ds import AdaMixConfig, adaptation_parameters, inject_adamix
    from adamix_ds.checkpoint import save_adaptation
    from adamix_ds.data import load_tokenizer
    from tests.models import logits, tiny_model, tokens

    backbone = tiny_model("gpt2")
    backbone.save_pretrained(tmp_path / "backbone")
    load_tokenizer().save_pretrained(tmp_path / "backbone")
    cfg = AdaMixConfig(num_experts=3, rank=2)
    inject_adamix(backbone, cfg)
    with torch.no_grad():
        for p in adaptation_parameters(backbone).values():
            p.normal_(0, 0.2)
    save_adaptation(backbone, tmp_path / "ckpt", cfg)
    expected = logits(backbone.eval(), tokens())
    common = [str(tmp_path / "ckpt"), "--backbone", str(tmp_path / "backbone")]
    assert main(["export", *common, "--merged", str(tmp_path / "dense")]) == 0
    served = AutoModelForCausalLM.from_pretrained(tmp_path / "dense").eval()
    torch.testing.assert_close(logits(served, tokens()), expected, atol=2e-5, rtol=0)
    assert (tmp_path / "dense" / "tokenizer.json").is_file()
    assert main(["export", *common]) == 2
    assert "give --out DIR (a PEFT adapter) and/or --merged DIR" in capsys.readouterr().err
