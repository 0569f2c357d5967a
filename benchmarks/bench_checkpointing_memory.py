#!/usr/bin/env python
"""Peak memory of one AdaMix training step with and without activation checkpointing.

The model: GPT-2 small's published config (12 layers, d 768; random init, dropout on), AdaMix-LoRA
with 8 experts on Q and V (up shared), the paired consistency pass (``cat(batch, batch)``), a batch
of ``--batch`` x ``--seq`` tokens, every token carrying loss. One step = the project's training
forward (``tasks.nlg.adamix_forward``), backward and ``AdamW.step``. Each variant runs in a fresh
process of its own; its figure is the peak resident set during the step (``VmHWM``, reset just
before it) minus the resident set before it. The same processes report the loss and a digest of
the experts' gradients, which must agree between the variants (checkpointing changes memory, not
the arithmetic), and the step's wall time (one step each: indicative only).

    python benchmarks/bench_checkpointing_memory.py                   # 4 x 512, 12 layers
    python benchmarks/bench_checkpointing_memory.py --seq 64 --n_layer 2
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from adamix_ds.backbones import load_backbone
from adamix_ds.checkpointing import enable_activation_checkpointing
from adamix_ds.config import AdaMixConfig
from adamix_ds.inject import adaptation_parameters, inject_adamix
from adamix_ds.tasks.nlg import adamix_forward

VARIANTS = ("plain", "checkpointed")


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} line")


def measure(args: argparse.Namespace) -> dict[str, float]:
    """One step of ``args.variant`` in this process."""
    torch.set_num_threads(args.threads)
    overrides = {"n_layer": args.n_layer} if args.n_layer else {}
    model = load_backbone("gpt2", init="random", seed=0, **overrides).train()
    cfg = AdaMixConfig(method="lora", num_experts=8, rank=4, alpha=32, targets=["q", "v"],
                       share="up", consistency_weight=100.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        router = inject_adamix(model, cfg).router
    if args.variant == "checkpointed":
        enable_activation_checkpointing(model, router)
    params = adaptation_parameters(model)
    optimizer = torch.optim.AdamW(params.values(), lr=1e-3)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    base = status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (Linux >= 4.0)
    start = time.perf_counter()
    torch.manual_seed(3)  # dropout masks: the same in both variants
    out = adamix_forward(model, batch, router, cfg, "paired", label_smoothing=0.1)
    out.loss.backward()
    grad_digest = sum(float(p.grad.double().abs().sum()) for p in params.values())
    optimizer.step()
    seconds = time.perf_counter() - start
    peak = status_mib("VmHWM")
    return {"extra_mib": peak - base, "base_mib": base, "peak_mib": peak, "seconds": seconds,
            "loss": out.loss.item(), "grad_abs_sum": grad_digest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--n_layer", type=int, default=0, help="override GPT-2 small's 12")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--json", help="also write the raw numbers here")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args)))
        return
    results = {}
    for variant in VARIANTS:
        argv = [a for a in sys.argv[1:] if not a.startswith("--json")]
        if args.json:
            argv = [a for a in argv if a != args.json]
        proc = subprocess.run([sys.executable, __file__, *argv, "--variant", variant],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{variant} failed:\n{proc.stderr[-4000:]}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    plain = results["plain"]
    layers = args.n_layer or 12
    print(f"Command: `python benchmarks/bench_checkpointing_memory.py --batch {args.batch} "
          f"--seq {args.seq}{f' --n_layer {args.n_layer}' if args.n_layer else ''}`; "
          f"{datetime.date.today()}, {platform.machine()} CPU, {args.threads} threads; GPT-2 "
          f"{layers} layers, AdaMix-LoRA 8 experts, paired pass over "
          f"{2 * args.batch} x {args.seq} tokens, fp32.\n")
    print("| variant | extra peak (MiB) | / plain | step s (one) | loss | sum abs expert grad |")
    print("|---|---|---|---|---|---|")
    for variant, r in results.items():
        print(f"| {variant} | {r['extra_mib']:,.0f} | {r['extra_mib'] / plain['extra_mib']:.2f} "
              f"| {r['seconds']:.1f} | {r['loss']:.6f} | {r['grad_abs_sum']:.6f} |")


if __name__ == "__main__":
    main()
