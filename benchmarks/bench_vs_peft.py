#!/usr/bin/env python
"""Training-step time of adamix-ds against Hugging Face PEFT's LoRA, interleaved in one process.

Every variant is a copy of one GPT-2 (random init from the published config unless
``--backbone DIR --init pretrained``), trained with ``torch.optim.AdamW`` on the same batch of
token ids; one step is forward, backward, optimizer step and zeroing the gradients.

* ``peft``: ``peft.get_peft_model`` with LoRA r=4 on every ``c_attn``, loss from HF's own
  ``labels`` argument. This is the reference.
* ``adamix_1x``: adamix-ds with 1 expert, LoRA r=4 on every ``c_attn`` (the same work as PEFT),
  pass schedule ``off``: the project's training forward and loss (``tasks.nlg.adamix_forward``).
* ``adamix_1x_hf_loss``: the same layers, loss from HF's ``labels`` argument: the difference to
  ``adamix_1x`` is the loss path, the difference to ``peft`` the layers.
* ``adamix_paired``, ``adamix_sequential``: AdaMix, 8 experts, up shared, consistency weight 100,
  two routed passes (paired over ``cat(batch, batch)``, or one after the other).
* ``adamix_paired_fused``: paired, loss from the hidden states by ``fused_adamix_lm_loss``.

AdaMix runs two forwards and two backwards through the frozen backbone, so its ideal is about
twice a single pass's step. Time is the median over ``--repeats`` rounds; in each round every
variant runs one step, in turn, so load drift on the machine hits all of them alike. Ratios are
medians of the per-round ratios to ``peft``.

    python benchmarks/bench_vs_peft.py                     # GPT-2 small, 4 x 128, 12 repeats
    python benchmarks/bench_vs_peft.py --repeats 3 --variants peft,adamix_1x --n_layer 2
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from adamix_ds.backbones import load_backbone
from adamix_ds.config import AdaMixConfig
from adamix_ds.inject import inject_adamix
from adamix_ds.tasks.nlg import adamix_forward

C_ATTN = r"transformer\.h\.\d+\.attn\.c_attn"
VARIANTS = ("peft", "adamix_1x", "adamix_1x_hf_loss", "adamix_paired", "adamix_sequential",
            "adamix_paired_fused")
RANK, ALPHA, LR = 4, 32.0, 1e-3


def make_batch(args: argparse.Namespace, vocab: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask``, ``labels``: ``(batch, seq)``; every token counts."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def peft_step_fn(backbone: nn.Module) -> tuple[nn.Module, Callable[[dict], torch.Tensor]]:
    """PEFT's LoRA model and its loss: HF's shifted CE from ``labels``."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["c_attn"],
                        fan_in_fan_out=True, bias="none")
    model = get_peft_model(backbone, config)
    return model, lambda batch: model(**batch).loss


def adamix_step_fn(backbone: nn.Module, variant: str
                   ) -> tuple[nn.Module, Callable[[dict], torch.Tensor]]:
    """adamix-ds on ``c_attn`` and the loss of ``variant`` (1 expert or AdaMix's 8)."""
    single = variant.startswith("adamix_1x")
    cfg = AdaMixConfig(method="lora", num_experts=1 if single else 8, rank=RANK, alpha=ALPHA,
                       lora_dropout=0.0, targets=(C_ATTN,), consistency_weight=100.0)
    router = inject_adamix(backbone, cfg).router
    schedule = "off" if single else variant.split("_")[1]
    fused = variant.endswith("_fused")

    def loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if variant == "adamix_1x_hf_loss":
            value = backbone(**batch).loss
        else:
            value = adamix_forward(backbone, batch, router, cfg, schedule, fused_loss=fused).loss
        router.advance()
        return value

    return backbone, loss


def build(variant: str, backbone: nn.Module) -> Callable[[dict[str, torch.Tensor]], None]:
    """A closure running one training step of ``variant`` on its own copy of ``backbone``."""
    model = copy.deepcopy(backbone)
    model, loss_fn = peft_step_fn(model) if variant == "peft" else adamix_step_fn(model, variant)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)

    def step(batch: dict[str, torch.Tensor]) -> None:
        loss_fn(batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step.trainable = sum(p.numel() for p in params)  # type: ignore[attr-defined]
    return step


def run(args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(0)
    overrides = {"n_layer": args.n_layer} if args.n_layer else {}
    backbone = load_backbone(args.backbone, init=args.init, seed=0, **overrides)
    backbone.config.use_cache = False
    batch = make_batch(args, backbone.config.vocab_size)
    steps = {v: build(v, backbone) for v in args.variants}
    del backbone
    for _ in range(args.warmup):
        for step in steps.values():
            step(batch)
    times: dict[str, list[float]] = {v: [] for v in steps}
    for r in range(args.repeats):
        for variant, step in steps.items():
            start = time.perf_counter()
            step(batch)
            times[variant].append(time.perf_counter() - start)
        print(f"round {r + 1}/{args.repeats}: " + ", ".join(
            f"{v} {t[-1]:.3f}s" for v, t in times.items()), flush=True)
    base = times[args.variants[0]]
    return {
        "median_s": {v: statistics.median(t) for v, t in times.items()},
        "ratio": {v: statistics.median(a / b for a, b in zip(t, base, strict=True))
                  for v, t in times.items()},
        "ratio_range": {v: (min(a / b for a, b in zip(t, base, strict=True)),
                            max(a / b for a, b in zip(t, base, strict=True)))
                        for v, t in times.items()},
        "trainable": {v: s.trainable for v, s in steps.items()},  # type: ignore[attr-defined]
        "times_s": times,
    }


def report(args: argparse.Namespace, result: dict) -> str:
    cpu = platform.processor() or platform.machine()
    device = f"CPU ({cpu}, {torch.get_num_threads()} threads)"
    ref = args.variants[0]
    layers = f", {args.n_layer} layers" if args.n_layer else ""
    lines = [
        f"### Training step vs PEFT LoRA — {datetime.date.today().isoformat()}, {device}",
        "",
        f"Command: `python benchmarks/bench_vs_peft.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"Backbone `{args.backbone}` ({args.init}{layers}), batch {args.batch} x {args.seq}, "
        f"fp32, AdamW; {args.warmup} warm-up rounds, then "
        f"{args.repeats} interleaved rounds. Ratios to `{ref}`: of the median steps, and the "
        f"median of the per-round ratios (min-max in brackets).",
        "",
        f"| variant | trainable params | median step (s) | / {ref} (medians) "
        f"| / {ref} (per round) |",
        "|---|---|---|---|---|",
    ]
    for v in args.variants:
        low, high = result["ratio_range"][v]
        of_medians = result["median_s"][v] / result["median_s"][ref]
        lines.append(f"| {v} | {result['trainable'][v]:,} | {result['median_s'][v]:.3f} | "
                     f"{of_medians:.2f} | {result['ratio'][v]:.2f} ({low:.2f}-{high:.2f}) |")
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="gpt2", help="hub id or local directory")
    parser.add_argument("--init", default="random", choices=("random", "pretrained"))
    parser.add_argument("--n_layer", type=int, default=0, help="override the layer count")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, the first is the reference; from {VARIANTS}")
    parser.add_argument("--json", help="also write the raw times here")
    parser.add_argument("--results", help="append the markdown table to this file")
    args = parser.parse_args()
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    result = run(args)
    text = report(args, result)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.results:
        with open(args.results, "a") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
