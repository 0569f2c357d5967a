#!/usr/bin/env python
"""Extra peak memory and time of the AdaMix LM loss: plain logits vs the fused, chunked loss.

Three ways to compute CE(pass 1) + w * symmetric KL(pass 1, pass 2) from two passes' final
hidden states ``(tokens, d)`` and the LM head ``(V, d)``, forward and backward:

* ``plain``: ``logits = h @ W.T`` for both passes, then ``adamix_ds.losses.adamix_loss``;
* ``fused_1024``: ``fused_adamix_lm_loss`` with 1,024-row chunks (its former default);
* ``fused_auto``: ``fused_adamix_lm_loss`` with the chunk chosen from V, d and the dtype.

Memory: each variant runs once in a fresh process of its own; the figure is its peak resident
set (``VmHWM``, reset just before the call) minus the resident set with the inputs in place.
Time: all variants in one process, interleaved round-robin, median of ``--repeats``; the same
process checks that every variant's loss and gradients equal the plain one's.

    python benchmarks/bench_loss_memory.py                      # 8 x 512 x 50,257, d 1,024, fp32
    python benchmarks/bench_loss_memory.py --train_head --tokens 1024 --repeats 5
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from adamix_ds.fused_lm_loss import default_chunk_rows
from adamix_ds.losses import adamix_loss, fused_adamix_lm_loss

VARIANTS = ("plain", "fused_1024", "fused_auto")
CONSISTENCY_WEIGHT, SMOOTHING = 100.0, 0.1


def make_inputs(args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    """``h1, h2`` ``(tokens, d)`` (trainable), head ``(V, d)``, labels ``(tokens,)``.

    Built in place (no scaled copies) so that building them leaves no high-water mark above
    the resident set the measurement starts from.
    """
    g = torch.Generator().manual_seed(0)
    h1 = torch.randn(args.tokens, args.d, generator=g).requires_grad_()
    h2 = torch.randn(args.tokens, args.d, generator=g)
    h2.mul_(0.1).add_(h1.detach()).requires_grad_()
    head = torch.randn(args.vocab, args.d, generator=g).mul_(0.02).requires_grad_(args.train_head)
    labels = torch.randint(0, args.vocab, (args.tokens,), generator=g)
    labels[: args.tokens // 4] = -100  # a context share carries no loss, as in the NLG data
    return h1, h2, head, labels


def loss_fn(variant: str, h1: torch.Tensor, h2: torch.Tensor, head: torch.Tensor,
            labels: torch.Tensor) -> torch.Tensor:
    """The scalar loss of one variant (its graph attached)."""
    if variant == "plain":
        return adamix_loss(h1 @ head.T, h2 @ head.T, labels, CONSISTENCY_WEIGHT,
                           smoothing=SMOOTHING).loss
    chunk = 1024 if variant == "fused_1024" else None
    return fused_adamix_lm_loss(h1, h2, head, labels, CONSISTENCY_WEIGHT, smoothing=SMOOTHING,
                                chunk_tokens=chunk)[0]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def measure_child(args: argparse.Namespace) -> None:
    """Run one variant once and print ``{"extra_mib": ...}`` as JSON."""
    h1, h2, head, labels = make_inputs(args)
    params = [t for t in (h1, h2, head) if t.requires_grad]
    base = _status_kib("VmRSS")
    # "5" resets the high-water mark to the present resident set (Linux >= 4.0)
    Path("/proc/self/clear_refs").write_text("5")
    grads = torch.autograd.grad(loss_fn(args.child, h1, h2, head, labels), params)
    peak = _status_kib("VmHWM")
    del grads
    print(json.dumps({"extra_mib": (peak - base) / 1024, "base_mib": base / 1024}))


def time_and_check(args: argparse.Namespace) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per forward + backward, and each variant's largest gradient deviation
    from the plain loss's (relative to the plain gradient's largest entry)."""
    h1, h2, head, labels = make_inputs(args)
    params = [t for t in (h1, h2, head) if t.requires_grad]

    def run(variant: str) -> Callable[[], tuple[torch.Tensor, ...]]:
        def call() -> tuple[torch.Tensor, ...]:
            loss = loss_fn(variant, h1, h2, head, labels)
            return (loss.detach(), *torch.autograd.grad(loss, params))
        return call

    reference = run("plain")()
    deviation = {"plain": 0.0}
    for variant in VARIANTS[1:]:
        got = run(variant)()
        deviation[variant] = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
                                 for a, b in zip(got, reference, strict=True))
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:  # round-robin: load drift hits every variant alike
            start = time.perf_counter()
            run(variant)()
            times[variant].append(time.perf_counter() - start)
    return {v: statistics.median(t) for v, t in times.items()}, deviation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8 * 512)
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--train_head", action="store_true",
                        help="the head gets a gradient too (default: frozen, as in PEFT)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure_child(args)
        return
    shape = ["--tokens", str(args.tokens), "--d", str(args.d), "--vocab", str(args.vocab)]
    shape += ["--train_head"] if args.train_head else []
    extra = {}
    for variant in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--child", variant, *shape],
                             check=True, capture_output=True, text=True)
        extra[variant] = json.loads(out.stdout.strip().splitlines()[-1])["extra_mib"]
        print(f"{variant}: {extra[variant]:,.0f} MiB extra", flush=True)
    median, deviation = time_and_check(args)
    chunk = default_chunk_rows(args.vocab, args.d, torch.float32)
    cpu = platform.processor() or platform.machine()
    device = f"CPU ({cpu}, {torch.get_num_threads()} threads)"
    lines = [
        f"### Fused LM loss: memory and time — {datetime.date.today().isoformat()}, {device}",
        "",
        f"Command: `python benchmarks/bench_loss_memory.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"{args.tokens:,} tokens (a quarter without loss), d {args.d:,}, V {args.vocab:,}, fp32, "
        f"two passes, consistency weight {CONSISTENCY_WEIGHT:g}, smoothing {SMOOTHING}, head "
        f"{'trained' if args.train_head else 'frozen'}; `fused_auto` chunk = {chunk} rows. "
        f"Extra peak RSS of forward + backward, each variant in its own process; time: median "
        f"of {args.repeats} interleaved calls.",
        "",
        "| variant | extra peak (MiB) | / plain | median time (s) | / plain | max rel. grad dev. |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {v} | {extra[v]:,.0f} | {extra[v] / extra['plain']:.3f} | {median[v]:.2f} | "
              f"{median[v] / median['plain']:.2f} | {deviation[v]:.1e} |" for v in VARIANTS]
    text = "\n".join(lines + [""])
    print(text)
    with open(args.results, "a") as handle:
        handle.write(text + "\n")


if __name__ == "__main__":
    main()
