#!/usr/bin/env python
"""Step time of AdaMix's consistency pass: paired vs sequential vs one LoRA without consistency.

All three variants train the same backbone in the same process; their steps are interleaved
(round-robin) so drift in machine load hits all of them alike, and the medians are compared.

    python benchmarks/bench_consistency.py              # CPU: small GPT-2, writes RESULTS.md
    python benchmarks/bench_consistency.py --backbone gpt2-medium --batch 8 --seq 512 --dtype bf16
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from adamix_ds import AdaMixConfig, inject_adamix
from adamix_ds.backbones import load_backbone
from adamix_ds.tasks.nlg import adamix_forward
from run_cache import append_results  # same folder

VARIANTS = {  # name -> (experts, consistency)
    "adamix_paired": (8, "paired"),
    "adamix_sequential": (8, "sequential"),
    "single_lora": (1, "off"),
}


def build(args: argparse.Namespace, experts: int, device: torch.device):
    overrides = {"n_embd": args.n_embd, "n_layer": args.n_layer, "n_head": args.n_head} \
        if args.backbone == "gpt2" and args.n_embd else {}
    model = load_backbone(args.backbone, init="random", seed=0, **overrides)
    cfg = AdaMixConfig(method="lora", num_experts=experts, rank=4, alpha=32, targets=("q", "v"),
                       consistency_weight=100.0)
    router = inject_adamix(model, cfg).router
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, cfg, router, optimizer


def step_fn(model, cfg, router, optimizer, batch, consistency, dtype):
    def run() -> None:
        with torch.autocast(batch["input_ids"].device.type, dtype=dtype,
                            enabled=dtype != torch.float32):
            out = adamix_forward(model, batch, router, cfg, consistency, label_smoothing=0.1)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        router.advance()
    return run


def timed(run, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="gpt2")
    parser.add_argument("--n_embd", type=int, default=256, help="gpt2 only; 0 = published size")
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--n_head", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50257, (args.batch, args.seq), generator=g)
    labels = ids.clone()
    labels[:, : args.seq // 3] = -100  # context tokens carry no loss, as in the NLG data
    batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
             "labels": labels.to(device)}
    runs = {}
    for name, (experts, consistency) in VARIANTS.items():
        runs[name] = step_fn(*build(args, experts, device), batch, consistency, dtype)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(args.warmup + args.repeats):
        for name, run in runs.items():  # round-robin: load drift hits every variant alike
            elapsed = timed(run, device)
            if i >= args.warmup:
                times[name].append(elapsed)
    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["single_lora"]
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    lines = [
        f"### Consistency pass step time — {datetime.date.today().isoformat()}, {device_name}",
        "",
        f"Command: `python benchmarks/bench_consistency.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"Backbone {args.backbone} (n_embd {args.n_embd or 'published'}), batch {args.batch} x "
        f"{args.seq} tokens, {args.dtype}, LoRA r=4 on Q,V, {args.repeats} interleaved steps "
        f"after {args.warmup} warm-up; median step time (forward + backward + AdamW).",
        "",
        "| variant | median step (ms) | ratio to single LoRA |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {1e3 * m:.1f} | {m / base:.2f} |" for name, m in median.items()]
    lines += [
        "",
        f"paired / sequential = {median['adamix_paired'] / median['adamix_sequential']:.2f}",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    append_results(Path(args.results), text)


if __name__ == "__main__":
    main()
