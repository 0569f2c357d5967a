"""Tests for adamix_ds.training.ds_config: reading and checking DeepSpeed configs (pure python).

Each invalid config is written to a temporary file and must be refused by ``read_ds_config`` with
a DSConfigError whose message names the file and the offending key; expected values are written
out by hand. Nothing here starts DeepSpeed.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from adamix_ds.training.ds_config import (
    DSConfigError,
    check_ds_config,
    offloads_optimizer,
    precision,
    read_ds_config,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "ds_configs").glob("*.json"))
BASE = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
        "gradient_clipping": 1.0, "zero_optimization": {"stage": 2}}


def _write(tmp_path: Path, config, name: str = "ds.json") -> Path:
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else json.dumps(config, indent=2))
    return path


def _refused(tmp_path: Path, config, *words: str, world_size=None) -> str:
    """read_ds_config must raise DSConfigError naming the file and every word; returns message."""
    path = _write(tmp_path, config)
    with pytest.raises(DSConfigError) as err:
        read_ds_config(path, world_size)
    message = str(err.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, (word, message)
    return message


def test_shipped_configs_exist():
    """The repository ships the ds_configs the README and presets name."""
    names = {p.name for p in SHIPPED}
    assert {"cpu_zero0.json", "cpu_zero2.json", "cpu_zero3.json", "zero0_bf16.json",
            "zero1_bf16.json", "zero2_bf16.json", "zero3_bf16.json",
            "zero3_offload.json"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
@pytest.mark.parametrize("world_size", [None, 1, 2])
def test_shipped_config_validates(path, world_size):
    """Every shipped ds_config loads and passes the checks for 1 and 2 ranks, and leaves the
    optimizer and schedule to the preset."""
    config = read_ds_config(path, world_size)
    assert config == json.loads(path.read_text())
    assert "optimizer" not in config and "scheduler" not in config
    assert isinstance(config["train_micro_batch_size_per_gpu"], int)


def test_precision_and_offload_of_shipped_configs():
    """precision(): bf16 for the *_bf16 / offload configs, fp32 for the cpu_* ones; only
    zero3_offload offloads the optimizer."""
    expected_precision = {"cpu_zero0.json": "fp32", "cpu_zero2.json": "fp32",
                          "cpu_zero3.json": "fp32", "zero0_bf16.json": "bf16",
                          "zero1_bf16.json": "bf16", "zero2_bf16.json": "bf16",
                          "zero3_bf16.json": "bf16", "zero3_offload.json": "bf16"}
    for path in SHIPPED:
        if path.name not in expected_precision:
            continue
        config = read_ds_config(path)
        assert precision(config) == expected_precision[path.name], path.name
        assert offloads_optimizer(config) == (path.name == "zero3_offload.json"), path.name


def test_precision_and_offload_hand_built():
    """fp16 section -> 'fp16'; disabled sections -> 'fp32'; offload device 'none' is no offload."""
    assert precision({"fp16": {"enabled": True}}) == "fp16"
    assert precision({"fp16": {"enabled": False}, "bf16": {"enabled": False}}) == "fp32"
    assert precision({"bf16": {"enabled": True}, "fp16": {"enabled": False}}) == "bf16"
    assert precision({}) == "fp32"
    assert not offloads_optimizer({"zero_optimization": {"stage": 2,
                                                         "offload_optimizer": {"device": "none"}}})
    assert offloads_optimizer({"zero_optimization": {"stage": 2,
                                                     "offload_optimizer": {"device": "cpu"}}})
    assert not offloads_optimizer({})


def test_base_config_is_valid(tmp_path):
    """The hand-built base used below passes, with and without a consistent train_batch_size."""
    read_ds_config(_write(tmp_path, BASE), world_size=3)
    read_ds_config(_write(tmp_path, {**BASE, "train_batch_size": 4 * 2 * 3}), world_size=3)
    check_ds_config(dict(BASE), "inline")


def test_missing_file(tmp_path):
    """A missing file is refused with its path."""
    path = tmp_path / "nope.json"
    with pytest.raises(DSConfigError) as err:
        read_ds_config(path)
    assert str(path) in str(err.value) and "no such file" in str(err.value)


def test_invalid_json_reports_line(tmp_path):
    """Broken JSON is refused as path:line:col with the line of the error (here line 3)."""
    text = '{\n  "train_micro_batch_size_per_gpu": 4,\n  "gradient_clipping": 1.0,,\n}\n'
    message = _refused(tmp_path, text, "invalid JSON")
    assert f"{tmp_path / 'ds.json'}:3:" in message


def test_auto_values_refused(tmp_path):
    """'auto' (HF Trainer placeholders) is refused, naming the key."""
    _refused(tmp_path, {**BASE, "train_micro_batch_size_per_gpu": "auto"}, "auto",
             "train_micro_batch_size_per_gpu")
    _refused(tmp_path, {**BASE, "gradient_clipping": "auto"}, "auto", "gradient_clipping")


def test_nested_auto_refused(tmp_path):
    """A nested 'auto' (the usual HF form bf16.enabled = 'auto') is refused too."""
    _refused(tmp_path, {**BASE, "bf16": {"enabled": "auto"}}, "auto", "bf16")


@pytest.mark.parametrize("section", ["optimizer", "scheduler"])
def test_optimizer_or_scheduler_section_refused(tmp_path, section):
    """An optimizer / scheduler section (a second owner of the lr) is refused, naming it."""
    _refused(tmp_path, {**BASE, section: {"type": "AdamW", "params": {"lr": 1e-3}}}, section)


def test_fp16_and_bf16_both_enabled(tmp_path):
    """fp16 and bf16 both enabled is refused, naming both; one of them enabled is fine."""
    _refused(tmp_path, {**BASE, "fp16": {"enabled": True}, "bf16": {"enabled": True}},
             "fp16", "bf16")
    read_ds_config(_write(tmp_path, {**BASE, "fp16": {"enabled": False},
                                     "bf16": {"enabled": True}}))


@pytest.mark.parametrize("micro", [0, -1, 2.5, "8", None])
def test_bad_micro_batch(tmp_path, micro):
    """train_micro_batch_size_per_gpu must be an int >= 1 (0, negative, float, string, missing)."""
    config = {**BASE, "train_micro_batch_size_per_gpu": micro}
    if micro is None:
        del config["train_micro_batch_size_per_gpu"]
    _refused(tmp_path, config, "train_micro_batch_size_per_gpu")


def test_bool_micro_batch_refused(tmp_path):
    """JSON true is not a micro-batch size."""
    _refused(tmp_path, {**BASE, "train_micro_batch_size_per_gpu": True},
             "train_micro_batch_size_per_gpu")


@pytest.mark.parametrize("accum", [0, -2, 1.5, "2"])
def test_bad_accumulation(tmp_path, accum):
    """gradient_accumulation_steps must be an int >= 1."""
    _refused(tmp_path, {**BASE, "gradient_accumulation_steps": accum},
             "gradient_accumulation_steps")


def test_accumulation_defaults_to_one(tmp_path):
    """Without gradient_accumulation_steps, train_batch_size must equal micro x world."""
    config = {k: v for k, v in BASE.items() if k != "gradient_accumulation_steps"}
    read_ds_config(_write(tmp_path, {**config, "train_batch_size": 8}), world_size=2)
    _refused(tmp_path, {**config, "train_batch_size": 16}, "train_batch_size", world_size=2)


def test_inconsistent_train_batch_size_shows_the_numbers(tmp_path):
    """train_batch_size != micro x accum x world is refused with all four numbers; it is only
    checked when the world size is known."""
    config = {**BASE, "train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 5,
              "train_batch_size": 31}
    message = _refused(tmp_path, config, "train_batch_size 31", world_size=2)
    for part in ("train_micro_batch_size_per_gpu 3", "gradient_accumulation_steps 5",
                 "world size 2"):
        assert part in message, message
    read_ds_config(_write(tmp_path, config))                      # no world size: no check
    read_ds_config(_write(tmp_path, {**config, "train_batch_size": 30}), world_size=2)


@pytest.mark.parametrize("stage", [4, -1, "2", 1.5])
def test_bad_zero_stage(tmp_path, stage):
    """zero_optimization.stage must be 0, 1, 2 or 3."""
    _refused(tmp_path, {**BASE, "zero_optimization": {"stage": stage}}, "zero_optimization.stage")


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_offload_param_needs_stage_3(tmp_path, stage):
    """offload_param to cpu/nvme below stage 3 is refused, naming offload_param and the stage;
    at stage 3, or with device 'none', it is accepted."""
    zero = {"stage": stage, "offload_param": {"device": "cpu"}}
    _refused(tmp_path, {**BASE, "zero_optimization": zero}, "offload_param", f"stage {stage}")
    read_ds_config(_write(tmp_path, {**BASE, "zero_optimization": {**zero, "stage": 3}}))
    read_ds_config(_write(tmp_path, {**BASE, "zero_optimization": {
        "stage": stage, "offload_param": {"device": "none"}}}))


def test_offload_optimizer_needs_stage_1(tmp_path):
    """offload_optimizer at stage 0 is refused; from stage 1 on it is accepted."""
    zero = {"stage": 0, "offload_optimizer": {"device": "cpu"}}
    _refused(tmp_path, {**BASE, "zero_optimization": zero}, "offload_optimizer")
    read_ds_config(_write(tmp_path, {**BASE, "zero_optimization": {**zero, "stage": 1}}))


@pytest.mark.parametrize("clip", [-1.0, -1e-9, "1.0"])
def test_bad_gradient_clipping(tmp_path, clip):
    """gradient_clipping must be a number >= 0; 0 (no clipping) and ints are fine."""
    _refused(tmp_path, {**BASE, "gradient_clipping": clip}, "gradient_clipping")


def test_gradient_clipping_zero_and_int_accepted(tmp_path):
    """0 means no clipping; an int is a number."""
    read_ds_config(_write(tmp_path, {**BASE, "gradient_clipping": 0}))
    read_ds_config(_write(tmp_path, {**BASE, "gradient_clipping": 2}))


def test_check_ds_config_names_the_source():
    """check_ds_config on a dict names the given source string."""
    with pytest.raises(DSConfigError, match=r"^my-source: .*gradient_accumulation_steps"):
        check_ds_config({**BASE, "gradient_accumulation_steps": 0}, "my-source")
