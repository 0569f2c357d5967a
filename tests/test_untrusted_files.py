"""Adaptation directories and PEFT exports are data, not code: safetensors + JSON only.

A weights file that is a pickle is refused before anything unpickles it (a pickle whose
unpickling would leave a marker file proves it never ran); a damaged or replaced weights file,
or broken JSON, is an error that names the file.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from adamix_ds import AdaMixConfig, adaptation_parameters, inject_adamix
from adamix_ds.checkpoint import export_peft, load_adaptation, save_adaptation
from adamix_ds.cli import main
from adamix_ds.evaluation.pipeline import load_decoding_model
from tests.models import tiny_model

CFG = AdaMixConfig(method="lora", num_experts=3, rank=2, targets=("q", "v"))


class _LeavesAMark:
    """Unpickling this calls os.mkdir(path): the marker of code run by a load."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _saved(tmp_path, name: str = "a"):
    model = tiny_model("gpt2")
    inject_adamix(model, CFG)
    with torch.no_grad():
        for p in adaptation_parameters(model).values():
            p.normal_()
    return model, save_adaptation(model, tmp_path / name, CFG)


def _fresh():
    model = tiny_model("gpt2")
    inject_adamix(model, CFG)
    return model


def test_pickled_adaptation_weights_are_refused_unread(tmp_path):
    _, folder = _saved(tmp_path)
    (folder / "adamix_model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({"w": _LeavesAMark(str(marker))}, folder / "adamix_model.bin")
    with pytest.raises(ValueError, match=r"\['adamix_model.bin'\] \(pickle\).*refused"):
        load_adaptation(_fresh(), folder, CFG)
    assert not marker.exists()


def test_pickled_peft_export_is_refused_unread(tmp_path):
    model, _ = _saved(tmp_path)
    tiny_model("gpt2").save_pretrained(tmp_path / "backbone")
    export_peft(model, tmp_path / "peft", CFG, base_model_name_or_path=str(tmp_path / "backbone"))
    (tmp_path / "peft" / "adapter_model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({"w": _LeavesAMark(str(marker))}, tmp_path / "peft" / "adapter_model.bin")
    with pytest.raises(ValueError, match="refused, since unpickling can run code"):
        load_decoding_model(tmp_path / "peft")
    assert not marker.exists()


def test_a_damaged_weights_file_is_named(tmp_path):
    _, folder = _saved(tmp_path)
    weights = folder / "adamix_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF                                   # same size, one byte flipped
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="its sha256 differs from the one in adamix_config.json"):
        load_adaptation(_fresh(), folder, CFG)
    # a directory from before the checksum: a truncated file still fails with its name
    meta = json.loads((folder / "adamix_config.json").read_text())
    del meta["weights_sha256"]
    (folder / "adamix_config.json").write_text(json.dumps(meta))
    weights.write_bytes(bytes(data[:50]))
    with pytest.raises(ValueError, match=f"{weights}: not a readable safetensors file"):
        load_adaptation(_fresh(), folder, CFG)


def test_broken_config_json_names_file_and_line(tmp_path, capsys):
    _, folder = _saved(tmp_path)
    (folder / "adamix_config.json").write_text('{\n  "format": "adamix-ds/1",\n  "adamix": {\n')
    tiny_model("gpt2").save_pretrained(tmp_path / "backbone")
    code = main(["merge", str(folder), "--backbone", str(tmp_path / "backbone"),
                 "--out", str(tmp_path / "m")])
    assert code == 2
    assert f"{folder / 'adamix_config.json'}:4:1: invalid JSON" in capsys.readouterr().err


def test_intact_directories_still_load_exactly(tmp_path):
    model, folder = _saved(tmp_path)
    fresh = _fresh()
    load_adaptation(fresh, folder, CFG)
    for (name, a), b in zip(adaptation_parameters(model).items(),
                            adaptation_parameters(fresh).values(), strict=True):
        assert torch.equal(a, b), name
