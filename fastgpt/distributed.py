"""torch.distributed set-up for ``torchrun``: which rank this is, and where it computes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600  # a hung collective fails after this long instead of waiting forever


@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's GPU when CUDA exists, else the CPU; otherwise the named device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"train.device={name!r} but no CUDA device is available (use cpu or auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"train.device={name!r} is not one of auto, cpu, cuda, cuda:N")
    return device


def setup(device_name: str) -> DistEnv:
    """Join the process group when launched by torchrun (NCCL on GPUs, gloo on CPU)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistEnv(device=pick_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    timeout = timedelta(seconds=float(os.environ.get("FASTGPT_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timeout, device_id=device if device.type == "cuda" else None)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=dist.get_world_size(), device=device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def mean_across_ranks(value: float, env: DistEnv) -> float:
    """The mean of a float over all ranks (itself when not distributed)."""
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return t.item() / env.world_size
