"""Adaptation-only checkpoints: small, strict on load, and never half-written."""
from __future__ import annotations

import json

import pytest
import torch

import adamix_ds.checkpoint as ckpt
from adamix_ds import AdaMixConfig, adaptation_parameters, inject_adamix
from adamix_ds.checkpoint import load_adaptation, save_adaptation
from tests.models import tiny_model

CFG = AdaMixConfig(method="lora", num_experts=4, rank=2, targets=("q", "v"))


def _model(cfg: AdaMixConfig = CFG, seed: int = 0):
    model = tiny_model("gpt2")
    inject_adamix(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adaptation_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def test_checkpoint_holds_only_the_adaptation(tmp_path):
    model = _model()
    save_adaptation(model, tmp_path / "a", CFG)
    n_bytes = 4 * sum(p.numel() for p in adaptation_parameters(model).values())
    size = (tmp_path / "a" / "adamix_model.safetensors").stat().st_size
    assert n_bytes <= size < n_bytes + 4096, "only expert tensors (plus a small header)"
    meta = json.loads((tmp_path / "a" / "adamix_config.json").read_text())
    assert meta["adamix"]["num_experts"] == 4 and meta["merged"] is None
    assert meta["layers"]["transformer.h.0.attn.c_attn"] == {"q": [0, 32], "v": [64, 96]}


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    first = _model(seed=0)
    save_adaptation(first, tmp_path / "a", CFG)

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_adaptation(_model(seed=1), tmp_path / "a", CFG)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"], "no temporary leftovers"
    reloaded = _model(seed=5)
    load_adaptation(reloaded, tmp_path / "a", CFG)
    for name, p in adaptation_parameters(first).items():
        assert torch.equal(adaptation_parameters(reloaded)[name], p)


def test_overwrite_replaces_the_checkpoint(tmp_path):
    save_adaptation(_model(seed=0), tmp_path / "a", CFG)
    second = _model(seed=1)
    save_adaptation(second, tmp_path / "a", CFG)
    reloaded = _model(seed=2)
    load_adaptation(reloaded, tmp_path / "a", CFG)
    for name, p in adaptation_parameters(second).items():
        assert torch.equal(adaptation_parameters(reloaded)[name], p)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_structural_mismatch_names_the_fields(tmp_path):
    save_adaptation(_model(), tmp_path / "a", CFG)
    other = AdaMixConfig(method="lora", num_experts=2, rank=3, targets=("q", "v"))
    with pytest.raises(ValueError, match=r"num_experts: checkpoint 4 vs model 2; rank"):
        load_adaptation(_model(other), tmp_path / "a", other)


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    model = _model()
    state = ckpt.adaptation_state_dict(model, CFG)
    dropped = state.pop("transformer.h.1.attn.c_attn.experts.v.lora_b")
    save_adaptation(model, tmp_path / "missing", CFG, state=state)
    with pytest.raises(
        ValueError,
        match=r"missing tensors \['transformer\.h\.1\.attn\.c_attn\.experts\.v\.lora_b'\]",
    ):
        load_adaptation(_model(), tmp_path / "missing", CFG)
    state["transformer.h.1.attn.c_attn.experts.v.lora_b"] = dropped[:, :1]
    save_adaptation(model, tmp_path / "shape", CFG, state=state)
    with pytest.raises(ValueError, match=r"experts\.v\.lora_b has shape \(1, 1, 32\)"):
        load_adaptation(_model(), tmp_path / "shape", CFG)


def test_refuses_empty_tensors(tmp_path):
    """A ZeRO-3 partition that was not gathered has numel 0: saving it must fail loudly."""
    model = _model()
    state = ckpt.adaptation_state_dict(model, CFG)
    state["transformer.h.0.attn.c_attn.experts.q.lora_a"] = torch.empty(0)
    with pytest.raises(ValueError, match="empty tensors"):
        save_adaptation(model, tmp_path / "a", CFG, state=state)
    assert not (tmp_path / "a").exists()


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an AdaMix checkpoint"):
        load_adaptation(_model(), tmp_path, CFG)


def test_extra_trainable_parameters_are_saved_and_loaded(tmp_path):
    """A trained classification head (extra_trainable) travels with the experts."""
    from tests.models import tiny_model as build

    cfg = AdaMixConfig(method="adapter", num_experts=2, extra_trainable=(r"classifier\..*",))
    model = build("bert")
    inject_adamix(model, cfg)
    with torch.no_grad():
        model.classifier.weight.fill_(0.5)
    save_adaptation(model, tmp_path / "a", cfg)
    fresh = build("bert")
    inject_adamix(fresh, cfg)
    assert not torch.equal(fresh.classifier.weight, model.classifier.weight)
    load_adaptation(fresh, tmp_path / "a", cfg)
    assert torch.equal(fresh.classifier.weight, model.classifier.weight)
    lora_cfg = AdaMixConfig(method="lora", extra_trainable=(r"classifier\..*",))
    lora_model = build("bert")
    inject_adamix(lora_model, lora_cfg)
    with pytest.raises(ValueError, match="extra_trainable"):
        ckpt.export_peft(lora_model, tmp_path / "p", lora_cfg)
