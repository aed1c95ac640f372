"""torch.distributed for ``torchrun``: which rank this is, where it computes, how the model is spread.

``train.parallel=ddp`` keeps a whole replica per rank (``wrap_ddp``); ``fsdp`` shards every block's
parameters, gradients and optimizer state over the ranks with FSDP2 (``shard_fsdp``). A collective
that fails or waits longer than ``FASTGPT_DIST_TIMEOUT`` seconds raises; ``collective_failure``
turns that error into one line saying which rank saw it. (On GPUs, NCCL's watchdog usually sees a
timeout first and aborts the process with "Watchdog caught collective operation timeout"; torchrun
then names the rank that failed.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from fastgpt.device import resolve_device
from fastgpt.ops import set_autotune_group

DEFAULT_TIMEOUT_S = 600  # a hung collective fails after this long instead of waiting forever
PREPARE_TIMEOUT = timedelta(days=7)  # the other ranks wait this long for rank 0 to prepare the data

@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    wait_group: Any = None  # a gloo group whose barrier waits up to PREPARE_TIMEOUT, not FASTGPT_DIST_TIMEOUT

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def wait_for_preparation(self) -> None:
        """A barrier for work one rank does alone (data preparation), which may take longer than
        ``FASTGPT_DIST_TIMEOUT``; a rank that dies meanwhile is torchrun's to report."""
        if self.distributed:
            dist.barrier(group=self.wait_group)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's GPU when CUDA exists, else the CPU; otherwise the named device."""
    device = resolve_device(name, "train.device")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"train.device={name!r} needs GPU {device} but {torch.cuda.device_count()} are visible; "
                             "start at most one process per GPU (torchrun --nproc_per_node)")
        torch.cuda.set_device(device)
    return device


def setup(device_name: str) -> DistEnv:
    """Join the process group when launched by torchrun (NCCL on GPUs, gloo on CPU)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistEnv(device=pick_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    timeout = timedelta(seconds=timeout_s())
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timeout, device_id=device if device.type == "cuda" else None)
    set_autotune_group(dist.group.WORLD)  # every rank runs rank 0's choice of op backends
    wait_group = dist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=dist.get_world_size(), device=device,
                   wait_group=wait_group)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def timeout_s() -> float:
    """Seconds a collective may wait for the other ranks: ``FASTGPT_DIST_TIMEOUT`` (default 600)."""
    value = os.environ.get("FASTGPT_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"FASTGPT_DIST_TIMEOUT={value!r} must be a positive number of seconds")
    return seconds


def sum_across_ranks(values: list[float | torch.Tensor], env: DistEnv) -> list[float]:
    """Each value (a float or a one-element tensor) summed over all ranks, in one all-reduce."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=env.device).reshape(()) for v in values])
    if env.distributed:
        dist.all_reduce(t)
    return t.tolist()


def mean_across_ranks(value: float | torch.Tensor, env: DistEnv) -> float:
    """The mean of a float over all ranks (itself when not distributed)."""
    return sum_across_ranks([value], env)[0] / env.world_size


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when not distributed)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def collective_failure(exc: BaseException, env: DistEnv) -> str | None:
    """One line explaining ``exc`` when it is a failed or timed-out collective, else None.

    NCCL raises ``DistError``s; gloo raises plain RuntimeErrors that name gloo.
    """
    if not env.distributed or not isinstance(exc, RuntimeError):
        return None
    text = str(exc).strip()
    if not isinstance(exc, dist.DistError) and "gloo" not in text.lower():
        return None
    reason = text.splitlines()[0] if text else type(exc).__name__
    reason = reason.split("] ", 1)[-1].split(". ")[0][:160]  # gloo's first sentence, without "[file.cc:123] "
    return (f"rank {env.rank} of {env.world_size}: a collective operation failed ({reason}); another rank "
            f"probably died or hangs, see its log (collectives time out after FASTGPT_DIST_TIMEOUT={timeout_s():g}s)")


def wrap_ddp(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """``model`` in DistributedDataParallel: rank 0's weights are broadcast, gradients averaged."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shard_fsdp(model: torch.nn.Module, blocks: list[torch.nn.Module], dtype: torch.dtype, env: DistEnv) -> None:
    """Shard ``model`` in place with FSDP2 over all ranks: each of ``blocks``, then the rest.

    Parameters are stored in fp32 and gathered in ``dtype`` for compute; gradients are
    reduce-scattered in fp32. Afterwards ``model.parameters()`` are DTensor shards, so the
    optimizer must be built after this.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # an explicit mesh: FSDP's default is the GPUs whenever there are some, even for a CPU run
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=None if dtype == torch.float32 else dtype, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
