"""``adamix-ds`` command line: inspect | merge | export | score.

    adamix-ds inspect --backbone gpt2-medium --init random --method adapter --experts 8 \\
        --bottleneck 8 --share up --json
    adamix-ds inspect --backbone meta-llama/Llama-3.1-70B --init meta --targets q,v --plan \\
        --zero_stages 3 --ranks 8,64 --seq 2048 --checkpointing
    adamix-ds export runs/e2e/adaptation --backbone gpt2-medium --merged served/ --dtype bfloat16
    adamix-ds score webnlg --refs references_webnlg/reference --hyp hypothesis_webnlg \\
        --categories categories.txt
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from .backbones import INITS, META, load_backbone
from .checkpoint import export_peft, load_adaptation, read_adaptation_config, save_adaptation
from .config import AdaMixConfig, ConfigError
from .data import load_tokenizer, tokenizer_source
from .inject import inject_adamix
from .merging import MERGE_MODES, merge_experts
from .planner import (
    activation_bytes,
    largest_module_params,
    model_state_bytes,
    parameter_counts,
)
from .serving import export_merged_model
from .tasks.base import PASS_SCHEDULES


def _add_adamix_args(parser: argparse.ArgumentParser) -> None:
    d = AdaMixConfig()
    parser.add_argument("--backbone", required=True, help="hub id or local directory")
    parser.add_argument("--init", choices=(*INITS, META), default="pretrained",
                        help="meta: shapes only, no memory (plan a 70B run on a laptop)")
    parser.add_argument("--task", default="causal_lm",
                        choices=("causal_lm", "masked_lm", "sequence_classification"))
    parser.add_argument("--method", default=d.method)
    parser.add_argument("--experts", type=int, default=d.num_experts)
    parser.add_argument("--share", default=d.share)
    parser.add_argument("--rank", type=int, default=d.rank)
    parser.add_argument("--alpha", type=float, default=d.alpha)
    parser.add_argument("--targets", default=",".join(d.targets),
                        help="comma-separated canonical names or module regexes")
    parser.add_argument("--bottleneck", type=int, default=d.bottleneck)
    parser.add_argument("--activation", default=d.activation)
    parser.add_argument("--placement", default=d.placement)


def _config_from_args(args: argparse.Namespace) -> AdaMixConfig:
    return AdaMixConfig(method=args.method, num_experts=args.experts, share=args.share,
                        rank=args.rank, alpha=args.alpha, targets=args.targets,
                        bottleneck=args.bottleneck, activation=args.activation,
                        placement=args.placement)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError as err:
        raise ValueError(f"{flag}: expected comma-separated integers, got {text!r}") from err


def _memory_plan(model, args: argparse.Namespace) -> list[dict]:
    """Per-rank bytes for each (ZeRO stage, rank count) asked for."""
    frozen, trainable = parameter_counts(model)
    config = model.config
    activations = activation_bytes(
        config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
        config.vocab_size, args.batch, args.seq, paired=args.consistency == "paired",
        checkpointing=args.checkpointing)
    largest = largest_module_params(model)
    plan = []
    for stage in _int_list(args.zero_stages, "--zero_stages"):
        for ranks in _int_list(args.ranks, "--ranks"):
            states = model_state_bytes(frozen, trainable, stage, ranks, args.precision, largest)
            plan.append({"zero_stage": stage, "ranks": ranks, "params": states.params,
                         "grads": states.grads, "optimizer": states.optimizer,
                         "gathered": states.gathered, "activations": activations,
                         "total": states.total + activations})
    return plan


def cmd_inspect(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    model = load_backbone(args.backbone, init=args.init, task=args.task)
    report = inject_adamix(model, cfg)
    summary = {"backbone": args.backbone, "init": args.init, "adamix": cfg.to_dict(),
               **report.to_dict()}
    if args.plan:
        summary["memory_per_rank"] = _memory_plan(model, args)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"backbone        {args.backbone} ({report.model_type}, init={args.init})")
    print(f"backbone params {report.backbone_params:,}")
    print(f"adapted modules {report.adapted_modules}")
    print(f"trainable       {report.trainable_params:,} (training, {cfg.num_experts} experts)")
    print(f"inference       {report.inference_params:,} (merged, one module per layer)")
    if args.plan:
        gib = 2 ** 30
        print(f"\nmemory per rank, GiB ({args.precision}, micro-batch {args.batch} x {args.seq}, "
              f"consistency {args.consistency}, checkpointing "
              f"{'on' if args.checkpointing else 'off'}; activations estimated):")
        print("zero  ranks  params  grads  optim  gathered  activations  total")
        for row in summary["memory_per_rank"]:
            print(f"{row['zero_stage']:>4}  {row['ranks']:>5}  "
                  + "  ".join(f"{row[k] / gib:>{w}.2f}" for k, w in
                              (("params", 6), ("grads", 5), ("optimizer", 5), ("gathered", 8),
                               ("activations", 11), ("total", 5))))
    return 0


def _load_checkpoint(args: argparse.Namespace, dtype: torch.dtype | None = None):
    cfg, meta = read_adaptation_config(args.checkpoint)
    model = load_backbone(args.backbone, init=args.init, task=args.task, dtype=dtype)
    inject_adamix(model, cfg)
    load_adaptation(model, args.checkpoint, cfg)
    return model, cfg, meta


def cmd_merge(args: argparse.Namespace) -> int:
    model, cfg, meta = _load_checkpoint(args)
    if meta["merged"]:
        raise SystemExit(f"{args.checkpoint} is already merged ({meta['merged']})")
    merge_experts(model, args.mode)
    save_adaptation(model, args.out, cfg)
    print(f"merged ({args.mode}) -> {args.out}")
    return 0


def _export_tokenizer(args: argparse.Namespace, model_type: str):
    """--tokenizer, else the backbone directory's own, else GPT-2's bundled BPE for GPT-2."""
    source = tokenizer_source(args.tokenizer, args.backbone)
    if source is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source)
    if model_type == "gpt2":
        return load_tokenizer()
    print(f"adamix-ds export: no tokenizer saved (none in {args.backbone}; pass --tokenizer)",
          file=sys.stderr)
    return None


def cmd_export(args: argparse.Namespace) -> int:
    if not (args.out or args.merged):
        raise ValueError("export: give --out DIR (a PEFT adapter) and/or --merged DIR (a dense "
                         "model with the merged LoRA folded in)")
    if args.dtype != "float32" and not args.merged:
        raise ValueError("export: --dtype applies to --merged only")
    # fold in float32 whatever the checkpoint's dtype, cast when saving
    model, cfg, _ = _load_checkpoint(args, torch.float32 if args.merged else None)
    if args.out:
        export_peft(model, args.out, cfg, base_model_name_or_path=args.backbone)
        print(f"PEFT adapter -> {args.out}")
    if args.merged:
        tokenizer = _export_tokenizer(args, model.config.model_type)
        export_merged_model(model, args.merged, tokenizer=tokenizer,
                            dtype=getattr(torch, args.dtype))
        print(f"dense model ({args.dtype}, merged LoRA folded in) -> {args.merged}")
    return 0


SCORE_TASKS = ("e2e", "webnlg", "dart")


def _score_table(results: dict, decimals: dict) -> str:
    """Rows = subsets, columns = metrics that any subset has ('-' where one is missing)."""
    metrics = [m for m in decimals if any(m in r.scores for r in results.values())]
    width = max(len(name) for name in results)
    lines = [" " * width + "".join(f"{m:>10}" for m in metrics)]
    for name, result in results.items():
        cells = [f"{result.scores[m]:>10.{decimals[m]}f}" if m in result.scores else f"{'-':>10}"
                 for m in metrics]
        lines.append(f"{name:<{width}}" + "".join(cells))
    return "\n".join(lines)


def _read_score_inputs(args: argparse.Namespace):
    """(hypotheses, references, categories or None) of ``args``; ValueError / FileNotFoundError
    name the file at fault."""
    if args.categories and args.task != "webnlg":
        raise ValueError("--categories applies to webnlg only (the seen / unseen split)")
    if args.task == "e2e":
        from .evaluation.metrics.e2e import read_hypotheses, read_references
        hyps, refs = read_hypotheses(args.hyp), read_references(args.refs)
    else:
        from .evaluation.metrics.webnlg import read_hypotheses, read_webnlg_references
        hyps, refs = read_hypotheses(args.hyp), read_webnlg_references(args.refs)
    if len(hyps) != len(refs):
        raise ValueError(f"{args.hyp} has {len(hyps)} system outputs but {args.refs} has "
                         f"{len(refs)} reference sets (one per output is needed)")
    categories = None
    if args.categories:
        from .evaluation.metrics.webnlg import read_categories
        categories = read_categories(args.categories)
        if len(categories) != len(hyps):
            raise ValueError(f"{args.categories} has {len(categories)} categories but {args.hyp} "
                             f"has {len(hyps)} system outputs (one category per output)")
    return hyps, refs, categories


def cmd_score(args: argparse.Namespace) -> int:
    hyps, refs, categories = _read_score_inputs(args)
    if args.task == "e2e":
        from .evaluation.metrics.e2e import E2E_METRICS, score_e2e
        results = {"all": score_e2e(hyps, refs, java=args.java)}
        decimals = {m: 4 for m in E2E_METRICS}
    else:
        from .evaluation.metrics.webnlg import WEBNLG_METRICS, score_dart, score_webnlg
        if args.task == "webnlg":
            results = score_webnlg(hyps, refs, categories=categories, java=args.java)
        else:
            results = {"all": score_dart(hyps, refs, java=args.java)}
        # BLEU as multi-bleu-detok prints it; METEOR / TER with two more digits than eval.py
        decimals = dict(zip(WEBNLG_METRICS, (2, 4, 4), strict=True))
    if args.json:
        if args.task == "webnlg":
            print(json.dumps({name: r.to_dict() for name, r in results.items()}, indent=2))
        else:
            print(json.dumps(results["all"].to_dict(), indent=2))
    elif args.task == "e2e":
        # the official measure_scores.py block
        print("SCORES:\n==============")
        for metric, value in results["all"].scores.items():
            print(f"{metric}: {value:.4f}")
    else:
        print(_score_table(results, decimals))
    # a failure is the same for every subset: report each metric once
    errors = {m: e for r in results.values() for m, e in r.errors.items()}
    for metric, error in errors.items():
        print(f"adamix-ds score: {metric} not computed: {error}", file=sys.stderr)
    return 1 if errors else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adamix-ds", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    inspect = sub.add_parser("inspect", help="build a backbone, inject AdaMix, print counts")
    _add_adamix_args(inspect)
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.add_argument("--plan", action="store_true",
                         help="also print the memory each rank needs per ZeRO stage")
    inspect.add_argument("--zero_stages", default="0,1,2,3", help="--plan: e.g. 2,3")
    inspect.add_argument("--ranks", default="8", help="--plan: data-parallel ranks, e.g. 8,64")
    inspect.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    inspect.add_argument("--batch", type=int, default=1, help="--plan: micro-batch per rank")
    inspect.add_argument("--seq", type=int, default=1024, help="--plan: tokens per sequence")
    inspect.add_argument("--consistency", choices=PASS_SCHEDULES, default="paired",
                         help="--plan: paired doubles the activations' batch")
    inspect.add_argument("--checkpointing", action="store_true",
                         help="--plan: activation checkpointing on")
    inspect.set_defaults(func=cmd_inspect)

    for name, func, helptext in (("merge", cmd_merge, "merge a mixture checkpoint's experts"),
                                 ("export", cmd_export, "export a LoRA checkpoint to PEFT "
                                                        "and / or a dense merged model")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("checkpoint", help="adaptation checkpoint directory")
        p.add_argument("--backbone", required=True)
        p.add_argument("--init", choices=INITS, default="pretrained")
        p.add_argument("--task", default="causal_lm")
        if name == "merge":
            p.add_argument("--out", required=True)
            p.add_argument("--mode", choices=MERGE_MODES, default="average")
        else:
            p.add_argument("--out", help="write the merged LoRA as a PEFT adapter here")
            p.add_argument("--merged", metavar="DIR",
                           help="write the backbone with the merged LoRA folded in, as a "
                                "standard Hugging Face model directory (from_pretrained, vLLM)")
            p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                           default="float32", help="--merged: dtype of the saved weights (the "
                                                   "fold runs in float32)")
            p.add_argument("--tokenizer", help="--merged: tokenizer to save beside the weights "
                                               "(default: the backbone directory's own)")
        p.set_defaults(func=func)

    score = sub.add_parser("score", help="official E2E / WebNLG / DART scores of system outputs",
                           description="E2E: the e2e-metrics scorer (BLEU, NIST, METEOR, ROUGE_L, "
                           "CIDEr). WebNLG / DART: GenerationEval's BLEU (multi-bleu-detok), "
                           "METEOR 1.5 and TER. Exit status 1 if a metric could not be computed "
                           "(the others are printed), 2 for unusable input files.")
    score.add_argument("task", choices=SCORE_TASKS)
    score.add_argument("--refs", required=True,
                       help="references: one file of blank-line-separated groups (one group per "
                            "output), or for webnlg / dart also GenerationEval's reference0, "
                            "reference1, ... given by their directory or stem")
    score.add_argument("--hyp", required=True, help="system outputs, one per line")
    score.add_argument("--categories", help="webnlg: one category per output line; adds the "
                                            "seen / unseen subsets")
    score.add_argument("--java", help="java executable for METEOR (and E2E's PTB tokenizer); "
                                      "default $ADAMIX_JAVA, then java on PATH")
    score.add_argument("--json", action="store_true", help="print JSON (scores and errors)")
    score.set_defaults(func=cmd_score)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"adamix-ds {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
