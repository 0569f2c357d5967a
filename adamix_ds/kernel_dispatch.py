"""Which implementation the expert layers run: the Triton kernels of ``kernels/`` or plain torch.

``auto`` (default): Triton for CUDA tensors (when ``triton`` imports), torch elsewhere.
``triton``: always the kernels (on CPU only under ``TRITON_INTERPRET=1``; a missing Triton is an
error). ``torch``: always the eager reference. Set it once per process, e.g. from the training
script's ``--kernels`` flag; the choice is global because every layer of a model should agree.
"""
from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

import torch

KERNEL_MODES = ("auto", "triton", "torch")
_mode = "auto"


def set_kernel_mode(mode: str) -> None:
    """Select ``auto`` | ``triton`` | ``torch`` for every AdaMix layer of this process."""
    global _mode
    if mode not in KERNEL_MODES:
        raise ValueError(f"--kernels must be one of {list(KERNEL_MODES)}, got {mode!r}")
    if mode == "triton":
        if importlib.util.find_spec("triton") is None:
            raise ValueError("--kernels triton needs the `triton` package")
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


def triton_choice(x: torch.Tensor) -> bool | None:
    """The ``use_triton`` argument for a kernel call on ``x``; ``False`` = stay in torch.

    ``auto`` on CUDA returns ``None``: the kernel wrapper itself falls back to torch for inputs
    it does not take (e.g. mixed dtypes under autocast).
    """
    if _mode == "torch":
        return False
    if _mode == "triton":
        return True
    return None if x.is_cuda else False
