"""The memory planner against independent references.

* DeepSpeed's own ``estimate_zero2/3_model_states_mem_needs`` when every parameter trains
  (the case those functions model);
* a plain count over a really allocated model for the frozen / trainable split, and the
  published parameter counts of Llama-3.1-8B / Llama-2-13B / Llama-3.1-70B for meta builds;
* hand arithmetic of the activation estimate (Korthikanti et al. 2022, Eq. 2).
"""
from __future__ import annotations

import json

import pytest

from adamix_ds import AdaMixConfig, inject_adamix
from adamix_ds.backbones import load_backbone
from adamix_ds.cli import main
from adamix_ds.planner import (
    activation_bytes,
    largest_module_params,
    model_state_bytes,
    parameter_counts,
)

P, LARGEST = 8_000_000_000, 500_000_000


@pytest.mark.parametrize("ranks", [1, 8, 64])
def test_all_trainable_model_states_equal_deepspeeds_estimators(ranks):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    _, zero2_gpu = estimate_zero2_model_states_mem_needs(P, num_gpus_per_node=ranks,
                                                          cpu_offload=False)
    assert model_state_bytes(0, P, 2, ranks, "bf16").total == zero2_gpu
    _, zero3_gpu, _ = estimate_zero3_model_states_mem_needs(
        P, LARGEST, num_gpus_per_node=ranks, cpu_offload=False, cpu_offload_params=False)
    assert model_state_bytes(0, P, 3, ranks, "bf16", LARGEST).total == zero3_gpu


def test_frozen_parameters_cost_their_weights_only():
    frozen, trainable, ranks = 1_000_000, 1_000, 4
    # stage 0, bf16: every weight in 16 bits, 16-bit grads and 16 B of fp32 states per trainable
    assert model_state_bytes(frozen, trainable, 0, ranks).total == 2 * 1_001_000 + 2_000 + 16_000
    # stage 3, fp32: weights partitioned, Adam's two moments partitioned, no master copy
    s3 = model_state_bytes(frozen, trainable, 3, ranks, "fp32", largest_layer=10)
    assert (s3.params, s3.grads, s3.optimizer, s3.gathered) == (4 * 1_001_000 // 4, 0,
                                                                 8 * 1_000 // 4, 2 * 4 * 10)
    with pytest.raises(ValueError, match="ZeRO stage"):
        model_state_bytes(1, 1, 4, 1)


def test_counts_of_a_meta_build_equal_a_real_build():
    cfg = AdaMixConfig(num_experts=4, rank=4, targets=["q", "v"])
    sizes = {"n_layer": 3, "n_embd": 64, "n_head": 4}
    real = load_backbone("gpt2", init="random", **sizes)
    meta = load_backbone("gpt2", init="meta", **sizes)
    assert all(p.is_meta for p in meta.parameters())
    for model in (real, meta):
        inject_adamix(model, cfg)
    # a plain loop over the allocated model: unique tensors, split by requires_grad
    unique = {p.data_ptr(): p for p in real.parameters()}
    frozen = sum(p.numel() for p in unique.values() if not p.requires_grad)
    trainable = sum(p.numel() for p in unique.values() if p.requires_grad)
    assert parameter_counts(real) == parameter_counts(meta) == (frozen, trainable)
    # the tied embedding (50257 x 64) is the largest single module
    assert largest_module_params(meta) == 50257 * 64


@pytest.mark.parametrize("name,published", [
    ("meta-llama/Llama-3.1-8B", 8_030_261_248),
    ("meta-llama/Llama-2-13b-hf", 13_015_864_320),
    ("meta-llama/Llama-3.1-70B", 70_553_706_496),
])
def test_meta_builds_of_published_configs_have_the_published_sizes(name, published):
    model = load_backbone(name, init="meta")
    assert sum(p.numel() for p in model.parameters()) == published


def test_activation_estimate_hand_arithmetic():
    layers, h, a, v, b, s = 2, 64, 4, 100, 3, 16
    per_layer = s * (2 * b) * h * (34 + 5 * a * s / h)            # paired: 2b rows
    logits = 2 * 4 * (2 * b) * s * v
    assert activation_bytes(layers, h, a, v, b, s) == int(layers * per_layer + logits)
    ckpt = layers * 2 * s * (2 * b) * h + per_layer + logits
    assert activation_bytes(layers, h, a, v, b, s, checkpointing=True) == int(ckpt)
    single = s * b * h * (34 + 5 * a * s / h)
    assert activation_bytes(layers, h, a, v, b, s, paired=False) == int(
        layers * single + 2 * 4 * b * s * v)


def test_inspect_plan_prints_every_stage_and_rank_count(capsys):
    argv = ["inspect", "--backbone", "meta-llama/Llama-3.1-70B", "--init", "meta",
            "--targets", "q,v", "--plan", "--zero_stages", "2,3", "--ranks", "8,64",
            "--seq", "2048", "--checkpointing", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    plan, weights = summary["memory_per_rank"], 70_553_706_496 + summary["trainable_params"]
    assert [(r["zero_stage"], r["ranks"]) for r in plan] == [(2, 8), (2, 64), (3, 8), (3, 64)]
    zero2_8, zero3_8, zero3_64 = plan[0], plan[2], plan[3]
    assert zero2_8["params"] == 2 * weights                                 # replicated, bf16
    assert zero3_8["params"] == 2 * weights // 8                            # partitioned
    assert zero3_64["total"] < zero3_8["total"] < zero2_8["total"]
    for row in plan:
        assert row["total"] == sum(row[k] for k in ("params", "grads", "optimizer", "gathered",
                                                    "activations"))
