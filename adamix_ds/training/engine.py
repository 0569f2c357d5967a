"""DeepSpeed engine construction and ZeRO-aware access to the adaptation tensors."""
from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import groups as ds_groups
from torch import nn

from ..config import AdaMixConfig
from ..inject import saved_parameters
from ..preset import TrainSettings
from .ds_config import offloads_optimizer, zero_stage


def bound_deepspeed_collectives(timeout: timedelta) -> None:
    """Give DeepSpeed's copy of the world group the run's collective timeout.

    ZeRO reduces gradients on a clone of the world that DeepSpeed makes with ``dist.new_group``
    and no timeout, so torch's default applies (30 min for gloo), not the one passed to
    ``init_distributed``: a peer that stops mid-reduction (SIGSTOP, a hung node) would hold the
    other ranks for half an hour. Creating that clone first, with ``timeout``, bounds it. Every
    rank calls this right after ``init_distributed`` (``new_group`` is collective)."""
    if not hasattr(ds_groups, "_WORLD_GROUP"):
        warnings.warn("this DeepSpeed keeps no _WORLD_GROUP: train.collective_timeout_s may not "
                      "bound its gradient reduction", stacklevel=2)
        return
    if ds_groups._WORLD_GROUP is None:
        ds_groups._WORLD_GROUP = dist.new_group(ranks=list(range(dist.get_world_size())),
                                                timeout=timeout)


def linear_warmup_decay(warmup_steps: int, total_steps: int):
    """LR multiplier: step / warmup during warmup, then linearly to 0 at total_steps (the
    convention of transformers' get_linear_schedule_with_warmup, which LoRA's NLG code uses)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def build_optimizer(model: nn.Module, train: TrainSettings, ds_config: dict[str, Any],
                    on_cuda: bool) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters: DeepSpeedCPUAdam under optimizer offload, torch's
    fused AdamW on CUDA, plain torch AdamW on CPU (no extension to compile)."""
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = dict(lr=train.lr, betas=train.adam_betas, weight_decay=train.weight_decay)
    if offloads_optimizer(ds_config):
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(params, fused=on_cuda or None, **kwargs)


def build_engine(model: nn.Module, train: TrainSettings, ds_config: dict[str, Any],
                 total_steps: int) -> tuple[Any, torch.optim.lr_scheduler.LambdaLR]:
    """deepspeed.initialize with the preset's optimiser and schedule; ds_config sets the rest."""
    on_cuda = deepspeed.get_accelerator().device_name() == "cuda"
    optimizer = build_optimizer(model, train, ds_config, on_cuda)
    warmup = (train.warmup_steps if train.warmup_ratio is None
              else math.ceil(train.warmup_ratio * total_steps))  # as HF's get_warmup_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, linear_warmup_decay(warmup, total_steps)
    )
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config)
    return engine, scheduler


@contextlib.contextmanager
def zero3_construction(ds_config: dict[str, Any]) -> Iterator[None]:
    """Under ZeRO-3, build models in partitions: while this is open an ``HfDeepSpeedConfig`` is
    alive, so ``transformers`` constructs every model inside ``deepspeed.zero.Init`` (and
    ``from_pretrained`` loads each rank's share of the weights). Every rank must build the same
    models in the same order inside it (collective). A no-op for stages 0-2."""
    if zero_stage(ds_config) != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    hf_config = HfDeepSpeedConfig(ds_config)  # transformers holds only a weak reference
    try:
        yield
    finally:
        # models built later (rank 0's decoding after training) are ordinary, whole models
        del hf_config


def gather_adaptation_state(module: nn.Module, cfg: AdaMixConfig) -> dict[str, torch.Tensor]:
    """Full CPU copies of what an adaptation checkpoint holds, gathered from ZeRO-3 partitions
    (collective: every rank must call it). Under ZeRO 0-2 the gather is a no-op."""
    params = saved_parameters(module, cfg)
    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
        state = {name: p.detach().float().cpu().clone() for name, p in params.items()}
    return state


def total_optimizer_steps(batches_per_epoch: int, accumulation: int, train: TrainSettings) -> int:
    """Optimizer steps of the run: max_steps, or epochs x micro-batches per epoch / accumulation."""
    if train.max_steps is not None:
        return train.max_steps
    # Round the micro-batch count first: 0.57 * 200 is 113.99999999999999 in binary floating point.
    micro_batches = round(train.epochs * batches_per_epoch, 6)
    return max(1, math.floor(micro_batches / accumulation))
