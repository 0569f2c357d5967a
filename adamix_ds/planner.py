"""How much memory a run needs per rank, before it runs: model states per ZeRO stage, activations.

Model states follow the arithmetic of DeepSpeed's ``estimate_zero2_model_states_mem_needs`` /
``estimate_zero3_model_states_mem_needs`` (mixed precision: 16-bit parameters and gradients, and
for every trainable parameter an fp32 master copy, fp32 gradient and two fp32 Adam moments), with
the one difference PEFT makes: only the adaptation parameters train, so gradients and optimizer
states exist for them alone, while the frozen backbone costs its parameters only (partitioned
under ZeRO-3, replicated below it). With every parameter trainable the numbers are DeepSpeed's.

Activations are an estimate from the per-layer count of Korthikanti et al. (2022, "Reducing
Activation Recomputation in Large Transformer Models", Eq. 2): ``s b h (34 + 5 a s / h)`` bytes
per layer in 16-bit with dropout masks, where the AdaMix paired pass doubles ``b``; with activation
checkpointing a layer keeps only its 16-bit input (``2 s b h``) and one layer is live in full
during its recompute. The LM head's logits and their gradient (fp32 in the loss) are added, since
at a 50k-128k vocabulary they rival the blocks. Pure arithmetic: no deepspeed import.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

ZERO_STAGES = (0, 1, 2, 3)
# bytes per trainable parameter kept beside the 16-bit weight: fp32 master, fp32 grad, Adam m, v
_FP32_STATES_MIXED = 4 + 4 + 8
_ADAM_FP32 = 8


@dataclass(frozen=True)
class ModelStates:
    """Per-rank bytes of the model states."""

    params: int
    grads: int
    optimizer: int
    gathered: int  # ZeRO-3: the largest layer's parameters and gradients while gathered

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.gathered


def model_state_bytes(frozen: int, trainable: int, stage: int, ranks: int,
                      precision: str = "bf16", largest_layer: int = 0) -> ModelStates:
    """Per-rank model-state bytes of ``frozen`` + ``trainable`` parameters under a ZeRO stage.

    Args:
        precision: ``bf16`` / ``fp16`` (mixed precision) or ``fp32`` (no master copy).
        largest_layer: parameters of the largest module ZeRO-3 gathers at once.
    """
    if stage not in ZERO_STAGES:
        raise ValueError(f"ZeRO stage must be one of {list(ZERO_STAGES)}, got {stage!r}")
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be bf16, fp16 or fp32, got {precision!r}")
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    width = 4 if precision == "fp32" else 2
    # optimizer-side bytes per trainable parameter (fp32 master + fp32 grad only when mixed)
    states = _ADAM_FP32 if precision == "fp32" else _FP32_STATES_MIXED
    total = frozen + trainable
    if stage == 3:
        return ModelStates(params=width * total // ranks, grads=0,
                           optimizer=states * trainable // ranks,
                           gathered=2 * width * largest_layer)
    params = width * total
    if stage == 2:  # gradients partitioned with the optimizer states
        return ModelStates(params, grads=width * trainable // ranks,
                           optimizer=states * trainable // ranks, gathered=0)
    optimizer = states * trainable // (ranks if stage == 1 else 1)
    return ModelStates(params, grads=width * trainable, optimizer=optimizer, gathered=0)


def activation_bytes(layers: int, hidden: int, heads: int, vocab: int, batch: int, seq: int,
                     paired: bool = True, checkpointing: bool = False) -> int:
    """Estimated activation bytes of one micro-batch (module docstring); 16-bit blocks, fp32
    logits and their gradient."""
    rows = batch * (2 if paired else 1)
    per_layer = seq * rows * hidden * (34 + 5 * heads * seq / hidden)
    if checkpointing:
        blocks = layers * 2 * seq * rows * hidden + per_layer
    else:
        blocks = layers * per_layer
    logits = 2 * 4 * rows * seq * vocab
    return int(blocks + logits)


def largest_module_params(model: nn.Module) -> int:
    """Parameters of the largest leaf-level group ZeRO-3 gathers at once: the module with the
    most parameters of its own (not counting its children)."""
    return max((sum(p.numel() for p in m.parameters(recurse=False))
                for m in model.modules()), default=0)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(frozen, trainable) parameters of an injected model; tied weights counted once."""
    unique = list(model.parameters())  # parameters() yields a tied tensor once
    trainable = sum(p.numel() for p in unique if p.requires_grad)  # inject froze the rest
    return sum(p.numel() for p in unique) - trainable, trainable

