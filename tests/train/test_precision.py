"""train.dtype=auto: the decision from measured matmul speeds (timings injected, never asserted)."""

from __future__ import annotations

import re

import pytest
import torch

from fastgpt.config import load_config
from fastgpt.train.distributed import DistEnv
from fastgpt.train.precision import MIN_SPEEDUP, ROUNDS, matmul_shape, pick_dtype, resolve_auto_dtype

CPU = torch.device("cpu")
MODEL = ["model.n_layer=2", "model.n_head=4", "model.n_embd=128", "model.block_size=128", "train.batch_size=16"]


def _timer(fp32_s: float, bf16_s: float, calls: list):
    def timer(device: torch.device, dtype: torch.dtype, shape: tuple[int, int, int]) -> float:
        calls.append((dtype, shape))
        return bf16_s if dtype == torch.bfloat16 else fp32_s

    return timer


@pytest.mark.parametrize("speedup,expected", [(3.5, "bfloat16"), (MIN_SPEEDUP + 0.05, "bfloat16"),
                                              (MIN_SPEEDUP - 0.05, "float32"), (1.0, "float32")])
def test_bf16_only_where_measured_faster(speedup: float, expected: str) -> None:
    cfg, calls = load_config(None, MODEL), []
    choice, line = pick_dtype(cfg, CPU, _timer(1e-3, 1e-3 / speedup, calls))
    m, k, n = matmul_shape(cfg, CPU)
    assert (m, k, n) == (1525, 128, 512)  # 2048 rows capped at 2e8 flops
    assert choice == expected and line.startswith(f"train.dtype=auto: {expected} (a 1525x128x512 matmul on cpu")
    bf16, fp32 = (float(x.replace(",", "")) for x in re.findall(r"([\d.,]+) GFLOP/s", line))
    assert fp32 == pytest.approx(2 * m * k * n / 1e-3 / 1e9, rel=0.01)
    assert bf16 == pytest.approx(speedup * fp32, rel=0.01)
    assert len(calls) == 2 * ROUNDS and {shape for _, shape in calls} == {matmul_shape(cfg, CPU)}


def test_emulated_bf16_is_measured_once() -> None:
    calls = []
    choice, _ = pick_dtype(load_config(None, MODEL), CPU, _timer(1e-3, 3e-2, calls))
    assert choice == "float32" and [d for d, _ in calls] == [torch.float32, torch.bfloat16]


def test_a_toy_model_or_another_device_is_not_measured() -> None:
    calls = []
    tiny = load_config(None, ["model.n_embd=16", "model.n_head=2", "model.block_size=16", "train.batch_size=2"])
    choice, line = pick_dtype(tiny, CPU, _timer(1.0, 1e-9, calls))
    assert choice == "float32" and "too small to gain from bf16" in line and not calls
    choice, line = pick_dtype(load_config(None, MODEL), torch.device("meta"), _timer(1.0, 1e-9, calls))
    assert choice == "float32" and "no bf16 autocast measured on meta" in line and not calls


def test_the_measured_matmul_is_capped() -> None:
    big = load_config(None, ["model.preset=gpt2", "train.batch_size=64"])
    m, k, n = matmul_shape(big, CPU)
    assert (k, n) == (768, 3072) and 2 * m * k * n <= 2e8 and m >= 1


def test_the_choice_replaces_auto_in_the_config() -> None:
    cfg = load_config(None, MODEL)
    assert cfg.train.dtype == "auto"  # the default
    line = resolve_auto_dtype(cfg, DistEnv(), _timer(1e-3, 2e-4, []))
    assert cfg.train.dtype == "bfloat16" and "bfloat16" in line
