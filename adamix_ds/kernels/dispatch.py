"""The one decision between the Triton kernels and plain torch for the routed expert layers.

Modes (global per process, because every layer of a model should agree; set once, e.g. from a
training script's ``--kernels`` flag):

* ``auto`` (default): Triton where the kernels take the inputs: CUDA tensors, Triton installed,
  one dtype for input and weights among :data:`~adamix_ds.kernels.utils.KERNEL_DTYPES` (autocast's
  mixed dtypes stay in torch, whose matmuls autocast handles), sizes within the kernels' limits;
  torch elsewhere;
* ``triton``: the kernels or an error that says why not (on CPU only under ``TRITON_INTERPRET=1``);
* ``torch``: always the eager path.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch

__all__ = ["INTERPRETED", "KERNEL_DTYPES", "KERNEL_MODES", "MAX_RANK", "TRITON_INSTALLED",
           "kernel_mode", "set_kernel_mode", "triton_takes", "use_kernels"]

KERNEL_MODES = ("auto", "triton", "torch")
# the dtypes the kernels take (tl.dot wants equal operand dtypes, so x and weights share one)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# the (rows, rank) block of x @ A (LoRA) or of the activation (adapter) lives in registers
MAX_RANK = 128
# found without importing triton, so that importing the layers stays cheap
TRITON_INSTALLED: bool = importlib.util.find_spec("triton") is not None
# Interpreter or compiler is fixed when ``triton.jit`` wraps a function, and Triton's own library
# (tl.zeros, ...) is wrapped when triton is first imported: TRITON_INTERPRET=1 has to be in the
# environment before that import, and changing it later has no effect on this process.
INTERPRETED: bool = TRITON_INSTALLED and os.environ.get("TRITON_INTERPRET", "0").lower() in (
    "1", "true", "on", "yes")
_mode = "auto"


def set_kernel_mode(mode: str) -> None:
    """Select ``auto`` | ``triton`` | ``torch`` for every AdaMix layer of this process.

    Raises:
        ValueError: an unknown mode, or ``triton`` without the ``triton`` package.
    """
    global _mode
    if mode not in KERNEL_MODES:
        raise ValueError(f"kernel mode must be one of {list(KERNEL_MODES)}, got {mode!r}")
    if mode == "triton" and not TRITON_INSTALLED:
        raise ValueError("kernel mode 'triton' needs the `triton` package")
    _mode = mode


def kernel_mode() -> str:
    return _mode


@contextlib.contextmanager
def use_kernels(mode: str) -> Iterator[None]:
    """Temporarily switch the kernel mode (tests, benchmarks)."""
    saved = _mode
    set_kernel_mode(mode)
    try:
        yield
    finally:
        set_kernel_mode(saved)


def _why_not(x: torch.Tensor, tensors: tuple[torch.Tensor, ...], rank: int,
             out: torch.Tensor | None) -> str | None:
    """Why the kernels cannot take these inputs, or None when they can."""
    if not TRITON_INSTALLED:
        return "the `triton` package is not installed"
    if not x.is_cuda and not INTERPRETED:
        return (f"x is on {x.device} (Triton runs CUDA tensors, or CPU ones under "
                "TRITON_INTERPRET=1 set before triton is first imported)")
    dtypes = {t.dtype for t in (x, *tensors)}
    if len(dtypes) != 1:
        return f"x and the expert weights differ in dtype ({sorted(map(str, dtypes))})"
    if x.dtype not in KERNEL_DTYPES:
        return f"dtype {x.dtype} is not one of {[str(d) for d in KERNEL_DTYPES]}"
    if rank > MAX_RANK:
        return f"rank / bottleneck {rank} is above the kernels' {MAX_RANK}"
    if out is not None and not out.is_contiguous():
        return "the output to accumulate into is not contiguous"
    return None


def triton_takes(x: torch.Tensor, *weights: torch.Tensor, rank: int,
                 out: torch.Tensor | None = None) -> bool:
    """Whether a routed expert layer runs its Triton kernel on these inputs.

    Args:
        x: (B, ..., d_in) layer input.
        weights: the stacked expert tensors the kernel reads (their dtypes must equal x's).
        rank: the LoRA rank or adapter bottleneck.
        out: the base output the update is accumulated into, if any.

    Raises:
        RuntimeError: mode ``triton`` and the kernels cannot take the inputs (the message says
            why).
    """
    if _mode == "torch":
        return False
    if _mode == "auto" and not x.is_cuda:
        return False
    reason = _why_not(x, weights, rank, out)
    if reason is not None and _mode == "triton":
        raise RuntimeError(f"kernel mode 'triton': {reason}")
    return reason is None
