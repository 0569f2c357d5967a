#!/usr/bin/env python
"""Checkpoint -> decode -> official scores, written beside the checkpoint.

    python launch/eval_nlg.py --checkpoint runs/e2e_lora/adaptation
    python launch/eval_nlg.py --checkpoint runs/e2e_lora/adaptation \\
        --policies merged fixed random ensemble --random_routes 10     # ablations + violin plot
    deepspeed --num_gpus 8 launch/eval_nlg.py --checkpoint ...          # decoding sharded

Writes to ``--output_dir`` (default ``<checkpoint>/../eval_<split>``): ``generations/<policy>/``
(the decoded files), ``scores.json``, ``scores.md`` (with the paper's E2E row for comparison) and,
with ``--random_routes K``, ``routing_violin.png``: K random-routing decodes against the merged one.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from adamix_ds.config import INFERENCE_MODES
from adamix_ds.evaluation.beam import with_stop_tokens
from adamix_ds.evaluation.generate import decode_sharded
from adamix_ds.evaluation.metrics.java import JavaNotFoundError
from adamix_ds.evaluation.metrics.meteor import Meteor15
from adamix_ds.evaluation.pipeline import score_outputs, scored_texts, write_generation
from adamix_ds.evaluation.plots import routing_violin
from adamix_ds.evaluation.report import PAPER_ROWS, atomic_write_text, markdown_table
from generate_nlg import add_decoding_args, beam_settings, prepare_decoding


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_decoding_args(parser)
    parser.add_argument("--policies", nargs="+", choices=INFERENCE_MODES, default=["merged"],
                        help="inference policies to decode and score (the paper's ablations)")
    parser.add_argument("--ensemble_passes", type=int, default=4,
                        help="members of the logit ensemble (policy 'ensemble')")
    parser.add_argument("--random_routes", type=int, default=0,
                        help="K random-routing decodes for the routing violin plot")
    parser.add_argument("--java", help="java executable for METEOR / PTB tokenizer")
    parser.add_argument("--show", type=int, default=0, metavar="N",
                        help="print the first N decodes of each policy beside a reference")
    parser.add_argument("--output_dir")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"eval_nlg: error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    if args.random_routes < 0:
        raise ValueError(f"--random_routes must be >= 0, got {args.random_routes}")
    if args.show < 0:
        raise ValueError(f"--show must be >= 0, got {args.show}")
    needs_experts = args.random_routes > 0 or set(args.policies) != {"merged"}
    job = prepare_decoding(args, merge=not needs_experts)
    rank, world, loaded, task, groups = job.rank, job.world, job.loaded, job.task, job.groups
    categories = [g["category"] for g in groups] if all("category" in g for g in groups) else None
    out = Path(args.output_dir) if args.output_dir else \
        Path(args.checkpoint).resolve().parent / f"eval_{args.split}"
    settings = with_stop_tokens(beam_settings(args), loaded.tokenizer)  # as recorded

    def decode_and_score(name: str, inference: str, passes: int = 1, draw: int = 0
                         ) -> dict[str, Any] | None:
        start = time.perf_counter()
        hyps = decode_sharded(loaded.model, loaded.tokenizer, [g["context"] for g in groups],
                              rank=rank, world_size=world, settings=settings,
                              batch_size=args.batch_size, max_prompt_tokens=args.max_prompt_tokens,
                              router=loaded.router, inference=inference, ensemble_passes=passes,
                              route_draw=draw)
        seconds = time.perf_counter() - start
        if rank != 0:
            return None
        write_generation(out / "generations" / name, task, groups, hyps,
                         {"checkpoint": str(args.checkpoint), "task": task, "split": args.split,
                          "inference": inference, "ensemble_passes": passes, "route_draw": draw,
                          "decode_seconds": round(seconds, 3)})
        scored_hyps, scored_refs, _ = scored_texts(task, hyps, groups)
        if args.show:
            _print_decodes(name, groups[:args.show], scored_hyps, scored_refs)
        results = score_outputs(task, scored_hyps, scored_refs, categories, java=args.java,
                                meteor=meteor)
        scored = {subset: r.to_dict() for subset, r in results.items()}
        print(f"[{name}] decoded {len(groups)} in {seconds:.1f}s: " + ", ".join(
            f"{m} {v:.4f}" for m, v in results["all"].scores.items()))
        return {"inference": inference, "ensemble_passes": passes, "route_draw": draw,
                "decode_seconds": round(seconds, 3), "subsets": scored}

    report: dict[str, Any] = {"checkpoint": str(args.checkpoint), "task": task,
                              "split": args.split, "contexts": len(groups), "ranks": world,
                              "beam": dataclasses.asdict(settings),
                              "policies": {}}
    meteor = _start_meteor(args.java) if rank == 0 and task == "e2e" else None
    try:
        _decode_all(args, report, decode_and_score)
    finally:
        if meteor is not None:
            meteor.close()
    if rank == 0:
        _write_report(out, report, task)
    if world > 1:
        torch.distributed.barrier()
    return 0 if rank or _all_scored(report) else 1


def _print_decodes(name: str, groups: Sequence[dict[str, Any]], hyps: Sequence[str],
                   refs: Sequence[Sequence[str]]) -> None:
    """Input, decode (as scored) and the first of its references, for the first len(groups)."""
    print(f"\n[{name}] first {len(groups)} decodes:")
    # groups is the first N of the decode; hyps and refs are whole: zip stops at N
    for group, hyp, group_refs in zip(groups, hyps, refs, strict=False):
        print(f"  input : {group['context']}\n  output: {hyp or '(empty)'}\n"
              f"  ref   : {group_refs[0] if group_refs else '(none)'}\n")


def _start_meteor(java: str | None) -> Meteor15 | None:
    """One METEOR process for every decode of the run (its jar loads for ~15 s); without Java the
    scorer reports METEOR as not computed."""
    try:
        return Meteor15(java)
    except (JavaNotFoundError, OSError):
        return None


def _decode_all(args: argparse.Namespace, report: dict[str, Any], decode_and_score: Any) -> None:
    """The requested policies, then the random-routing draws (next to a merged decode)."""
    for policy in dict.fromkeys(args.policies):
        passes = args.ensemble_passes if policy == "ensemble" else 1
        report["policies"][policy] = decode_and_score(policy, policy, passes)
    if args.random_routes:
        if "merged" not in report["policies"]:  # a key test, not a value one: ranks > 0 hold None
            report["policies"]["merged"] = decode_and_score("merged", "merged")
        draws = [decode_and_score(f"random_draw{k}", "random", draw=k)
                 for k in range(args.random_routes)]
        report["random_routes"] = draws


def _all_scored(report: dict[str, Any]) -> bool:
    runs = list(report["policies"].values()) + list(report.get("random_routes", []))
    return all(not subset["errors"] for run in runs for subset in run["subsets"].values())


def _write_report(out: Path, report: dict[str, Any], task: str) -> None:
    """scores.json + scores.md (+ the violin PNG) beside the generations, written atomically."""
    paper = PAPER_ROWS.get(task, {})
    report["paper"] = paper
    table = markdown_table(report, paper)
    atomic_write_text(out / "scores.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "scores.md", table)
    print(table)
    if report.get("random_routes"):
        merged = report["policies"]["merged"]["subsets"]["all"]["scores"]
        draws = [run["subsets"]["all"]["scores"] for run in report["random_routes"]]
        metrics = [m for m in merged if all(m in d for d in draws)]
        png = routing_violin(
            {m: [d[m] for d in draws] for m in metrics},
            merged,
            out / "routing_violin.png",
            title=f"{task} {report['split']}: {len(draws)} random routes vs merged",
        )
        print(f"routing analysis: {png}")
    print(f"scores: {out / 'scores.json'}, {out / 'scores.md'}")


if __name__ == "__main__":
    sys.exit(main())
