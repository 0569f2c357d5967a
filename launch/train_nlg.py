#!/usr/bin/env python
"""Train AdaMix on an NLG task (E2E / WebNLG / DART) with DeepSpeed.

    deepspeed launch/train_nlg.py --ds_config ds_configs/zero2_bf16.json \\
        --preset launch/presets/e2e_lora.yaml --output_dir runs/e2e_lora

The ds_config owns precision, micro-batch, accumulation, clipping and ZeRO; the preset owns the
model, AdaMix, data and schedule. The flags below override single preset values.
"""
from __future__ import annotations

import argparse
import sys

from adamix_ds.config import ConfigError
from adamix_ds.kernels import KERNEL_MODES, set_kernel_mode
from adamix_ds.preset import Preset, add_override_flags, preset_with_overrides
from adamix_ds.training.ds_config import DSConfigError
from adamix_ds.training.exit_codes import RESUMABLE_FAULTS, fault_exit_code

OVERRIDES = {  # flag -> (section or None, key, type)
    "backbone": (None, "backbone", str),
    "init": (None, "init", str),
    "data_dir": (None, "data_dir", str),
    "task": (None, "task", str),
    "max_seq_len": (None, "max_seq_len", int),
    "max_train_examples": (None, "max_train_examples", int),
    "epochs": ("train", "epochs", float),
    "max_steps": ("train", "max_steps", int),
    "consistency": ("train", "consistency", str),
    "save_every": ("train", "save_every", int),
    "log_every": ("train", "log_every", int),
    "seed": ("train", "seed", int),
    "sample_after": ("train", "sample_after", int),
    "experts": ("adamix", "num_experts", int),
    "method": ("adamix", "method", str),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds_config", required=True, help="DeepSpeed JSON config")
    parser.add_argument(
        "--preset", required=True, help="YAML preset (model, AdaMix, data, schedule)"
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--no_resume", action="store_true",
                        help="start from scratch even if output_dir holds a checkpoint")
    parser.add_argument("--kernels", choices=KERNEL_MODES, default="auto",
                        help="expert layers: Triton kernels (auto: on CUDA) or eager torch")
    parser.add_argument("--fused_loss", action="store_true", default=None,
                        help="compute the loss from hidden states in token chunks (never the "
                             "full logits of both passes); ZeRO stage <= 2")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # launcher
    add_override_flags(parser, OVERRIDES)
    return parser.parse_args(argv)


def preset_from_args(args: argparse.Namespace) -> Preset:
    train = {"fused_loss": True} if args.fused_loss else {}
    return preset_with_overrides(args.preset, args, OVERRIDES, train=train)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        preset = preset_from_args(args)
        set_kernel_mode(args.kernels)
        from adamix_ds.training.trainer import train_nlg  # imports deepspeed
        result = train_nlg(preset, args.ds_config, args.output_dir, resume=not args.no_resume)
    except (ConfigError, DSConfigError, FileNotFoundError, ValueError) as err:
        print(f"train_nlg: error: {err}", file=sys.stderr)
        return 2
    except tuple(RESUMABLE_FAULTS) as err:  # a full disk, a lost rank: the same command resumes
        print(f"train_nlg: error: {err}", file=sys.stderr)
        return fault_exit_code(err)
    print(f"train_nlg: {result.status} at step {result.step}; outputs in {result.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
