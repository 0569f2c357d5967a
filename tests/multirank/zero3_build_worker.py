"""One rank of tests/multirank/test_zero3_construction.py: build backbones under ZeRO-3.

Run by the DeepSpeed launcher (2 ranks, CPU, gloo). Inside the trainer's
``zero3_construction`` it builds (1) the tiny pretrained checkpoint at ``--pretrained`` and (2)
a random-init tiny GPT-2, injects AdaMix into (1), and prints one JSON line per rank with what
each rank holds right after construction (before ``deepspeed.initialize``) and the gathered
tensors' distance to independent references: the checkpoint file itself, and the same random
init built afterwards on this rank without ZeRO.
"""
from __future__ import annotations

import argparse
import json
import os

import deepspeed
import torch
from safetensors.torch import load_file

from adamix_ds.backbones import load_backbone
from adamix_ds.config import AdaMixConfig
from adamix_ds.inject import inject_adamix
from adamix_ds.training.engine import zero3_construction

RANDOM_CONFIG = {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}


def _holding(model: torch.nn.Module) -> dict[str, list[int]]:
    """name -> [elements held on this rank, elements of the whole parameter]."""
    return {n: [p.numel(), getattr(p, "ds_numel", p.numel())] for n, p in model.named_parameters()}


def _max_diff(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> float:
    params = dict(model.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        return max((params[n].detach() - t).abs().max().item() for n, t in reference.items())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ds_config", required=True)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--local_rank", type=int, default=-1)
    args = parser.parse_args()
    deepspeed.init_distributed(dist_backend="gloo")
    with open(args.ds_config) as f:
        ds_config = json.load(f)
    with zero3_construction(ds_config):
        pretrained = load_backbone(args.pretrained, init="pretrained")
        held_before_inject = _holding(pretrained)
        report = inject_adamix(pretrained, AdaMixConfig(method="lora", num_experts=2, rank=2,
                                                        targets=["q", "v"]))
        random = load_backbone("gpt2", init="random", seed=5, **RANDOM_CONFIG)
        held_random = _holding(random)
    checkpoint = load_file(os.path.join(args.pretrained, "model.safetensors"))
    # names in the file are the HF model's; injected layers moved c_attn under `.base`
    renamed = {n.replace("attn.c_attn.", "attn.c_attn.base."): t for n, t in checkpoint.items()}
    plain = load_backbone("gpt2", init="random", seed=5, **RANDOM_CONFIG)  # no ZeRO any more
    print("RESULT " + json.dumps({
        "rank": deepspeed.comm.get_rank(),
        "pretrained_held": held_before_inject,
        "random_held": held_random,
        "backbone_params": report.backbone_params,
        "replaced": [(r["name"], r["d_in"], r["d_out"]) for r in report.replaced],
        "pretrained_vs_file": _max_diff(pretrained, renamed),
        "random_vs_plain": _max_diff(random, dict(plain.named_parameters())),
        "plain_is_partitioned": any(hasattr(p, "ds_id") for p in plain.parameters()),
    }), flush=True)


if __name__ == "__main__":
    main()
