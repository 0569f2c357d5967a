#!/usr/bin/env python
"""Decoding throughput: batched, deduplicated beam search vs a batch-1 loop over every test line.

The paper's code decodes the E2E test file line by line (4,693 lines for 630 distinct MRs). Here
both ways run in one process on the same merged model with the same beam rules (beam 10,
length penalty 0.8, no-repeat 4-grams, 64 new tokens) and are timed side by side:

* ``per_line``: ``beam_search`` on one prompt at a time, for every line, duplicates included;
* ``batched``: ``decode_contexts``: each distinct context once, length-sorted batches.

Sequences per second = test lines covered per second (both produce an output for every line).
The outputs are compared too: batching must not change what is decoded.

    python benchmarks/bench_decoding.py --checkpoint runs/demo/adaptation   # after make demo
    python benchmarks/bench_decoding.py --checkpoint <run>/adaptation --data_dir <data>/e2e \\
        --max_lines 1000 --batch_size 32                                    # on a GPU
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import torch

from adamix_ds.backbones import load_backbone
from adamix_ds.data import load_nlg_records, load_tokenizer
from adamix_ds.evaluation.beam import BeamSettings, beam_search, with_stop_tokens
from adamix_ds.evaluation.generate import build_prompt, decode_contexts, default_prompt_budget
from adamix_ds.evaluation.pipeline import load_decoding_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="adaptation dir (merged and folded for decoding)")
    source.add_argument("--random_backbone", metavar="N_EMBD,N_LAYER",
                        help="a random-init GPT-2 of this size with the bundled BPE instead: it "
                        "never emits a stop token, so every decode runs all 64 steps")
    parser.add_argument("--data_dir", help="E2E folder with test.txt (default: checkpoint's)")
    parser.add_argument("--max_lines", type=int, help="the first N test lines")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--no_stop", action="store_true",
                        help="no stop token: every output is 64 tokens (an untrained model's "
                        "best candidate is otherwise the immediate stop, an empty output)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    parser.add_argument("--no_write", action="store_true", help="print only")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if args.checkpoint:
        loaded = load_decoding_model(args.checkpoint, dtype=dtype, device=device)
        model, tokenizer = loaded.model, loaded.tokenizer
        data_dir = args.data_dir if args.data_dir is not None else loaded.preset.get("data_dir")
        source = f"`{args.checkpoint}` merged and folded"
    else:
        n_embd, n_layer = (int(v) for v in args.random_backbone.split(","))
        model = load_backbone("gpt2", init="random", n_embd=n_embd, n_layer=n_layer, n_head=4)
        model.to(device=device, dtype=dtype).eval()
        tokenizer, data_dir = load_tokenizer(), args.data_dir
        source = "random-init backbone"
    lines = [r["context"] for r in load_nlg_records("e2e", "test", data_dir)][:args.max_lines]
    settings = with_stop_tokens(BeamSettings(stop_token_ids=(-1,)) if args.no_stop
                                else BeamSettings(), tokenizer)
    budget = default_prompt_budget(model, settings)
    prompts = [build_prompt(ids, tokenizer.eos_token_id, budget)
               for ids in tokenizer(lines, add_special_tokens=False)["input_ids"]]

    # Warm-up (allocator, kernels) on one prompt, then the two ways back to back.
    beam_search(model, prompts[:1], settings, pad_id=tokenizer.eos_token_id)
    _sync(device)
    start = time.perf_counter()
    per_line = [tokenizer.decode(beam_search(model, [p], settings,
                                             pad_id=tokenizer.eos_token_id)[0]).strip()
                for p in prompts]
    _sync(device)
    per_line_s = time.perf_counter() - start
    start = time.perf_counter()
    batched = decode_contexts(model, tokenizer, lines, settings, batch_size=args.batch_size)
    _sync(device)
    batched_s = time.perf_counter() - start

    unique = len(set(lines))
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in batched]
    same = sum(a == b for a, b in zip(per_line, batched, strict=True))
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    config = model.config
    text = "\n".join([
        f"### Decoding throughput — {datetime.date.today().isoformat()}, {device_name}",
        "",
        f"Command: `python benchmarks/bench_decoding.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"Model: {source} (GPT-2, {config.n_layer} layers x "
        f"{config.n_embd}, vocabulary {config.vocab_size}), {args.dtype}; E2E test, first "
        f"{len(lines)} lines = {unique} distinct MRs; beam 10, length penalty 0.8, no-repeat "
        f"4-grams, <= 64 new tokens{' (no stop token)' if args.no_stop else ''}; batched: batch "
        f"{args.batch_size} contexts.",
        "",
        "| decoding | seconds | test lines / s | ratio |",
        "|---|---|---|---|",
        f"| batch-1 loop over every line (paper's code) | {per_line_s:.1f} | "
        f"{len(lines) / per_line_s:.2f} | 1.00 |",
        f"| batched + deduplicated | {batched_s:.1f} | {len(lines) / batched_s:.2f} | "
        f"{per_line_s / batched_s:.2f} |",
        "",
        f"Same output on {same} of {len(lines)} lines; output length {min(lengths)}-{max(lengths)} "
        f"tokens (mean {sum(lengths) / len(lengths):.1f}). Of the speed-up, "
        f"{len(lines) / unique:.2f}x comes from deduplication alone (lines / distinct MRs); the "
        f"rest from batching.",
        "",
    ])
    print(text)
    if not args.no_write:
        with open(args.results, "a") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
