"""``train.dtype=auto``: the dtype in which this run's own training step is fastest on this device.

The candidates are fp32, bf16 autocast (where the device has bf16) and, on CUDA, fp16 autocast with a
GradScaler. Each takes warm steps of the run's model on a batch of random tokens of the run's shape:
forward, backward and a step of a throwaway optimizer of the run's kind (FSDP runs, timed before
sharding, skip the optimizer step: its cost does not depend on the dtype). The candidates alternate
and each one's median step decides: the fastest wins unless it is within ``MARGIN`` of fp32, which
then stays (a lower precision must buy speed). Measuring leaves the run as it was: the weights are
copied back, the random streams are forked, and the data cursor never moves.

The choice replaces ``auto`` in the run's config, so the saved config (and a resumed run) names the
dtype it trained in. It is cached per (device name, model config, trained parameters, batch, optimizer, torch version)
in ``$FASTGPT_CACHE_DIR/dtype/`` (default ``~/.cache/fastgpt``): a file only ever parsed as JSON and
checked, ignored when it is not what a choice looks like. A model whose step is slow (longer than
``STEP_S`` with the whole batch) is timed on fewer rows of its batch, so that measuring takes seconds.
A toy model (feed-forward matmuls under ``MIN_FLOPS``) is bound by call overheads, gains nothing from
bf16 and is not measured.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from fastgpt.cache_dir import cache_dir, write_cache_file
from fastgpt.config import Config
from fastgpt.device import device_name, synchronize
from fastgpt.train.distributed import DistEnv, gather_objects
from fastgpt.train.optimizer import build_grad_scaler, build_optimizer

MARGIN = 0.05  # a candidate must beat fp32 by more than this
MIN_FLOPS = 1e7  # a feed-forward matmul smaller than this (per micro-batch) marks a toy model: fp32
WARMUP = 1  # untimed steps per candidate (the first allocates, and autocast fills its caches)
MIN_ROUNDS, MAX_ROUNDS = 3, 7  # timed steps per candidate
BUDGET_S = 3.0  # no new round starts once the timed steps took this long in all
STEP_S = BUDGET_S / 8  # a timed step longer than this is timed on fewer rows of the batch (``timed_rows``)
DROP = 2.0  # a candidate whose best step is this many times fp32's has lost: timed no more
MAX_BYTES = 4096  # a cache file larger than this is not one we wrote

# candidate -> seconds of one training step; injectable for tests
StepTimer = Callable[[str], float]


def candidates(device: torch.device) -> list[str]:
    """The dtypes worth timing on ``device``; fp32 first."""
    if device.type == "cuda":
        return ["float32", "bfloat16", "float16"] if torch.cuda.is_bf16_supported() else ["float32", "float16"]
    if device.type in ("cpu", "mps", "xpu"):
        return ["float32", "bfloat16"]
    return ["float32"]


def ffn_flops(cfg: Config) -> float:
    """FLOPs of one micro-batch's feed-forward input matmul, ``(B*T, n_embd) @ (n_embd, ffn_dim)``."""
    return 2.0 * cfg.train.batch_size * cfg.model.block_size * cfg.model.n_embd * cfg.model.ffn_dim


def choose(times: dict[str, list[float]], tokens: int) -> tuple[str, dict[str, float]]:
    """(the dtype, each candidate's tokens/s) from each candidate's step times in seconds (``tokens`` a step)."""
    median = {name: statistics.median(ts) for name, ts in times.items()}
    fastest = min(median, key=median.get)
    choice = fastest if median[fastest] < (1 - MARGIN) * median["float32"] else "float32"
    return choice, {name: tokens / max(s, 1e-12) for name, s in median.items()}


def why(choice: str, rates: dict[str, float]) -> str:
    """``bfloat16 (training steps, tokens/s: fp32 40,000, bf16 60,000)``."""
    return f"{choice} (training steps, tokens/s: " + ", ".join(f"{_short(n)} {r:,.0f}" for n, r in rates.items()) + ")"


def _short(name: str) -> str:
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[name]


def measure(step_time: StepTimer, names: list[str], budget_s: float = BUDGET_S) -> dict[str, list[float]]:
    """Step times of each of ``names``, alternating rounds after ``WARMUP`` steps of each: at least
    ``MIN_ROUNDS``, more while the timed steps took under ``budget_s`` in all. A candidate more than
    ``DROP`` times slower than fp32 (bf16 a CPU emulates) has lost and is not timed again."""
    for name in names:
        for _ in range(WARMUP):
            step_time(name)
    times: dict[str, list[float]] = {name: [] for name in names}
    timing = list(names)
    for rounds in range(MAX_ROUNDS):
        for name in timing:  # alternately: a neighbour's load hits every candidate alike
            times[name].append(step_time(name))
        timing = [n for n in timing if min(times[n]) <= DROP * min(times["float32"])]
        if rounds + 1 >= MIN_ROUNDS and sum(map(sum, times.values())) > budget_s:
            break
    return times


def timed(run: Callable[[Any], None], device: torch.device) -> Callable[[Any], float]:
    """The seconds ``run(arg)`` takes on ``device``, as a function of ``arg`` (a StepTimer for a dtype's name)."""
    def step_time(arg: Any) -> float:
        synchronize(device)
        start = time.perf_counter()
        run(arg)
        synchronize(device)
        return time.perf_counter() - start

    return step_time


@contextmanager
def _untouched(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Whatever steps run inside, ``model``'s weights, gradients and the random streams come out as they went in."""
    saved = [p.detach().to("cpu", copy=True) for p in model.parameters()]
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        with torch.no_grad():
            for p, s in zip(model.parameters(), saved):
                p.copy_(s)
                p.grad = None


def step_runner(cfg: Config, model: torch.nn.Module, device: torch.device,
                fsdp: bool) -> Callable[[str, int], None]:
    """``run(dtype, rows)``: one training step of ``model`` in ``dtype`` on random tokens, ``rows`` of the
    run's batch (at most its batch size)."""
    m, t = cfg.model, cfg.train
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(0, m.vocab_size, (t.batch_size, m.block_size), generator=g).to(device)
    y = torch.randint(0, m.vocab_size, (t.batch_size, m.block_size), generator=g).to(device)
    optimizer = None if fsdp else build_optimizer(model, cfg.optim, device)
    scalers = {name: build_grad_scaler(device, getattr(torch, name)) for name in candidates(device)}

    def run(name: str, rows: int) -> None:
        dtype = getattr(torch, name)
        autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
        with autocast:
            _, loss = model(x[:rows], y[:rows])
        scalers[name].scale(loss).backward()
        if optimizer is not None:
            scalers[name].step(optimizer)
            scalers[name].update()
            optimizer.zero_grad(set_to_none=True)
        else:
            model.zero_grad(set_to_none=True)

    return run


def timed_rows(step_time: Callable[[int], float], batch: int, step_s: float) -> int:
    """How many rows of the batch to time each step with: all of them, unless a step would take longer
    than ``step_s``; then as many as fit in it, by the time ``step_time(1)`` takes with one row (its
    second call: the first allocates). Each candidate then takes a few seconds, not minutes, on a model
    whose steps are slow (a 10M model's batch of 64 x 256 tokens took 9 s a step on 2 CPU cores)."""
    step_time(1)
    one = step_time(1)
    return max(1, min(batch, int(step_s / max(one, 1e-9))))


def cache_file(cfg: Config, model: torch.nn.Module, device: torch.device, fsdp: bool) -> Path:
    """Where the choice for this device, model, trained parameters (LoRA, freezing), batch, optimizer and
    torch version is kept."""
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    key = {"device": device_name(device), "model": asdict(cfg.model), "trained": trained,
           "batch_size": cfg.train.batch_size, "optim": cfg.optim.name, "fsdp": fsdp, "torch": torch.__version__}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir("dtype") / f"{digest}.json"


def _cached(file: Path, names: list[str]) -> tuple[str, dict[str, float]] | None:
    """The (choice, tokens/s) kept in ``file``; None when absent, unreadable or not a choice among ``names``."""
    try:
        if file.stat().st_size > MAX_BYTES:
            return None
        data = json.loads(file.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not (isinstance(data, dict) and set(data) == {"choice", "tokens_per_s"} and data["choice"] in names):
        return None
    rates = data["tokens_per_s"]
    if (isinstance(rates, dict) and set(rates) <= set(names) and "float32" in rates and data["choice"] in rates
            and all(isinstance(r, float) and math.isfinite(r) and r > 0 for r in rates.values())):
        return data["choice"], rates
    return None


def _store(file: Path, choice: str, rates: dict[str, float]) -> None:
    """Keep the choice in ``file`` (a cache that cannot be written is only a lost shortcut)."""
    write_cache_file(file, json.dumps({"choice": choice, "tokens_per_s": rates}))


def pick_dtype(cfg: Config, model: torch.nn.Module, device: torch.device, fsdp: bool = False,
               timer: StepTimer | None = None) -> tuple[str, str]:
    """``(dtype, the line that says why)`` for this run's model on ``device``; ``timer`` replaces the
    real steps (tests)."""
    names = candidates(device)
    if len(names) == 1:
        return "float32", f"train.dtype=auto: float32 (no lower precision is timed on {device.type})"
    if ffn_flops(cfg) < MIN_FLOPS:
        return "float32", "train.dtype=auto: float32 (a toy model: too small to gain from a lower precision)"
    file = cache_file(cfg, model, device, fsdp)
    if timer is None and (kept := _cached(file, names)) is not None:
        return kept[0], f"train.dtype=auto: {why(*kept)}; cached in {file}"
    start, batch = time.perf_counter(), cfg.train.batch_size
    rows = batch
    if timer is not None:
        times = measure(timer, names)
    else:
        with _untouched(model, device):
            run = step_runner(cfg, model, device, fsdp)
            rows = timed_rows(timed(lambda n: run("float32", n), device), batch, STEP_S)
            times = measure(timed(lambda name: run(name, rows), device), names)
    choice, rates = choose(times, rows * cfg.model.block_size)
    if timer is None:
        _store(file, choice, rates)
    part = f" on {rows} of the batch's {batch} rows" if rows < batch else ""
    return choice, (f"train.dtype=auto: {why(choice, rates)}; measured in "
                    f"{time.perf_counter() - start:.1f} s{part}")


def resolve_auto_dtype(cfg: Config, model: torch.nn.Module, env: DistEnv, fsdp: bool = False,
                       timer: StepTimer | None = None) -> str:
    """Replace ``cfg.train.dtype="auto"`` with the dtype measured fastest (rank 0's choice on every
    rank, so that all ranks agree); return the line saying what was chosen and why.

    Every rank times its steps, side by side as they will train: ranks sharing a CPU's cores (or a
    node's memory bandwidth) then contend as in training, which rank 0 timing alone would not show."""
    choice, line = pick_dtype(cfg, model, env.device, fsdp, timer)
    first, first_line = gather_objects((choice, line), env)[0]
    if first != choice:
        line = f"{first_line} (rank 0's choice; this rank measured {choice})"
    cfg.train = replace(cfg.train, dtype=first)
    return line
