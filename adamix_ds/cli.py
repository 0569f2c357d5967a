"""``adamix-ds`` command line: inspect | merge | export.

    adamix-ds inspect --backbone gpt2-medium --init random --method adapter --experts 8 \\
        --bottleneck 8 --share up --json
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from .backbones import INITS, load_backbone
from .checkpoint import export_peft, load_adaptation, read_adaptation_config, save_adaptation
from .config import AdaMixConfig, ConfigError
from .inject import inject_adamix
from .merging import MERGE_MODES, merge_experts


def _add_adamix_args(parser: argparse.ArgumentParser) -> None:
    d = AdaMixConfig()
    parser.add_argument("--backbone", required=True, help="hub id or local directory")
    parser.add_argument("--init", choices=INITS, default="pretrained")
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


def cmd_inspect(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    model = load_backbone(args.backbone, init=args.init, task=args.task)
    report = inject_adamix(model, cfg)
    summary = {"backbone": args.backbone, "init": args.init, "adamix": cfg.to_dict(),
               **report.to_dict()}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"backbone        {args.backbone} ({report.model_type}, init={args.init})")
        print(f"backbone params {report.backbone_params:,}")
        print(f"adapted modules {report.adapted_modules}")
        print(f"trainable       {report.trainable_params:,} (training, {cfg.num_experts} experts)")
        print(f"inference       {report.inference_params:,} (merged, one module per layer)")
    return 0


def _load_checkpoint(args: argparse.Namespace):
    cfg, meta = read_adaptation_config(args.checkpoint)
    model = load_backbone(args.backbone, init=args.init, task=args.task)
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


def cmd_export(args: argparse.Namespace) -> int:
    model, cfg, _ = _load_checkpoint(args)
    export_peft(model, args.out, cfg, base_model_name_or_path=args.backbone)
    print(f"PEFT adapter -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adamix-ds", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    inspect = sub.add_parser("inspect", help="build a backbone, inject AdaMix, print counts")
    _add_adamix_args(inspect)
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(func=cmd_inspect)

    for name, func, helptext in (("merge", cmd_merge, "merge a mixture checkpoint's experts"),
                                 ("export", cmd_export, "export a LoRA checkpoint to PEFT")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("checkpoint", help="adaptation checkpoint directory")
        p.add_argument("--backbone", required=True)
        p.add_argument("--init", choices=INITS, default="pretrained")
        p.add_argument("--task", default="causal_lm")
        p.add_argument("--out", required=True)
        if name == "merge":
            p.add_argument("--mode", choices=MERGE_MODES, default="average")
        p.set_defaults(func=func)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"adamix-ds {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
