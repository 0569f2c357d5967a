#!/usr/bin/env python
"""Decode an NLG test set from an AdaMix checkpoint with the paper's beam search.

One process::

    python launch/generate_nlg.py --checkpoint runs/e2e_lora/adaptation

Many ranks (the unique contexts are sharded, rank 0 writes the files)::

    deepspeed --num_gpus 8 launch/generate_nlg.py --checkpoint runs/e2e_lora/adaptation
    torchrun --nproc_per_node 8 launch/generate_nlg.py --checkpoint runs/e2e_lora/adaptation

The checkpoint's stored preset names the backbone and data; flags override it. Writes
``hypotheses.txt``, ``references.txt`` (grouped by blank lines), ``contexts.txt`` and
``generation.json`` to ``--output_dir`` (default: ``<checkpoint>/../generations/<split>_<policy>``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from adamix_ds.config import INFERENCE_MODES
from adamix_ds.evaluation.beam import BeamSettings, with_stop_tokens
from adamix_ds.evaluation.generate import decode_sharded
from adamix_ds.evaluation.pipeline import (
    TASKS,
    DecodingModel,
    load_decoding_model,
    split_groups,
    write_generation,
)
from adamix_ds.inference import experts_missing
from adamix_ds.routing import Router

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_decoding_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared with launch/eval_nlg.py."""
    src = parser.add_argument_group("checkpoint and data")
    src.add_argument("--checkpoint", required=True,
                     help="AdaMix adaptation dir (mixture or merged) or a PEFT export dir")
    src.add_argument("--backbone", help="override the checkpoint's backbone (hub id or local dir)")
    src.add_argument("--init", choices=("pretrained", "random"),
                     help="override the checkpoint's backbone init")
    src.add_argument("--tokenizer", help="GPT-2 BPE dir (default: the checkpoint's / bundled)")
    src.add_argument("--task", choices=TASKS, help="default: the checkpoint's task")
    src.add_argument("--data_dir", help="default: the checkpoint's data_dir (bundled E2E sample)")
    src.add_argument("--split", default="test")
    src.add_argument("--limit", type=int, help="decode only the first N unique contexts")
    dec = parser.add_argument_group("decoding (defaults: the paper's)")
    dec.add_argument("--num_beams", type=int, default=10)
    dec.add_argument("--length_penalty", type=float, default=0.8)
    dec.add_argument("--no_repeat_ngram_size", type=int, default=4)
    dec.add_argument("--max_new_tokens", type=int, default=64)
    dec.add_argument("--stop_token_ids", type=int, nargs="+", default=None,
                     help="default: the tokenizer's eos and its \"\\n\\n\" token (GPT-2: "
                          "50256 628)")
    dec.add_argument("--batch_size", type=int, default=16, help="contexts per beam search")
    dec.add_argument("--max_prompt_tokens", type=int,
                     help="left-cut prompts (default: positions - max_new_tokens)")
    dec.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    dec.add_argument("--device", help="default: cuda:LOCAL_RANK if available, else cpu")


def beam_settings(args: argparse.Namespace) -> BeamSettings:
    return BeamSettings(num_beams=args.num_beams, length_penalty=args.length_penalty,
                        no_repeat_ngram_size=args.no_repeat_ngram_size,
                        max_new_tokens=args.max_new_tokens,
                        stop_token_ids=tuple(args.stop_token_ids or ()) or None)


def init_ranks() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from the launcher's environment; one process without one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


@dataclasses.dataclass
class DecodingJob:
    """What both launch scripts decode: this rank's place, the model and the test groups."""
    rank: int
    world: int
    device: torch.device
    loaded: DecodingModel
    task: str
    data_dir: str | None
    groups: list[dict[str, Any]]


def prepare_decoding(args: argparse.Namespace, merge: bool) -> DecodingJob:
    """Ranks, the checkpoint (merged when ``merge``) and the split's groups from the shared flags.

    The checkpoint's stored preset gives the task and data directory unless a flag overrides it.
    """
    rank, world, device = init_ranks()
    device = torch.device(args.device) if args.device else device
    loaded = load_decoding_model(args.checkpoint, backbone=args.backbone, init=args.init,
                                 tokenizer=args.tokenizer, merge=merge,
                                 dtype=DTYPES[args.dtype], device=device)
    task = args.task or loaded.preset.get("task", "e2e")
    data_dir = args.data_dir if args.data_dir is not None else loaded.preset.get("data_dir")
    groups = split_groups(task, args.split, data_dir, args.limit)
    return DecodingJob(rank, world, device, loaded, task, data_dir, groups)


def policy_dir_name(split: str, inference: str, ensemble_passes: int, route_draw: int) -> str:
    if inference == "ensemble":
        return f"{split}_ensemble{ensemble_passes}_draw{route_draw}"
    if inference == "random":
        return f"{split}_random_draw{route_draw}"
    return f"{split}_{inference}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_decoding_args(parser)
    parser.add_argument("--inference", choices=INFERENCE_MODES, default="merged")
    parser.add_argument("--ensemble_passes", type=int, default=1,
                        help="T members of the logit ensemble (--inference ensemble)")
    parser.add_argument("--route_draw", type=int, default=0,
                        help="which random route / ensemble draw (--inference random|ensemble)")
    parser.add_argument("--output_dir")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"generate_nlg: error: {err}", file=sys.stderr)
        return 2


def check_policy_flags(args: argparse.Namespace, model: torch.nn.Module,
                       router: Router | None) -> None:
    """Refuse an inference request the loaded model cannot serve, naming the flags."""
    if args.ensemble_passes < 1:
        raise ValueError(f"--ensemble_passes must be >= 1, got {args.ensemble_passes}")
    if args.ensemble_passes != 1 and args.inference != "ensemble":
        raise ValueError(f"--ensemble_passes {args.ensemble_passes} needs --inference ensemble")
    if args.inference != "merged" and (missing := experts_missing(model, router)):
        raise ValueError(f"--inference {args.inference} routes among the experts, but the model "
                         f"has {missing}: load the unmerged mixture checkpoint")


def run(args: argparse.Namespace) -> int:
    job = prepare_decoding(args, merge=args.inference == "merged")
    check_policy_flags(args, job.loaded.model, job.loaded.router)
    rank, world, groups, task = job.rank, job.world, job.groups, job.task
    settings = with_stop_tokens(beam_settings(args), job.loaded.tokenizer)  # as recorded
    start = time.perf_counter()
    outputs = decode_sharded(job.loaded.model, job.loaded.tokenizer, [g["context"] for g in groups],
                             rank=rank, world_size=world, settings=settings,
                             batch_size=args.batch_size, max_prompt_tokens=args.max_prompt_tokens,
                             router=job.loaded.router, inference=args.inference,
                             ensemble_passes=args.ensemble_passes, route_draw=args.route_draw)
    seconds = time.perf_counter() - start
    if rank == 0:
        name = policy_dir_name(args.split, args.inference, args.ensemble_passes, args.route_draw)
        out = Path(args.output_dir) if args.output_dir else \
            Path(args.checkpoint).resolve().parent / "generations" / name
        meta = {"checkpoint": str(args.checkpoint), "task": task, "split": args.split,
                "data_dir": job.data_dir, "contexts": len(groups), "inference": args.inference,
                "ensemble_passes": args.ensemble_passes, "route_draw": args.route_draw,
                "beam": dataclasses.asdict(settings),
                "ranks": world, "device": str(job.device), "dtype": args.dtype,
                "decode_seconds": round(seconds, 3)}
        write_generation(out, task, groups, outputs, meta)
        print(f"{len(groups)} contexts decoded in {seconds:.1f}s on {world} rank(s) -> {out}")
    if world > 1:
        torch.distributed.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
