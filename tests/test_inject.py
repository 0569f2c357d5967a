"""Injection by exact module-name patterns: what gets replaced, frozen and counted."""
from __future__ import annotations

import pytest
import torch

from adamix_ds import AdaMixConfig, adamix_layers, inject_adamix
from adamix_ds.layers import AdaMixAdapter, AdaMixLoRA
from tests.models import tiny_model


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_gpt2_qv_adapts_the_fused_c_attn_slices():
    model = tiny_model("gpt2")
    report = inject_adamix(model, AdaMixConfig(targets=("q", "v"), num_experts=3, rank=2))
    layers = adamix_layers(model)
    assert list(layers) == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    layer = layers["transformer.h.0.attn.c_attn"]
    assert isinstance(layer, AdaMixLoRA) and layer.slices == {"q": (0, 32), "v": (64, 96)}
    assert report.adapted_modules == 2 and report.router.num_keys == 4
    # Only expert tensors train: 2 layers x 2 slices x (3 A of 32x2 + 1 shared B of 2x32).
    assert all(".experts." in n for n in _trainable(model))
    assert report.trainable_params == 2 * 2 * (3 * 64 + 64) == report.adaptation_params
    assert report.inference_params == 2 * 2 * (64 + 64)
    assert report.backbone_params == sum(p.numel() for n, p in model.named_parameters()
                                         if ".experts." not in n)


@pytest.mark.parametrize("arch,placement,expected", [
    ("gpt2", "ffn", ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]),
    ("gpt2", "attn+ffn", ["transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj",
                          "transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_proj"]),
    ("bert", "ffn", ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]),
    ("llama", "ffn", ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]),
])
def test_adapter_placement(arch, placement, expected):
    model = tiny_model(arch)
    inject_adamix(model, AdaMixConfig(method="adapter", placement=placement, num_experts=2))
    layers = adamix_layers(model)
    assert sorted(layers) == sorted(expected)
    assert all(isinstance(m, AdaMixAdapter) for m in layers.values())


def test_bert_ffn_pattern_does_not_catch_attention_output():
    """'layer.N.output.dense' must not also match 'layer.N.attention.output.dense'."""
    model = tiny_model("bert")
    inject_adamix(model, AdaMixConfig(targets=("ffn_out",)))
    assert all("attention" not in n for n in adamix_layers(model))


def test_regex_target_and_extra_trainable():
    model = tiny_model("bert")
    cfg = AdaMixConfig(targets=(r"bert\.encoder\.layer\.1\.attention\.self\.(query|value)",),
                       extra_trainable=(r"classifier\..*",))
    report = inject_adamix(model, cfg)
    assert sorted(adamix_layers(model)) == ["bert.encoder.layer.1.attention.self.query",
                                            "bert.encoder.layer.1.attention.self.value"]
    assert {"classifier.weight", "classifier.bias"} <= _trainable(model)
    assert report.trainable_params == report.adaptation_params + 32 * 3 + 3


def test_pattern_matching_nothing_lists_modules():
    model = tiny_model("gpt2")
    with pytest.raises(
        ValueError, match=r"matches no module(.|\n)*transformer\.h\.\{i\}\.attn\.c_attn"
    ):
        inject_adamix(model, AdaMixConfig(targets=(r"transformer\.h\.\d+\.attn\.q_proj",)))


def test_canonical_target_missing_for_architecture():
    with pytest.raises(ValueError, match="'ffn_gate' does not exist for model_type 'gpt2'"):
        inject_adamix(tiny_model("gpt2"), AdaMixConfig(targets=("ffn_gate",)))


def test_non_projection_target_is_rejected():
    with pytest.raises(TypeError, match=r"transformer\.h\.0\.ln_1 is a LayerNorm"):
        inject_adamix(tiny_model("gpt2"), AdaMixConfig(targets=(r"transformer\.h\.0\.ln_1",)))


def test_double_injection_and_double_targeting_are_errors():
    model = tiny_model("gpt2")
    inject_adamix(model, AdaMixConfig())
    with pytest.raises(ValueError, match="already contains AdaMix"):
        inject_adamix(model, AdaMixConfig())
    with pytest.raises(ValueError, match="targeted twice"):
        inject_adamix(tiny_model("gpt2"), AdaMixConfig(targets=("q", r".*\.c_attn")))


def test_unknown_architecture_needs_regex_targets():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no canonical targets"):
        inject_adamix(model, AdaMixConfig(targets=("q",)))
    report = inject_adamix(model, AdaMixConfig(targets=("(0)",)))  # a regex names module "0"
    assert report.adapted_modules == 1 and report.model_type == "Sequential"
