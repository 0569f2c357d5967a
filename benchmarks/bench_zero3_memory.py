#!/usr/bin/env python
"""Peak host memory per rank of a short AdaMix run: ZeRO-3 (built in partitions) vs ZeRO-0.

For each ZeRO stage the script starts ``launch/train_nlg.py`` under the DeepSpeed launcher on
``--ranks`` CPU ranks (gloo) with the same preset: ``--backbone`` (default ``gpt2-large``,
random init from its published config), AdaMix-LoRA with 8 experts on Q and V, paired
consistency, ``--steps`` optimizer steps of one bundled E2E example per rank. Every rank runs
inside this file's ``--worker`` mode, which reads the kernel's high-water mark of the rank's
resident set (``VmHWM``) twice: when the model is built and AdaMix injected (just before
``deepspeed.initialize``), and at exit. The per-step losses come from the run's
``train_log.csv``: both stages see the same weights and data, so they must agree.

    python benchmarks/bench_zero3_memory.py                     # gpt2-large, 2 ranks, 2 steps
    python benchmarks/bench_zero3_memory.py --backbone gpt2 --steps 1 --json /tmp/m.json
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "launch" / "train_nlg.py"
MARK = "RANK_MEMORY "


def status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MiB."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) / 1024


def worker(train_argv: list[str]) -> None:
    """One rank: train_nlg's main, with the memory high-water mark read at model-ready and exit."""
    from adamix_ds.training import trainer

    marks: dict[str, float] = {}
    build_engine = trainer.build_engine

    def phase_peak(name: str) -> None:
        """The high-water mark since the last phase, then reset it (Linux >= 4.0)."""
        marks.setdefault("phase_peaks_mib", {})[name] = status_mib("VmHWM")
        Path("/proc/self/clear_refs").write_text("5")

    def build_engine_after_mark(*args, **kwargs):
        marks["built_peak_mib"] = status_mib("VmHWM")
        engine = build_engine(*args, **kwargs)
        phase_peak("build")
        return engine

    train_step = trainer.train_step

    def train_step_after_mark(*args, **kwargs):
        stats = train_step(*args, **kwargs)
        phase_peak(f"step {len(marks['phase_peaks_mib'])}")
        return stats

    trainer.train_step = train_step_after_mark

    trainer.build_engine = build_engine_after_mark
    nlg_task = trainer.nlg_task

    def nlg_task_after_mark(*args, **kwargs):
        marks["before_model_mib"] = status_mib("VmRSS")
        return nlg_task(*args, **kwargs)

    trainer.nlg_task = nlg_task_after_mark
    sys.argv = [str(TRAIN), *train_argv]
    try:
        runpy.run_path(str(TRAIN), run_name="__main__")
    finally:
        phase_peak("save and exit")
        marks["peak_mib"] = max(marks["phase_peaks_mib"].values())
        print(MARK + json.dumps({"rank": int(os.environ.get("RANK", 0)), **marks}), flush=True)


def preset(args: argparse.Namespace) -> dict:
    return {
        "backbone": args.backbone, "init": "random", "task": "e2e", "data_dir": None,
        "backbone_config": {"n_layer": args.n_layer} if args.n_layer else {},
        "max_seq_len": args.seq, "max_train_examples": 16,
        "adamix": {"method": "lora", "num_experts": 8, "rank": 4, "alpha": 32,
                   "targets": ["q", "v"], "share": "up", "consistency_weight": 100.0},
        "train": {"max_steps": args.steps, "lr": 2e-4, "warmup_steps": 0,
                  "consistency": "paired", "seed": 0, "log_every": 1, "route_check_every": 0,
                  "sample_after": 0, "save_every": 0,
                  "gradient_checkpointing": args.checkpointing},
    }


def run_stage(stage: int, args: argparse.Namespace, work: Path) -> dict:
    config = json.loads((REPO / "ds_configs" / f"cpu_zero{stage}.json").read_text())
    config["train_micro_batch_size_per_gpu"] = 1
    config.pop("csv_monitor", None)
    if stage == 3:
        config["zero_optimization"].update(json.loads(args.zero3_options))
    (work / f"zero{stage}.json").write_text(json.dumps(config))
    (work / "preset.yaml").write_text(yaml.safe_dump(preset(args)))
    out = work / f"run_zero{stage}"
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_accelerators", str(args.ranks),
           "--master_port", str(args.port + stage), __file__, "--worker", "--",
           "--ds_config", str(work / f"zero{stage}.json"), "--preset", str(work / "preset.yaml"),
           "--output_dir", str(out), "--no_resume"]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"ZeRO-{stage} run failed (rc {proc.returncode}):\n{output[-6000:]}")
    ranks = sorted((json.loads(line.split(MARK, 1)[1]) for line in output.splitlines()
                    if MARK in line), key=lambda r: r["rank"])
    with open(out / "train_log.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    return {"stage": stage, "ranks": ranks, "losses": losses}


def table(results: list[dict], args: argparse.Namespace) -> str:
    base = {r["rank"]: r for r in next(x for x in results if x["stage"] == 0)["ranks"]}

    def model_share(r: dict) -> float:  # what the run added to the process it started in
        return r["peak_mib"] - r["before_model_mib"]

    lines = [
        f"Command: `python benchmarks/bench_zero3_memory.py --backbone {args.backbone} "
        f"--ranks {args.ranks} --steps {args.steps} --seq {args.seq}"
        + (f" --zero3_options '{args.zero3_options}'" if args.zero3_options != "{}" else "")
        + (" --checkpointing" if args.checkpointing else "")
        + f"`; {datetime.date.today()}, {platform.machine()} CPU, {os.cpu_count()} cores.",
        "",
        "| ZeRO stage | rank | RSS before the model (MiB) | peak when built | peak of the run "
        "| / ZeRO-0 | peak above 'before' / ZeRO-0's | losses per step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for r in res["ranks"]:
            ref = base[r["rank"]]
            lines.append(
                f"| {res['stage']} | {r['rank']} | {r['before_model_mib']:,.0f} | "
                f"{r['built_peak_mib']:,.0f} | {r['peak_mib']:,.0f} | "
                f"{r['peak_mib'] / ref['peak_mib']:.2f} | {model_share(r) / model_share(ref):.2f} "
                f"| {', '.join(f'{x:.4f}' for x in res['losses'])} |")
    return "\n".join(lines)


def main() -> None:
    if "--worker" in sys.argv:
        split = sys.argv.index("--")
        worker(sys.argv[split + 1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="gpt2-large")
    parser.add_argument("--n_layer", type=int, default=0, help="override the layer count")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--stages", default="0,3")
    parser.add_argument("--zero3_options", default="{}",
                        help="JSON merged into the ZeRO-3 run's zero_optimization section")
    parser.add_argument("--checkpointing", action="store_true",
                        help="activation checkpointing in every stage's run")
    parser.add_argument("--port", type=int, default=29730)
    parser.add_argument("--reference", help="take the ZeRO-0 run from this earlier --json "
                                            "(same backbone, ranks, steps and seq)")
    parser.add_argument("--json", help="also write the raw numbers here")
    args = parser.parse_args()
    stages = [int(s) for s in args.stages.split(",")]
    reference = []
    if args.reference:  # the ZeRO-0 run of an earlier --json, same settings
        reference = [r for r in json.loads(Path(args.reference).read_text()) if r["stage"] == 0]
        stages = [s for s in stages if s != 0]
    elif 0 not in stages:
        parser.error("--stages must include 0 (the reference), or pass --reference")
    with tempfile.TemporaryDirectory(prefix="bench_zero3_") as tmp:
        results = reference + [run_stage(stage, args, Path(tmp)) for stage in stages]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(table(results, args))


if __name__ == "__main__":
    main()
