"""Triton kernels and fused losses for AdaMix: each op with a torch reference."""
