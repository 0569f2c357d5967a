"""The training run every task family shares: data -> backbone + AdaMix -> engine -> loop -> export.

One optimizer step (``loop.train_step``) = ``gradient_accumulation_steps`` micro-batches; each
micro-batch is one routed forward (both passes, :class:`TrainTask.forward`), ``engine.backward``,
``engine.step`` and then ``router.advance()`` (after backward, so recomputed activations see the
same route). Statistics stay on the device until a step is logged.
A task family (``adamix_ds.tasks.nlg`` / ``.nlu``) only says how to build its model and data,
how to compute the loss of a batch, and what to do with the finished model.
"""
from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist

from ..checkpoint import save_adaptation
from ..checkpointing import enable_activation_checkpointing
from ..evaluation.report import atomic_write_text
from ..inject import inject_adamix
from ..preset import Preset
from ..routing import counter_hash
from ..tasks.base import TrainTask
from ..tasks.nlg import nlg_task
from ..tasks.nlu import nlu_task
from .dev_eval import DevEvaluator
from .ds_config import read_ds_config, zero_stage
from .engine import (
    bound_deepspeed_collectives,
    build_engine,
    gather_adaptation_state,
    total_optimizer_steps,
    zero3_construction,
)
from .heartbeat import Heartbeat
from .loop import StepStats, micro_batch_stream, train_step
from .monitor import TrainMonitor
from .sampler import ShardedBatchOrder
from .shm_buffers import unlink_allreduce_buffer
from .state import PreemptionFlag, load_checkpoint, save_checkpoint

_EXPERT_INIT_STREAM = 0x1A17
STATUS_FILE = "run_status.json"  # {"status": "finished" | "preempted", "step": N}, at exit


@dataclass
class RunResult:
    status: str              # "finished" | "preempted"
    step: int
    losses: list[float]      # mean loss of each logged optimizer step (rank 0's view, global)
    output_dir: Path


def _set_monitor_paths(ds_config: dict[str, Any], output_dir: Path) -> None:
    """Monitors enabled without an output_path write under the run's directory."""
    for section in ("tensorboard", "csv_monitor"):
        cfg = ds_config.get(section)
        if cfg and cfg.get("enabled") and not cfg.get("output_path"):
            cfg["output_path"] = str(output_dir / "monitor") + "/"
            cfg.setdefault("job_name", "adamix")


def train_nlg(preset: Preset, ds_config_path: str | Path, output_dir: str | Path,
              resume: bool = True) -> RunResult:
    """Run (or resume) NLG training; every rank calls this."""
    return run_training(preset, ds_config_path, output_dir, nlg_task, resume)


def train_nlu(preset: Preset, ds_config_path: str | Path, output_dir: str | Path,
              resume: bool = True) -> RunResult:
    """Run (or resume) NLU training; every rank calls this (GLUE presets: pass them through
    ``tasks.nlu.with_head_trainable`` first, so the classification head trains)."""
    return run_training(preset, ds_config_path, output_dir, nlu_task, resume)


def run_training(preset: Preset, ds_config_path: str | Path, output_dir: str | Path,
                 build_task: Callable[[Preset], TrainTask], resume: bool = True) -> RunResult:
    """Run (or resume) training of any task family; every rank calls this. See module docstring."""
    output_dir = Path(output_dir)
    collective_timeout = timedelta(seconds=preset.train.collective_timeout_s)
    # Under mpirun DeepSpeed's MPI discovery sets MASTER_PORT to `distributed_port` (default
    # 29500, the launcher's default too), overwriting the environment's: pass the user's on.
    deepspeed.init_distributed(dist_backend=None, auto_mpi_discovery=True,
                               distributed_port=int(os.environ.get("MASTER_PORT", 29500)),
                               timeout=collective_timeout)
    bound_deepspeed_collectives(collective_timeout)
    world, rank = dist.get_world_size(), dist.get_rank()
    unlink_allreduce_buffer(rank)  # CPU: else DeepSpeed leaves it in /dev/shm after the run
    ds_config = read_ds_config(ds_config_path, world)
    if preset.train.fused_loss and zero_stage(ds_config) == 3:
        # the fused loss reads the LM head's weight outside the module's forward, where ZeRO-3
        # holds only this rank's partition of it
        raise ValueError(f"train.fused_loss does not support ZeRO stage 3 ({ds_config_path}); "
                         f"use stage 0-2 or turn fused_loss off")
    _set_monitor_paths(ds_config, output_dir)
    train, cfg = preset.train, preset.adamix
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "preset.json").write_text(json.dumps(preset.to_dict(), indent=2) + "\n")

    with zero3_construction(ds_config):
        task = build_task(preset)  # under ZeRO-3 the backbone is born partitioned
        dataset, model = task.dataset, task.model
        # Expert init draws from torch's global RNG, which each process seeds at random: seed
        # it, so a run is reproducible (1 rank vs N ranks, launcher vs mpirun) and every rank
        # inits alike. The (small) expert tensors are whole here; initialize partitions them.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(counter_hash(train.seed, _EXPERT_INIT_STREAM) >> 1)
            router = inject_adamix(model, cfg).router
        if train.gradient_checkpointing:
            enable_activation_checkpointing(model, router)
        micro = ds_config["train_micro_batch_size_per_gpu"]
        accumulation = ds_config.get("gradient_accumulation_steps", 1)
        order = ShardedBatchOrder(len(dataset), micro, world, rank, train.seed)
        total_steps = total_optimizer_steps(order.batches_per_epoch, accumulation, train)
        engine, scheduler = build_engine(model, train, ds_config, total_steps)

    checkpoints = output_dir / "checkpoints"
    position = {"epoch": 0, "batch": 0, "step": 0}
    dev = DevEvaluator(task, preset, order.batches_per_epoch, accumulation, output_dir, rank)
    client = load_checkpoint(engine, checkpoints) if resume else None
    if client is not None:
        router.load_state_dict(client["router"])
        position = client["position"]
        dev.load_state_dict(client.get("dev_selection"))
        if rank == 0:
            print(f"adamix-ds: resuming from {checkpoints} at step {position['step']}",
                  flush=True)
    step = position["step"]
    monitor = TrainMonitor(output_dir, total_steps, step, engine, enabled=rank == 0)
    flag = PreemptionFlag()
    logged: list[float] = []
    status = "finished"
    saved_step: int | None = None  # the final save is skipped when this step is already saved
    window, tick = StepStats.zeros(engine.device), time.perf_counter()  # since the last log
    stream = micro_batch_stream(order, position)

    def state() -> dict[str, Any]:
        return {"router": router.state_dict(), "position": dict(position, step=step),
                "preset": preset.to_dict(), "dev_selection": dev.state_dict()}

    heartbeat = Heartbeat()
    try:
        while step < total_steps:
            micro_batches = [{k: v.to(engine.device) for k, v in
                              task.collate([dataset[i] for i in indices]).items()}
                             for indices in itertools.islice(stream, accumulation)]
            window += train_step(engine, task.forward, router, micro_batches,
                                 [task.count_targets(b) for b in micro_batches], train.seed,
                                 rank, world)
            step += 1
            monitor.advance()
            if step % train.log_every == 0 or step == total_steps:
                means, now = window.global_means(), time.perf_counter()
                values = {"loss": means["loss"], "task_loss": means["task_loss"],
                          "consistency": means["consistency"], "lr": scheduler.get_last_lr()[0],
                          "tokens_per_s": means["tokens"] / (now - tick)}
                logged.append(values["loss"])
                monitor.log(step, values)
                window, tick = StepStats.zeros(engine.device), now
            if dev.due(step, position, total_steps):
                dev.run(engine, router, step, position)
            if train.route_check_every and step % train.route_check_every == 0:
                router.check_consistency()
            if flag.agreed(engine.device):
                status = "preempted"
            if status == "preempted" or (train.save_every and step % train.save_every == 0):
                _save(engine, checkpoints, step, state(), train.keep_checkpoints, output_dir,
                      preset)
                saved_step = step
            if status == "preempted":
                break
    except RuntimeError as err:  # gloo / NCCL report a lost peer as a RuntimeError
        lost = heartbeat.lost_ranks() if world > 1 else []
        if lost is None or lost:   # else every rank is alive: a bug, not a fault; re-raise
            raise heartbeat.error(err, lost, train.collective_timeout_s) from err
        raise
    finally:
        heartbeat.stop()
        flag.restore()
    if status == "finished" and saved_step != step:
        _save(engine, checkpoints, step, state(), train.keep_checkpoints, output_dir, preset)
    curve = monitor.close()
    if rank == 0 and curve is not None:
        print(f"loss curve: {curve}")
    if status == "finished" and rank == 0 and task.finish is not None:
        task.finish(output_dir)
    if rank == 0:  # what a job script reads to decide whether to requeue itself
        atomic_write_text(output_dir / STATUS_FILE,
                          json.dumps({"status": status, "step": step}) + "\n")
    return RunResult(status, step, logged, output_dir)


def _save(engine: Any, checkpoints: Path, step: int, client: dict[str, Any], keep: int,
          output_dir: Path, preset: Preset) -> None:
    """Resumable DeepSpeed checkpoint + the adaptation-only export, both atomic."""
    save_checkpoint(engine, checkpoints, step, client, keep=keep)
    state = gather_adaptation_state(engine.module, preset.adamix)  # collective (ZeRO-3)
    if engine.global_rank == 0:
        save_adaptation(engine.module, output_dir / "adaptation", preset.adamix, state=state,
                        extra={"step": step, "preset": preset.to_dict()})
