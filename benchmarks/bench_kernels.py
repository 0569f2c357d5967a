#!/usr/bin/env python
"""Benchmark the Triton kernels of ``kernels/`` against eager torch and ``torch.compile``.

All variants of one shape run in the same process, interleaved round by round, so machine drift
hits them alike; every figure is a median. Four benchmarks:

* ``adapter``      routed Houlsby adapter (paired pass: two route segments, up side shared),
                   forward (no grad: the memory-bound case) and forward+backward;
* ``lora``         GPT-2's c_attn projection alone vs. the projection plus the routed LoRA delta
                   on its Q and V slices (Triton: accumulated in place; eager: delta + add);
* ``loss``         the AdaMix LM loss (CE pass 1 + consistency KL) from hidden states: plain
                   (both passes' logits, then ``adamix_loss``) vs. the chunked fused version,
                   forward+backward time and peak memory above the inputs;
* ``copy``         ``dst.copy_(src)`` on a large buffer: the bandwidth that GB/s are compared to.

GB/s count the minimum traffic (each input read once, each output written once); on a GPU the
timing is ``triton.testing.do_bench``, which flushes the L2 cache before every timed call, so the
figures are HBM ones.

    python benchmarks/bench_kernels.py                   # GPU: GPT-2 M/L/XL, 1k..32k tokens, bf16
    python benchmarks/bench_kernels.py --cpu --results /tmp/r.md   # interpreter, tiny shapes

On CUDA the tables are appended to ``benchmarks/RESULTS.md`` with the device name and date. The
CPU mode runs the Triton interpreter: its timings say nothing about GPU speed and are labelled
so; it exists to keep every code path of this script working between GPU runs.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if "--cpu" in sys.argv:  # the interpreter must be chosen before triton is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from adamix_ds.experts import routed_adapter_eager, routed_lora_update  # noqa: E402
from adamix_ds.kernels.lora_delta import routed_lora_delta  # noqa: E402
from adamix_ds.kernels.routed_adapter import routed_adapter  # noqa: E402
from adamix_ds.losses import adamix_loss, fused_adamix_lm_loss  # noqa: E402

GPT2_WIDTH = {"gpt2-medium": 1024, "gpt2-large": 1280, "gpt2-xl": 1600}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# output check of each Triton variant against eager before timing (relative to max |eager|)
CHECK_TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


# --- timing ------------------------------------------------------------------------------------
class Timer:
    """Median time of each variant, variants interleaved round by round.

    On CUDA each round is one ``triton.testing.do_bench`` call per variant (``rep_ms`` of timed
    calls, the L2 flushed before each, events for timing; median), so a round is about
    ``rep_ms`` per variant; on the CPU one timed call per round with ``time.perf_counter``.
    """

    def __init__(self, device: torch.device, warmup: int, repeats: int,
                 rep_ms: float = 50.0) -> None:
        self.device, self.warmup, self.repeats, self.rep_ms = device, warmup, repeats, rep_ms

    def once(self, fn: Callable[[], object]) -> float:
        """Seconds per call: one round of ``fn``."""
        if self.device.type != "cuda":
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        from triton.testing import do_bench

        return do_bench(fn, warmup=0, rep=self.rep_ms, return_mode="median") / 1e3

    def compare(self, fns: dict[str, Callable[[], object]]) -> dict[str, float]:
        """Median seconds per variant over ``repeats`` interleaved rounds."""
        for _ in range(self.warmup):
            for fn in fns.values():
                fn()
        samples: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(self.repeats):
            for name, fn in fns.items():
                samples[name].append(self.once(fn))
        return {name: statistics.median(s) for name, s in samples.items()}


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak CUDA memory allocated by ``fn`` above what was allocated before (None on CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) - before


def compiled(fn: Callable, backend: str) -> Callable | None:
    return None if backend == "none" else torch.compile(fn, backend=backend, dynamic=False)


def check_close(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    """Relative max error of a kernel output vs eager; raises when above the dtype's bound."""
    err = ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-30))
    err = float(err)
    if err > CHECK_TOL[want.dtype]:
        raise AssertionError(f"{name}: Triton differs from eager by {err:.2e} (relative), "
                             f"bound {CHECK_TOL[want.dtype]:.0e}")
    return err


@dataclass
class Row:
    bench: str
    shape: str
    cells: dict[str, str]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def gbps(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / 1e9


# --- benchmarks ----------------------------------------------------------------------------------
def bench_copy(timer: Timer, device: torch.device, nbytes: int) -> float:
    """Measured copy bandwidth in GB/s (read + write counted)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = timer.compare({"copy": lambda: dst.copy_(src)})["copy"]
    return gbps(2 * nbytes, seconds)


def bench_adapter(timer: Timer, args: argparse.Namespace, d: int, n: int, copy_bw: float,
                  device: torch.device) -> list[Row]:
    dtype, b, m = DTYPES[args.dtype], args.bottleneck, args.experts
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape: int, std: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * std).to(device=device, dtype=dtype)

    x = rand(n, d)
    params = [rand(m, d, b, std=d ** -0.5), rand(m, b, std=0.1), rand(1, b, d, std=b ** -0.5),
              rand(1, d, std=0.1)]
    route = ((0, 0), (m - 1, 0))  # paired consistency pass: two segments, shared up side
    act = "gelu_tanh"
    eager = routed_adapter_eager
    comp = compiled(routed_adapter_eager, args.compile_backend)
    es = x.element_size()
    param_bytes = sum(p.numel() for p in params) * es
    rows = []

    # forward, no grad (inference / recomputation): x read once, y written once
    variants = {"triton": lambda: routed_adapter(x, *params, route, act),
                "eager": lambda: eager(x, *params, route, act)}
    if comp is not None:
        variants["compile"] = lambda: comp(x, *params, route, act)
    with torch.no_grad():
        err = check_close(f"adapter fwd d={d} n={n}", variants["triton"](), variants["eager"]())
        times = timer.compare(variants)
    traffic = 2 * n * d * es + param_bytes
    rows.append(Row("adapter fwd", f"d={d} b={b} N={n}",
                    _speed_cells(times, traffic, copy_bw, err)))

    # forward + backward: every input and parameter gets a gradient
    xg = x.detach().requires_grad_(True)
    pg = [p.detach().requires_grad_(True) for p in params]
    grad_y = rand(n, d)

    def train(fn: Callable) -> Callable[[], None]:
        def run() -> None:
            xg.grad = None
            for p in pg:
                p.grad = None
            fn(xg, *pg, route, act).backward(grad_y)
        return run

    variants = {"triton": train(routed_adapter),
                "eager": train(eager)}
    if comp is not None:
        variants["compile"] = train(comp)
    variants["triton"]()
    dx_triton = xg.grad.clone()
    variants["eager"]()
    err = check_close(f"adapter dx d={d} n={n}", dx_triton, xg.grad)
    times = timer.compare(variants)
    # fwd: x, y; bwd: x, grad_y read, dx written (h, dh are N x b: small, left out)
    traffic = 5 * n * d * es + 3 * param_bytes
    rows.append(Row("adapter fwd+bwd", f"d={d} b={b} N={n}",
                    _speed_cells(times, traffic, copy_bw, err)))
    return rows


def _speed_cells(times: dict[str, float], traffic: float, copy_bw: float,
                 err: float) -> dict[str, str]:
    cells = {f"{k} ms": fmt_ms(v) for k, v in times.items()}
    triton_bw = gbps(traffic, times["triton"])
    cells["triton GB/s"] = f"{triton_bw:.3g}"
    cells["of copy BW"] = f"{triton_bw / copy_bw:.0%}"
    cells["eager / triton"] = f"{times['eager'] / times['triton']:.2f}"
    if "compile" in times:
        cells["compile / triton"] = f"{times['compile'] / times['triton']:.2f}"
    cells["max rel err"] = f"{err:.1e}"
    return cells


def bench_lora(timer: Timer, args: argparse.Namespace, d: int, n: int,
               device: torch.device) -> list[Row]:
    """c_attn (d -> 3d, Conv1D: y = bias + x W) alone vs with the routed Q / V LoRA deltas."""
    dtype, r, m = DTYPES[args.dtype], args.rank, args.experts
    gen = torch.Generator(device="cpu").manual_seed(1)

    def rand(*shape: int, std: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * std).to(device=device, dtype=dtype)

    x, weight, bias = rand(n, d), rand(d, 3 * d, std=d ** -0.5), rand(3 * d, std=0.02)
    experts = {s: (rand(m, d, r, std=d ** -0.5), rand(1, r, d, std=0.1)) for s in ("q", "v")}
    starts = {"q": 0, "v": 2 * d}
    route, scale = ((0, 0), (m - 1, 0)), 32.0 / r

    def base() -> torch.Tensor:
        return torch.addmm(bias, x, weight)

    def with_triton() -> torch.Tensor:
        out = base()
        for s, (a, b) in experts.items():
            routed_lora_delta(x, a, b, route, scale, out=out,
                              out_slice=(starts[s], starts[s] + d))
        return out

    def with_eager() -> torch.Tensor:
        out = base()
        for s, (a, b) in experts.items():
            out[:, starts[s]:starts[s] + d] += routed_lora_update(x, a, b, route, scale)
        return out

    with torch.no_grad():
        err = check_close(f"lora d={d} n={n}", with_triton(), with_eager())
        times = timer.compare({"c_attn": base, "c_attn+triton": with_triton,
                               "c_attn+eager": with_eager})
    cells = {f"{k} ms": fmt_ms(v) for k, v in times.items()}
    cells["triton adds"] = f"{times['c_attn+triton'] / times['c_attn'] - 1:+.1%}"
    cells["eager adds"] = f"{times['c_attn+eager'] / times['c_attn'] - 1:+.1%}"
    cells["max rel err"] = f"{err:.1e}"
    return [Row("lora c_attn fwd", f"d={d} r={r} N={n}", cells)]


def bench_loss(timer: Timer, args: argparse.Namespace, device: torch.device) -> list[Row]:
    """Plain vs fused AdaMix LM loss at (sequences x tokens x vocabulary)."""
    dtype = DTYPES[args.dtype]
    seqs, seq_len, vocab, d = args.loss_shape
    n = seqs * seq_len
    gen = torch.Generator(device="cpu").manual_seed(2)
    h1 = (torch.randn(n, d, generator=gen)).to(device=device, dtype=dtype).requires_grad_(True)
    h2 = (h1.detach() + 0.1 * torch.randn(n, d, generator=gen).to(device, dtype)).requires_grad_(
        True
    )
    head = (torch.randn(vocab, d, generator=gen) * d ** -0.5).to(device=device, dtype=dtype)
    labels = torch.randint(0, vocab, (n,), generator=gen).to(device)
    labels[::7] = -100
    weight, smoothing = 100.0, 0.1

    def plain() -> torch.Tensor:
        h1.grad = h2.grad = None
        out = adamix_loss(h1 @ head.T, h2 @ head.T, labels, weight, smoothing=smoothing)
        out.loss.backward()
        return out.loss.detach()

    def fused() -> torch.Tensor:
        h1.grad = h2.grad = None
        loss = fused_adamix_lm_loss(h1, h2, head, labels, weight, smoothing,
                                    chunk_tokens=args.loss_chunk)[0]
        loss.backward()
        return loss.detach()

    want, want_grad = plain(), h1.grad.clone()
    got = fused()
    loss_err = abs(float(got) - float(want)) / abs(float(want))
    grad_err = check_close("fused loss dh1", h1.grad, want_grad)
    peaks = {"plain": peak_bytes(plain, device), "fused": peak_bytes(fused, device)}
    times = timer.compare({"plain": plain, "fused": fused})
    cells = {f"{k} ms": fmt_ms(v) for k, v in times.items()}
    for k, v in peaks.items():
        cells[f"{k} peak MiB"] = "n/a (CPU)" if v is None else f"{v / 2**20:.0f}"
    if peaks["plain"]:
        cells["fused / plain memory"] = f"{peaks['fused'] / peaks['plain']:.2f}"
    cells["plain / fused time"] = f"{times['plain'] / times['fused']:.2f}"
    cells["loss rel err"] = f"{loss_err:.1e}"
    cells["dh1 rel err"] = f"{grad_err:.1e}"
    return [Row("fused LM loss fwd+bwd", f"{seqs}x{seq_len} tokens, V={vocab}, d={d}", cells)]


# --- report --------------------------------------------------------------------------------------
def markdown(rows: list[Row]) -> str:
    """One table per benchmark kind (their columns differ)."""
    blocks = []
    for bench in dict.fromkeys(r.bench for r in rows):
        group = [r for r in rows if r.bench == bench]
        cols = list(dict.fromkeys(c for r in group for c in r.cells))
        lines = [f"**{bench}**", "", "| shape | " + " | ".join(cols) + " |",
                 "|---" * (len(cols) + 1) + "|"]
        lines += ["| " + r.shape + " | " + " | ".join(r.cells.get(c, "") for c in cols) + " |"
                  for r in group]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads), Triton interpreter"


def write_results(path: Path, device: torch.device, argv: list[str], copy_bw: float,
                  rows: list[Row], args: argparse.Namespace) -> None:
    today = datetime.date.today().isoformat()
    timing = ("rounds of triton.testing.do_bench (L2 flushed, median)" if device.type == "cuda"
              else "calls")
    note = ("" if device.type == "cuda" else
            "\nCode-path check only: the Triton kernels run in the interpreter and eager torch on "
            "the CPU, so these times are NOT GPU figures and say nothing about kernel speed.\n")
    section = (f"\n### Triton kernels — {today}, {device_name(device)}\n{note}\n"
               f"Command: `python benchmarks/bench_kernels.py {' '.join(map(shlex.quote, argv))}`\n"
               f"dtype {args.dtype}, {args.experts} experts, paired route (2 segments, up side "
               f"shared), adapter b={args.bottleneck} (gelu_tanh), LoRA r={args.rank}; torch "
               f"{torch.__version__}, compile backend `{args.compile_backend}`; medians of "
               f"{args.repeats} interleaved {timing} after {args.warmup} warm-up. Measured copy "
               f"bandwidth: {copy_bw:.0f} GB/s.\n\n{markdown(rows)}\n")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(section)
    print(f"appended to {path}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true",
                   help="Triton interpreter on tiny shapes (code-path check, not a speed figure)")
    p.add_argument("--models", default="gpt2-medium,gpt2-large,gpt2-xl",
                   help=f"comma list of {sorted(GPT2_WIDTH)} (their hidden width d)")
    p.add_argument("--tokens", default="1024,2048,4096,8192,16384,32768",
                   help="comma list of token counts N (rows)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--bottleneck", type=int, default=16)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--loss_shape", default="8,512,50257,1024",
                   help="sequences,tokens,vocabulary,d of the fused-loss benchmark")
    p.add_argument("--loss_chunk", type=int, default=1024)
    p.add_argument("--benches", default="adapter,lora,loss", help="comma list to run")
    p.add_argument("--compile_backend", default="inductor",
                   help="torch.compile backend of the compared reference; 'none' skips it")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--results", type=Path, default=None,
                   help="markdown file to append to (GPU default: benchmarks/RESULTS.md)")
    args = p.parse_args(argv)
    if args.cpu:  # tiny shapes unless given on the command line
        given = " ".join(argv)
        if "--models" not in given:
            args.models = "tiny"
        if "--tokens" not in given:
            args.tokens = "96,130"
        if "--dtype" not in given:
            args.dtype = "fp32"
        if "--loss_shape" not in given:
            args.loss_shape = "2,24,300,32"
        if "--loss_chunk" not in given:
            args.loss_chunk = 16
        if "--warmup" not in given:
            args.warmup = 1
        if "--repeats" not in given:
            args.repeats = 2
    widths = {**GPT2_WIDTH, "tiny": 48}
    try:
        args.widths = [widths[name] for name in args.models.split(",")]
        args.token_counts = [int(t) for t in args.tokens.split(",")]
        args.loss_shape = [int(v) for v in args.loss_shape.split(",")]
    except (KeyError, ValueError) as exc:
        p.error(f"--models / --tokens / --loss_shape: cannot read {exc}")
    if len(args.loss_shape) != 4:
        p.error("--loss_shape takes 4 numbers: sequences,tokens,vocabulary,d")
    args.bench_list = args.benches.split(",")
    unknown = set(args.bench_list) - {"adapter", "lora", "loss"}
    if unknown:
        p.error(f"--benches: unknown {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.cpu:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        raise SystemExit("bench_kernels: no CUDA device; run with --cpu for the interpreter "
                         "code-path check (not a speed figure)")
    timer = Timer(device, args.warmup, args.repeats)
    copy_bw = bench_copy(timer, device, 2**30 if device.type == "cuda" else 2**24)
    print(f"device: {device_name(device)}; copy bandwidth {copy_bw:.0f} GB/s")
    rows: list[Row] = []
    for d in args.widths:
        for n in args.token_counts:
            if "adapter" in args.bench_list:
                rows += bench_adapter(timer, args, d, n, copy_bw, device)
            if "lora" in args.bench_list:
                rows += bench_lora(timer, args, d, n, device)
            print(f"d={d} N={n} done", flush=True)
    if "loss" in args.bench_list:
        rows += bench_loss(timer, args, device)
    print(markdown(rows))
    results = args.results or (
        REPO / "benchmarks" / "RESULTS.md" if device.type == "cuda" else None
    )
    if results is not None:
        write_results(results, device, argv, copy_bw, rows, args)
    return rows


if __name__ == "__main__":
    main()
