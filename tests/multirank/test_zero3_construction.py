"""ZeRO-3 builds backbones in partitions: no rank holds a whole model at any time.

Two real ranks (env://, gloo, CPU) run ``zero3_build_worker.py``: inside the trainer's
``zero3_construction`` they load a tiny pretrained GPT-2 checkpoint and build a random-init
one. Oracles: right after construction (before ``deepspeed.initialize``) each rank holds at most
its half of every parameter; gathered, the loaded weights equal the checkpoint file read with
``safetensors`` and the random weights equal the same seed built without ZeRO; injection reads
the full projection shapes and counts, not the partitions'.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tests.multirank.conftest import HERE, REPO_ROOT, run_ranks

pytestmark = [pytest.mark.multirank, pytest.mark.slow]

WORKER = HERE / "zero3_build_worker.py"
WORLD = 2


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("zero3_construction")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=48, n_layer=2, n_head=2, n_positions=64,
                                       vocab_size=300))
    model.save_pretrained(root / "pretrained")
    config = json.loads((REPO_ROOT / "ds_configs" / "cpu_zero3.json").read_text())
    (root / "zero3.json").write_text(json.dumps(config))
    run = run_ranks("zero3 construction", [str(WORKER), "--ds_config", str(root / "zero3.json"),
                                           "--pretrained", str(root / "pretrained")],
                    WORLD, root / "run")
    assert run.rc == 0, run.describe()
    rows = [json.loads(line.split("RESULT ", 1)[1]) for line in run.output.splitlines()
            if line.startswith("RESULT ")]
    assert sorted(r["rank"] for r in rows) == list(range(WORLD)), run.describe()
    return rows


@pytest.mark.parametrize("kind", ["pretrained_held", "random_held"])
def test_each_rank_holds_only_its_partition_after_construction(results, kind):
    for row in results:
        held = row[kind]
        assert held, kind
        for name, (local, full) in held.items():
            # DeepSpeed pads each partition to a multiple of the world size
            assert local <= math.ceil(full / WORLD), (row["rank"], name, local, full)
        total_local = sum(local for local, _ in held.values())
        total_full = sum(full for _, full in held.values())
        assert total_local <= total_full / WORLD + len(held) * WORLD, (row["rank"], kind)


def test_gathered_weights_equal_the_checkpoint_and_the_plain_random_init(results):
    for row in results:
        assert row["pretrained_vs_file"] == 0.0, row["rank"]
        assert row["random_vs_plain"] == 0.0, row["rank"]
        # the reference build after the ZeRO-3 context closed is an ordinary model
        assert row["plain_is_partitioned"] is False


def test_injection_reads_full_shapes_and_counts(results):
    reference = GPT2LMHeadModel(GPT2Config(n_embd=48, n_layer=2, n_head=2, n_positions=64,
                                           vocab_size=300))
    full = sum(p.numel() for p in reference.parameters())
    for row in results:
        assert row["backbone_params"] == full
        assert row["replaced"] == [[f"transformer.h.{i}.attn.c_attn", 48, 144] for i in range(2)]
