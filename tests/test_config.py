"""AdaMixConfig validation: every invalid value fails with a message naming its field."""
from __future__ import annotations

import json

import pytest

from adamix_ds.config import AdaMixConfig, ConfigError


@pytest.mark.parametrize("field,value", [
    ("num_experts", 0), ("num_experts", -2), ("num_experts", 2.5), ("rank", 0),
    ("bottleneck", 0), ("ensemble_passes", 0), ("method", "prefix"), ("share", "both"),
    ("placement", "everywhere"), ("activation", "swish"), ("inference", "vote"),
    ("consistency_mode", "js"), ("alpha", 0.0), ("lora_dropout", 1.0), ("routing_seed", -1),
    ("consistency_weight", -1.0),
])
def test_invalid_value_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        AdaMixConfig(**{field: value})


def test_unknown_target_lists_canonical_names():
    with pytest.raises(ConfigError, match=r"targets: unknown target 'query'.*'q'"):
        AdaMixConfig(targets=("q", "query"))


def test_invalid_regex_target_and_extra_trainable():
    with pytest.raises(ConfigError, match="targets: invalid regex"):
        AdaMixConfig(targets=(r"h\.(\d+",))
    with pytest.raises(ConfigError, match="extra_trainable: invalid regex"):
        AdaMixConfig(extra_trainable=("classifier[",))


def test_comma_string_targets_and_round_trip(tmp_path):
    cfg = AdaMixConfig(targets="q, v", num_experts=8, alpha=32.0, rank=4)
    assert cfg.targets == ("q", "v") and cfg.scale == 8.0
    cfg.save(tmp_path / "c.json")
    assert AdaMixConfig.load(tmp_path / "c.json") == cfg


def test_unknown_key_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"method": "lora", "num_expert": 4}))
    with pytest.raises(ConfigError, match=r"c\.json.*num_expert"):
        AdaMixConfig.load(path)


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "method": "lora",\n  "rank": ,\n}')
    with pytest.raises(ConfigError, match=r"bad\.json:3"):
        AdaMixConfig.load(path)


def test_adapter_method_needs_no_targets():
    assert AdaMixConfig(method="adapter", targets=()).targets == ()
    with pytest.raises(ConfigError, match="targets"):
        AdaMixConfig(method="lora", targets=())
