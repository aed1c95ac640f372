"""Optimizers built on fastgpt's kernels."""

from fastgpt.optim.fused_adamw import FusedAdamW

__all__ = ["FusedAdamW"]
