"""Tests for presets (adamix_ds.preset), launch/train_nlg.py's overrides, and the schedule
arithmetic of adamix_ds.training.engine.

Expected values are written by hand (key names in error messages, override results, an LR table
worked out with fractions). ``engine`` imports deepspeed (a few seconds) but nothing is initialised.
"""
from __future__ import annotations

import importlib.util
import json
import re
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from adamix_ds.config import AdaMixConfig, ConfigError
from adamix_ds.preset import Preset, TrainSettings
from adamix_ds.training.ds_config import read_ds_config

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "launch" / "presets").glob("*.yaml"))
DEMO = ROOT / "launch" / "presets" / "demo.yaml"


def _header(path: Path) -> str:
    """The leading comment block, '#' stripped and shell continuations joined."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return re.sub(r"\\\s+", " ", "\n".join(lines))


def _load_launcher():
    spec = importlib.util.spec_from_file_location("train_nlg_launcher",
                                                  ROOT / "launch" / "train_nlg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the shipped presets ------------------------------------------------------------------------
def test_presets_exist():
    """At least the demo preset ships."""
    assert DEMO in PRESETS


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_loads_and_header_has_launch_command(path):
    """Each preset loads, starts with a comment header whose launch command runs
    launch/train_nlg.py or launch/train_nlu.py --ds_config <an existing, valid ds_config>
    --preset <this file>."""
    preset = Preset.load(path)
    assert isinstance(preset.adamix, AdaMixConfig) and isinstance(preset.train, TrainSettings)
    assert path.read_text().startswith("#")
    header = _header(path)
    command = re.search(r"launch/train_nl[gu]\.py --ds_config (\S+)(.*)", header)
    assert command, header
    ds_config = ROOT / command.group(1)
    read_ds_config(ds_config, world_size=1)
    preset_arg = re.search(r"--preset (\S+)", command.group(2))
    assert preset_arg and (ROOT / preset_arg.group(1)).resolve() == path.resolve()


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_values_are_the_files_values(path):
    """Every value written in the YAML file ends up in the Preset (nothing silently defaulted);
    lists come back as tuples where the dataclass stores tuples."""
    raw = yaml.safe_load(path.read_text())
    preset = Preset.load(path)
    for key, value in raw.items():
        if key in ("adamix", "train"):
            section = getattr(preset, key)
            for sub, sub_value in value.items():
                got = getattr(section, sub)
                assert (list(got) if isinstance(got, tuple) else got) == sub_value, (key, sub)
        else:
            assert getattr(preset, key) == value, key


# --- errors ---------------------------------------------------------------------------------------
def _load_error(tmp_path, text: str) -> tuple[Path, str]:
    """Write a preset, load it, return (path, the ConfigError's message); loading must fail."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        Preset.load(path)
    return path, str(err.value)


def test_missing_preset_file(tmp_path):
    """A missing preset names the path."""
    path = tmp_path / "none.yaml"
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        Preset.load(path)


@pytest.mark.parametrize("text,key", [
    ("backbone: gpt2\nbackbon: gpt2\n", "backbon"),
    ("train:\n  lr: 1.0e-3\n  learning_rate: 1.0e-3\n", "learning_rate"),
    ("adamix:\n  num_experts: 2\n  num_expert: 2\n", "num_expert"),
])
def test_unknown_key_names_file_and_key(tmp_path, text, key):
    """A typo at top level, under train or under adamix is a ConfigError naming file and key."""
    path, message = _load_error(tmp_path, text)
    assert str(path) in message and repr(key) in message, message


def test_unknown_train_key_names_the_section(tmp_path):
    """An unknown train key says it is under 'train'."""
    path = _write(tmp_path, "train:\n  warmup: 3\n")
    with pytest.raises(ConfigError, match=r"train: unknown key\(s\) \['warmup'\]"):
        Preset.load(path)


def test_invalid_yaml_reports_file_and_line(tmp_path):
    """Broken YAML is a ConfigError 'file:line' with the (1-based) line of the problem: here the
    unclosed flow list of line 2 runs into line 3."""
    path = _write(tmp_path, "backbone: gpt2\ntrain: [1, 2\nmax_seq_len: 3\n")
    with pytest.raises(ConfigError) as err:
        Preset.load(path)
    assert f"{path}:3: invalid YAML" in str(err.value)
    path = _write(tmp_path, "backbone: gpt2\ntrain:\n  lr: 1\n bad: 2\n")
    with pytest.raises(ConfigError) as err:
        Preset.load(path)
    assert f"{path}:4: invalid YAML" in str(err.value)


@pytest.mark.parametrize("text,field", [
    ("train:\n  consistency: both\n", "consistency"),
    ("train:\n  max_steps: 0\n", "max_steps"),
    ("train:\n  lr: 0\n", "lr"),
    ("train:\n  epochs: 0\n", "epochs"),
    ("adamix:\n  num_experts: 0\n", "num_experts"),
    ("adamix:\n  method: prefix\n", "method"),
])
def test_invalid_values_name_the_field(tmp_path, text, field):
    """Invalid values are ConfigErrors naming the file and the field."""
    path, message = _load_error(tmp_path, text)
    assert str(path) in message and field in message, message


def test_max_steps_makes_epochs_irrelevant():
    """With max_steps set, epochs is not checked (max_steps decides the length)."""
    assert TrainSettings(epochs=0, max_steps=5).max_steps == 5


# --- round trip -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_to_dict_from_dict_round_trip(path):
    """to_dict is JSON-serialisable and from_dict(to_dict(p)) == p, also through JSON (lists
    come back as tuples)."""
    preset = Preset.load(path)
    assert Preset.from_dict(preset.to_dict(), "rt") == preset
    assert Preset.from_dict(json.loads(json.dumps(preset.to_dict())), "rt") == preset
    custom = Preset(backbone="x", max_train_examples=5,
                    adamix=AdaMixConfig(method="adapter", num_experts=2, share="none"),
                    train=TrainSettings(max_steps=9, adam_betas=(0.8, 0.9), save_every=3))
    assert Preset.from_dict(json.loads(json.dumps(custom.to_dict())), "rt") == custom


# --- launch/train_nlg.py overrides ----------------------------------------------------------------
def test_preset_from_args_applies_overrides():
    """--max_steps / --experts override only those preset values; everything else is demo.yaml."""
    launcher = _load_launcher()
    args = launcher.parse_args(["--ds_config", "x", "--preset", str(DEMO), "--output_dir", "y",
                                "--max_steps", "7", "--experts", "2"])
    preset = launcher.preset_from_args(args)
    assert preset.train.max_steps == 7 and preset.adamix.num_experts == 2
    demo = Preset.load(DEMO)
    assert preset.to_dict()["train"] == {**demo.to_dict()["train"], "max_steps": 7}
    assert preset.to_dict()["adamix"] == {**demo.to_dict()["adamix"], "num_experts": 2}
    assert {k: v for k, v in preset.to_dict().items() if k not in ("train", "adamix")} == \
        {k: v for k, v in demo.to_dict().items() if k not in ("train", "adamix")}
    plain = launcher.preset_from_args(launcher.parse_args(
        ["--ds_config", "x", "--preset", str(DEMO), "--output_dir", "y"]))
    assert plain == demo and not plain.train.fused_loss
    fused = launcher.preset_from_args(launcher.parse_args(
        ["--ds_config", "x", "--preset", str(DEMO), "--output_dir", "y", "--fused_loss"]))
    assert fused.train.fused_loss and fused.to_dict()["adamix"] == demo.to_dict()["adamix"]


def test_bad_override_value_errors():
    """An override that fails validation is a ConfigError naming the field and saying it came
    with command-line overrides; a value of the wrong type is an argparse error."""
    launcher = _load_launcher()
    base = ["--ds_config", "x", "--preset", str(DEMO), "--output_dir", "y"]
    for extra, field in ((["--consistency", "both"], "consistency"),
                         (["--max_steps", "0"], "max_steps"),
                         (["--experts", "0"], "num_experts")):
        with pytest.raises(ConfigError) as err:
            launcher.preset_from_args(launcher.parse_args(base + extra))
        message = str(err.value)
        assert field in message and "command-line overrides" in message, message
    with pytest.raises(SystemExit):
        launcher.parse_args(base + ["--max_steps", "seven"])


# --- schedule arithmetic (engine.py) --------------------------------------------------------------
def test_linear_warmup_decay_table():
    """warmup=3, total=10: s/3 for s < 3, then (10-s)/7 down to 0 at s=10, never negative."""
    from adamix_ds.training.engine import linear_warmup_decay
    f = linear_warmup_decay(3, 10)
    expected = [Fraction(0, 3), Fraction(1, 3), Fraction(2, 3),                 # warmup
                Fraction(7, 7), Fraction(6, 7), Fraction(5, 7), Fraction(4, 7),  # decay
                Fraction(3, 7), Fraction(2, 7), Fraction(1, 7), Fraction(0),
                Fraction(0), Fraction(0)]                                       # past the end
    for step, value in enumerate(expected):
        assert f(step) == pytest.approx(float(value), abs=1e-15), step
    # no warmup: starts at 1 and reaches 0 at total
    g = linear_warmup_decay(0, 4)
    assert [g(s) for s in range(6)] == pytest.approx([1, 0.75, 0.5, 0.25, 0, 0])
    assert all(f(s) >= 0 for s in range(50)) and all(0 <= f(s) <= 1 for s in range(50))


def test_total_optimizer_steps():
    """max_steps wins; otherwise floor(epochs x micro-batches per epoch / accumulation), >= 1."""
    from adamix_ds.training.engine import total_optimizer_steps
    assert total_optimizer_steps(100, 4, TrainSettings(epochs=3, max_steps=7)) == 7
    assert total_optimizer_steps(10, 1, TrainSettings(epochs=3)) == 30
    assert total_optimizer_steps(10, 3, TrainSettings(epochs=3)) == 10          # 30 / 3
    assert total_optimizer_steps(10, 3, TrainSettings(epochs=2.5)) == 8         # 25 / 3
    assert total_optimizer_steps(10, 4, TrainSettings(epochs=1)) == 2           # 10 / 4
    assert total_optimizer_steps(5, 4, TrainSettings(epochs=0.1)) == 1          # 0.125 -> 1
    assert total_optimizer_steps(1, 8, TrainSettings(epochs=1)) == 1            # 1/8 -> 1


def test_total_optimizer_steps_exact_for_decimal_epochs():
    """Fractional epochs written in decimal: 0.57 x 200 = 114 micro-batches = 2 steps of 57."""
    from adamix_ds.training.engine import total_optimizer_steps
    assert total_optimizer_steps(200, 57, TrainSettings(epochs=0.57)) == 2


@pytest.mark.parametrize("flag", ["fused_loss", "gradient_checkpointing"])
def test_switch_that_is_not_a_boolean_names_file_and_key(tmp_path, flag):
    """``gradient_checkpointing: "no"`` would be truthy; a switch must be a YAML boolean."""
    path, message = _load_error(tmp_path, f"train:\n  {flag}: 'no'\n")
    assert str(path) in message and f"train.{flag} must be true or false" in message, message


def test_collective_timeout_must_be_positive(tmp_path):
    path, message = _load_error(tmp_path, "train:\n  collective_timeout_s: 0\n")
    assert str(path) in message and "train.collective_timeout_s must be > 0" in message
