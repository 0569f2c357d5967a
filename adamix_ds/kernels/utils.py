"""What the Triton ops share: the optional Triton import, the interpreter flag, the route checks.

A *route* holds one ``(down_index, up_index)`` pair per equal segment of the leading batch
dimension (see :mod:`adamix_ds.experts`). The kernels read expert indices unchecked, so every op
validates its route here before a launch.
"""
from __future__ import annotations

import torch

from ..routing import Route
from .dispatch import INTERPRETED, KERNEL_DTYPES

try:  # the library runs without Triton; only the kernel launches need it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on installs without triton
    triton = None
    tl = None

__all__ = ["INTERPRETED", "KERNEL_DTYPES", "Route", "check_route", "num_sms", "route_table",
           "tile", "tl", "triton"]


def check_route(route: Route, batch: int, num_down: int, num_up: int) -> None:
    """Refuse a route that does not split ``batch`` evenly or names a missing expert.

    Raises:
        ValueError: an empty route, or ``batch`` not divisible by ``len(route)``.
        IndexError: a pair outside ``num_down`` down / ``num_up`` up experts (a kernel would
            read another tensor's memory).
    """
    if not route or batch % len(route):
        raise ValueError(f"batch {batch} does not split into {len(route)} route segments")
    for j, k in route:
        if not (0 <= j < num_down and 0 <= k < num_up):
            raise IndexError(f"route pair {(j, k)} outside {num_down} down / {num_up} up experts")


def route_table(route: Route, device: torch.device) -> torch.Tensor:
    """The route as an (S, 2) int32 tensor on ``device``, for kernels that index it per program."""
    return torch.tensor([[int(j), int(k)] for j, k in route], dtype=torch.int32, device=device)


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 elsewhere (the interpreter runs programs
    one after the other, so extra parallel splits only cost time there)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def tile(size: int) -> int:
    """A ``tl.dot`` dimension holding ``size``: the next power of two, at least 16 (GPUs reject
    smaller dot tiles; the interpreter would accept them and hide the bug)."""
    return max(16, 1 << max(0, size - 1).bit_length())
