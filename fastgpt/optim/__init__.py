"""Optimizers built on fastgpt's kernels, Muon, and several optimizers as one."""

from fastgpt.optim.fused_adamw import FusedAdamW
from fastgpt.optim.hybrid import HybridOptimizer
from fastgpt.optim.muon import Muon, newton_schulz

__all__ = ["FusedAdamW", "HybridOptimizer", "Muon", "newton_schulz"]
