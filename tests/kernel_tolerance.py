"""The per-dtype tolerance table of the kernel tests, and their comparison against float64.

Normwise: |got - ref| <= tol * (|ref| + max|ref|), i.e. rtol = tol and atol = tol * max|ref|. A
matmul's rounding error scales with the magnitudes summed, not with each (possibly cancelled)
output element, so the atol is tied to the tensor's scale rather than being a loose constant.
Measured on the interpreter (max normwise error over the cases): float32 ~6e-7, float16 ~6e-4
(about one half-precision ulp: outputs and saved activations are fp16). bfloat16 runs on a GPU only.
"""
from __future__ import annotations

import pytest
import torch

TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_close_to_float64(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype,
                            what: str) -> None:
    """``got`` (any dtype) against the float64 reference ``ref`` at ``dtype``'s tolerance."""
    tol = TOL[dtype]
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol * ref.abs().max().item(),
                               msg=lambda m: f"{what} ({dtype}): {m}")


def skip_unless_kernels_run(interpreted: bool) -> None:
    """Skip the calling test module when its kernels can run neither on a GPU nor interpreted.

    ``tests/conftest.py`` turns the interpreter on without a GPU before triton is imported; this
    catches a process that imported triton earlier, or an explicit ``TRITON_INTERPRET=0``.
    """
    if not torch.cuda.is_available() and not interpreted:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set in this process, so "
                    "the kernels are compiled for a GPU this machine lacks; run this module on "
                    "its own", allow_module_level=True)
