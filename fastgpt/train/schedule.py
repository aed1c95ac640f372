"""Learning-rate schedules: linear warmup, then cosine, linear, step or constant."""

from __future__ import annotations

import math

import torch

from fastgpt.config import OptimConfig


def lr_factor(it: int, cfg: OptimConfig, total_iters: int) -> float:
    """The multiplier of ``cfg.lr`` at optimizer step ``it`` (0-based)."""
    if it < cfg.warmup_iters:
        return (it + 1) / (cfg.warmup_iters + 1)
    if cfg.scheduler == "constant":
        return 1.0
    if cfg.scheduler == "step":
        return cfg.gamma ** ((it - cfg.warmup_iters) // cfg.step_size)
    decay_iters = cfg.lr_decay_iters or total_iters
    floor = cfg.min_lr / cfg.lr
    if it >= decay_iters:
        return floor
    progress = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    if cfg.scheduler == "cosine":
        return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - floor)
    return 1.0 - progress * (1.0 - floor)  # linear


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_iters: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following :func:`lr_factor` (its state_dict resumes exactly)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg, total_iters))
