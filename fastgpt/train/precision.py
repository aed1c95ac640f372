"""``train.dtype=auto``: bf16 autocast where a short measurement shows it faster on this device, else fp32.

The measurement times one matmul of the model's feed-forward shape, ``(B*T, n_embd) @ (n_embd, ffn_dim)``
with B*T capped to keep it short (well under a second in all), in fp32 and in bf16, alternately, best of
a few. GPUs with bf16 tensor cores and CPUs with native bf16 instructions (AVX512_BF16, AMX) measure
bf16 several times faster; CPUs that emulate it measure it slower and stay in fp32. The choice replaces
``auto`` in the run's config, so the saved config (and a resumed run) names the dtype it trained in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import torch

from fastgpt.config import Config
from fastgpt.device import synchronize
from fastgpt.train.distributed import DistEnv, sum_across_ranks

MIN_SPEEDUP = 1.2  # bf16 must win by this much: autocast's casts cost what the matmul alone does not show
MIN_FLOPS = 1e7  # a smaller matmul is bound by call overheads (a toy model): fp32, nothing to gain
MAX_FLOPS = {"cpu": 2e8, "cuda": 1e11}  # per measured matmul: about a millisecond (0.5 s in emulated bf16)
ROUNDS = 3

# (device, dtype, (M, K, N)) -> seconds of one matmul; injectable for tests
Timer = Callable[[torch.device, torch.dtype, tuple[int, int, int]], float]


def time_matmul(device: torch.device, dtype: torch.dtype, shape: tuple[int, int, int]) -> float:
    """Seconds of one ``(M, K) @ (K, N)`` matmul in ``dtype`` on ``device`` (after a warm-up call on a
    few rows: where bf16 is emulated, a full one would take long)."""
    m, k, n = shape
    g = torch.Generator(device=device).manual_seed(0)  # the run's own random streams stay untouched
    a = torch.randn(m, k, device=device, generator=g).to(dtype)
    b = torch.randn(k, n, device=device, generator=g).to(dtype)
    a[:8] @ b
    synchronize(device)
    start = time.perf_counter()
    a @ b
    synchronize(device)
    return time.perf_counter() - start


def matmul_shape(cfg: Config, device: torch.device) -> tuple[int, int, int]:
    """The feed-forward matmul of one micro-batch, its rows capped at ``MAX_FLOPS`` for the device."""
    k, n = cfg.model.n_embd, cfg.model.ffn_dim
    rows = cfg.train.batch_size * cfg.model.block_size
    cap = MAX_FLOPS.get(device.type, MAX_FLOPS["cpu"])
    return max(1, min(rows, int(cap // (2 * k * n)))), k, n


def pick_dtype(cfg: Config, device: torch.device, timer: Timer = time_matmul) -> tuple[str, str]:
    """``("bfloat16" | "float32", the line that says why)`` for this device and model."""
    shape = matmul_shape(cfg, device)
    flops = 2 * shape[0] * shape[1] * shape[2]
    dims = "x".join(map(str, shape))
    if device.type not in MAX_FLOPS or (device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        return "float32", f"train.dtype=auto: float32 (no bf16 autocast measured on {device.type})"
    if flops < MIN_FLOPS:
        return "float32", f"train.dtype=auto: float32 (the model's {dims} matmul is too small to gain from bf16)"
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    for _ in range(ROUNDS):  # alternately: a neighbour's load hits both alike
        for dtype in best:
            best[dtype] = min(best[dtype], timer(device, dtype, shape))
        if best[torch.bfloat16] > 2 * best[torch.float32]:  # emulated bf16: clear at once, and slow to time
            break
    fp32, bf16 = (flops / max(best[d], 1e-12) / 1e9 for d in (torch.float32, torch.bfloat16))
    choice = "bfloat16" if bf16 >= MIN_SPEEDUP * fp32 else "float32"
    return choice, (f"train.dtype=auto: {choice} (a {dims} matmul on {device.type}: bf16 {_rate(bf16)} GFLOP/s, "
                    f"fp32 {_rate(fp32)} GFLOP/s)")


def _rate(gflops: float) -> str:
    return f"{gflops:,.0f}" if gflops >= 100 else f"{gflops:.3g}"


def resolve_auto_dtype(cfg: Config, env: DistEnv, timer: Timer = time_matmul) -> str:
    """Replace ``cfg.train.dtype="auto"`` with the dtype measured faster (bf16 only when every rank
    measured it faster, so that all ranks agree); return the line saying what was chosen and why."""
    choice, line = pick_dtype(cfg, env.device, timer)
    votes = sum_across_ranks([float(choice == "bfloat16")], env)[0]
    if choice == "bfloat16" and votes < env.world_size:
        choice, line = "float32", f"{line}; float32 all the same: not every rank measured bf16 faster"
    cfg.train = replace(cfg.train, dtype=choice)
    return line
