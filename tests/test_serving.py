"""The merged dense export: a standard Hugging Face directory that ``from_pretrained`` serves.

Oracle: the AdaMix model itself in its merged inference mode (experts averaged, Eq. 3, applied as
a branch beside the frozen base). The exported directory, loaded by plain
``AutoModelForCausalLM.from_pretrained`` (no adamix-ds code), must give the same logits; the
export must not touch the model; sharding, dtype and tokenizer follow the arguments.
"""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from adamix_ds import AdaMixConfig, adaptation_parameters, inject_adamix
from adamix_ds.data import load_tokenizer
from adamix_ds.serving import export_merged_model
from tests.models import logits, tiny_model, tokens

ATOL = 2e-5  # float32 logits of a 2-layer model


def _adamix(arch: str, targets: tuple[str, ...], method: str = "lora") -> torch.nn.Module:
    model = tiny_model(arch)
    inject_adamix(model, AdaMixConfig(method=method, num_experts=4, rank=4, targets=targets,
                                      expert_init="independent"))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-zero experts (B starts at 0), so the fold visibly matters
        for p in adaptation_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("arch,targets", [("gpt2", ("q", "v")), ("gpt2", ("q", "v", "o")),
                                          ("llama", ("q", "v")),
                                          ("llama", ("q", "k", "v", "o", "ffn_gate", "ffn_out"))])
def test_exported_model_loads_with_from_pretrained_and_equals_the_merged_mode(
        tmp_path, arch, targets):
    model = _adamix(arch, targets)
    ids = tokens()
    expected = logits(model, ids)
    plain = logits(tiny_model(arch), ids)
    assert (expected - plain).abs().max() > 1e-2, "the experts must change the output"
    before = {k: v.clone() for k, v in model.state_dict().items()}

    export_merged_model(model, tmp_path / "dense", max_shard_size="20KB")

    served = AutoModelForCausalLM.from_pretrained(tmp_path / "dense").eval()
    assert not any("experts" in n or ".base." in n for n, _ in served.named_parameters())
    torch.testing.assert_close(logits(served, ids), expected, atol=ATOL, rtol=0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "export modified the model"
    files = {p.name for p in (tmp_path / "dense").iterdir()}
    assert "config.json" in files and "model.safetensors.index.json" in files
    assert len([f for f in files if f.endswith(".safetensors")]) > 1  # sharded as asked


def test_bf16_export_names_its_dtype_and_serves_within_bf16_tolerance(tmp_path):
    model = _adamix("llama", ("q", "v"))
    ids = tokens()
    expected = logits(model, ids)
    export_merged_model(model, tmp_path / "bf16", dtype=torch.bfloat16)
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    served = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").eval()
    assert all(p.dtype == torch.bfloat16 for p in served.parameters())
    got = logits(served, ids).float()
    # bf16 keeps 8 bits of mantissa: logits of magnitude ~1 carry errors of ~1e-2
    assert (got - expected).abs().max() < 5e-2 * expected.abs().max()


def test_tokenizer_is_saved_beside_the_weights(tmp_path):
    model = _adamix("gpt2", ("q", "v"))
    tokenizer = load_tokenizer()  # the bundled GPT-2 BPE
    export_merged_model(model, tmp_path / "dense", tokenizer=tokenizer)
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "dense")
    text = "The Eagle is a coffee shop near the river."
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_adapters_and_folded_models_are_refused(tmp_path):
    adapters = _adamix("gpt2", ("q", "v"), method="adapter")
    with pytest.raises(ValueError, match="Houlsby adapters, which are nonlinear"):
        export_merged_model(adapters, tmp_path / "a")
    folded = _adamix("gpt2", ("q", "v"))
    from adamix_ds import fold_lora
    fold_lora(folded)
    with pytest.raises(ValueError, match="unfold the model first"):
        export_merged_model(folded, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
