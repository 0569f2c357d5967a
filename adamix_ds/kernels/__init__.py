"""Triton kernels for the routed expert layers, and the one Triton-or-torch decision.

``lora_delta`` (routed LoRA update, added into the base output slice) and ``routed_adapter``
(fused Houlsby adapter) each hold their Triton kernels, autograd Function and an entry that
refuses inputs it cannot take; ``utils`` holds what they share; :func:`triton_takes` decides, from
the kernel mode, device, dtypes and sizes, whether a layer calls them. Importing this package
does not import Triton.
"""
from .dispatch import KERNEL_MODES, kernel_mode, set_kernel_mode, triton_takes, use_kernels

__all__ = ["KERNEL_MODES", "kernel_mode", "set_kernel_mode", "triton_takes", "use_kernels"]
