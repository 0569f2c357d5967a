"""Triton kernels and fused losses for AdaMix (issue 5): each op with a torch reference."""
