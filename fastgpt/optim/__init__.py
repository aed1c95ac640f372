"""Optimizers built on fastgpt's kernels, and Muon."""

from fastgpt.optim.fused_adamw import FusedAdamW
from fastgpt.optim.muon import Muon, newton_schulz

__all__ = ["FusedAdamW", "Muon", "newton_schulz"]
