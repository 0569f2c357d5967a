#!/usr/bin/env python
"""Train AdaMix on a GLUE task, or prompt-based few-shot on LM-BFF splits, with DeepSpeed.

    deepspeed launch/train_nlu.py --ds_config ds_configs/zero2_bf16.json \\
        --preset launch/presets/glue_bert_base_adapter.yaml --task RTE --data_dir <glue dir> \\
        --output_dir runs/rte
    # LM-BFF k=16, all five seeds, mean and std in <output_dir>/fewshot_summary.json:
    deepspeed launch/train_nlu.py --ds_config ... \\
        --preset launch/presets/lmbff_roberta_large.yaml --task SST-2 --lmbff_seeds all \\
        --data_dir <...>/LM-BFF-k-shot --output_dir runs/fs_sst2
    # the inference ablations of a finished run:
    python launch/train_nlu.py --eval_only runs/rte/adaptation \\
        --policies merged,fixed,random,ensemble

The same training loop as ``train_nlg.py`` (``adamix_ds.training.trainer.run_training``); the
ds_config owns precision, batch and ZeRO, the preset the model, AdaMix, data and schedule. At the
end, rank 0 scores the dev split (few-shot: the test split) under every inference policy.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from adamix_ds.config import INFERENCE_MODES, ConfigError
from adamix_ds.data import LMBFF_SEEDS, GlueFormatError
from adamix_ds.evaluation.report import atomic_write_text
from adamix_ds.kernels import KERNEL_MODES, set_kernel_mode
from adamix_ds.preset import Preset, add_override_flags, preset_with_overrides
from adamix_ds.training.ds_config import DSConfigError
from adamix_ds.training.exit_codes import RESUMABLE_FAULTS, fault_exit_code

OVERRIDES = {  # flag -> (section or None, key, type)
    "backbone": (None, "backbone", str), "init": (None, "init", str),
    "tokenizer": (None, "tokenizer", str), "task": (None, "task", str),
    "data_dir": (None, "data_dir", str), "max_seq_len": (None, "max_seq_len", int),
    "max_train_examples": (None, "max_train_examples", int),
    "lmbff_seed": (None, "lmbff_seed", int), "lmbff_k": (None, "lmbff_k", int),
    "epochs": ("train", "epochs", float), "max_steps": ("train", "max_steps", int),
    "lr": ("train", "lr", float), "consistency": ("train", "consistency", str),
    "save_every": ("train", "save_every", int), "log_every": ("train", "log_every", int),
    "seed": ("train", "seed", int),
    "experts": ("adamix", "num_experts", int), "method": ("adamix", "method", str),
}
ERRORS = (ConfigError, DSConfigError, GlueFormatError, FileNotFoundError, ValueError, KeyError)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds_config", help="DeepSpeed JSON config (training)")
    parser.add_argument("--preset", help="YAML preset (model, AdaMix, data, schedule)")
    parser.add_argument("--output_dir")
    parser.add_argument("--no_resume", action="store_true",
                        help="start from scratch even if output_dir holds a checkpoint")
    parser.add_argument("--kernels", choices=KERNEL_MODES, default="auto",
                        help="expert layers: Triton kernels (auto: on CUDA) or eager torch")
    parser.add_argument("--lmbff_seeds", default=None,
                        help="few-shot: 'all' (13,21,42,87,100) or a comma list; one run per "
                             "seed in <output_dir>/seed-<s>, then mean and std")
    parser.add_argument("--eval_only", default=None, metavar="ADAPTATION_DIR",
                        help="score a finished run's adaptation export instead of training")
    parser.add_argument("--policies", default=",".join(INFERENCE_MODES),
                        help="--eval_only: comma list of inference policies")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # launcher
    add_override_flags(parser, OVERRIDES)
    args = parser.parse_args(argv)
    if args.eval_only is None:
        missing = [f"--{f}" for f in ("ds_config", "preset", "output_dir") if not getattr(args, f)]
        if missing:
            parser.error(f"training needs {', '.join(missing)} (or --eval_only DIR)")
    return args


def preset_from_args(args: argparse.Namespace) -> Preset:
    return preset_with_overrides(args.preset, args, OVERRIDES)


def few_shot_seeds(spec: str) -> list[int]:
    if spec == "all":
        return list(LMBFF_SEEDS)
    try:
        return [int(s) for s in spec.split(",")]
    except ValueError as err:
        raise ValueError(f"--lmbff_seeds: expected 'all' or a comma list of ints, got {spec!r}"
                         ) from err


def summarize(runs: dict[int, dict], output_dir: Path) -> dict:
    """Mean and (sample) standard deviation over seeds of each policy's metrics."""
    policies = next(iter(runs.values()))["policies"]
    summary = {}
    for policy, metrics in policies.items():
        summary[policy] = {}
        for name in metrics:
            values = [run["policies"][policy][name] for run in runs.values()]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[policy][name] = {"mean": statistics.fmean(values), "std": std,
                                     "values": values}
    payload = {"seeds": list(runs), "policies": summary}
    atomic_write_text(output_dir / "fewshot_summary.json", json.dumps(payload, indent=2) + "\n")
    return payload


def evaluate_only(args: argparse.Namespace) -> int:
    from adamix_ds.tasks.nlu import load_nlu_model, score_run

    policies = [p for p in args.policies.split(",") if p]
    unknown = sorted(set(policies) - set(INFERENCE_MODES))
    if unknown:
        raise ValueError(f"--policies: unknown {unknown}; choose from {list(INFERENCE_MODES)}")
    results, path = score_run(load_nlu_model(args.eval_only), policies,
                              Path(args.eval_only).parent)
    for policy, metrics in results.items():
        print(f"{policy:9s} " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    print(f"written to {path}")
    return 0


def train(args: argparse.Namespace) -> int:
    from adamix_ds.tasks.nlu import with_head_trainable
    from adamix_ds.training.trainer import train_nlu  # imports deepspeed

    preset = with_head_trainable(preset_from_args(args))
    set_kernel_mode(args.kernels)
    output_dir = Path(args.output_dir)
    if args.lmbff_seeds is None:
        result = train_nlu(preset, args.ds_config, output_dir, resume=not args.no_resume)
        print(f"train_nlu: {result.status} at step {result.step}; outputs in {output_dir}")
        return 0
    runs = {}
    for seed in few_shot_seeds(args.lmbff_seeds):
        seed_preset = Preset.from_dict({**preset.to_dict(), "lmbff_seed": seed},
                                       source=f"{args.preset} (seed {seed})")
        result = train_nlu(seed_preset, args.ds_config, output_dir / f"seed-{seed}",
                           resume=not args.no_resume)
        if result.status != "finished":
            print(f"train_nlu: seed {seed} {result.status} at step {result.step}; rerun to resume")
            return 0
        eval_file = output_dir / f"seed-{seed}" / "eval_test.json"
        if eval_file.is_file():  # rank 0 wrote it
            runs[seed] = json.loads(eval_file.read_text())
    if runs:
        summary = summarize(runs, output_dir)
        merged = summary["policies"]["merged"]
        print("few-shot (merged): " + ", ".join(
            f"{k} {v['mean']:.4f} +- {v['std']:.4f}" for k, v in merged.items())
            + f" over seeds {summary['seeds']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return evaluate_only(args) if args.eval_only else train(args)
    except ERRORS as err:
        print(f"train_nlu: error: {err}", file=sys.stderr)
        return 2
    except tuple(RESUMABLE_FAULTS) as err:  # a full disk, a lost rank: the same command resumes
        print(f"train_nlu: error: {err}", file=sys.stderr)
        return fault_exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
