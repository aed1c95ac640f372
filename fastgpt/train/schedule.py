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
    """A LambdaLR following :func:`lr_factor` (its state_dict resumes exactly), each param group at its own
    peak rate: the rate the optimizer was built with (``optim.name=muon``: ``muon_lr`` for Muon's group,
    ``lr`` for AdamW's).

    Every group's base rate is ``cfg.lr`` and its lambda carries the group's ratio to it, because a resumed
    run sets every base to its ``optim.lr`` (``Checkpointer._continue_schedule``): the ratio, taken from this
    run's config, keeps each group at its own rate.
    """
    ratios = [group["lr"] / cfg.lr for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr  # LambdaLR's base (initial_lr); the first step sets ratio * factor * base
    lambdas = [lambda it, r=r: r * lr_factor(it, cfg, total_iters) for r in ratios]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
