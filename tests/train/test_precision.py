"""train.dtype=auto: the decision from timed training steps (injected timings), the cache, and one real
measurement that leaves the model and the random streams as they were."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fastgpt.config import load_config
from fastgpt.model import GPT
from fastgpt.train import precision
from fastgpt.train.distributed import DistEnv
from fastgpt.train.precision import DROP, MARGIN, MAX_ROUNDS, MIN_ROUNDS, WARMUP, pick_dtype, resolve_auto_dtype

CPU = torch.device("cpu")
# 2*8*64*64*256 = 1.7e7 FLOPs a feed-forward matmul: above MIN_FLOPS, a few ms a step on a CPU
MODEL = ["model.n_layer=1", "model.n_head=2", "model.n_embd=64", "model.block_size=64", "model.vocab_size=96",
         "train.batch_size=8"]


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache; without the emulated CUDA build, which a fresh cache would rebuild (20 s) for the
    throwaway optimizer's backend check."""
    monkeypatch.setenv("FASTGPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTGPT_CUDA_EMULATE", raising=False)
    return tmp_path / "cache"


def _timer(seconds: dict[str, float | list[float]], calls: list[str]):
    """A StepTimer: ``seconds[name]``, or its items in turn; each call is recorded."""
    def step_time(name: str) -> float:
        calls.append(name)
        s = seconds[name]
        return s.pop(0) if isinstance(s, list) else s

    return step_time


def _model(cfg):
    torch.manual_seed(0)
    return GPT(cfg.model)


@pytest.mark.parametrize("bf16_s,expected", [(0.5, "bfloat16"), (1 - MARGIN - 0.01, "bfloat16"),
                                             (1 - MARGIN + 0.01, "float32"), (1.0, "float32"), (1.5, "float32")])
def test_lower_precision_only_where_its_steps_are_faster_by_the_margin(bf16_s: float, expected: str) -> None:
    cfg, calls = load_config(None, MODEL), []
    choice, line = pick_dtype(cfg, _model(cfg), CPU, timer=_timer({"float32": 1.0, "bfloat16": bf16_s}, calls))
    assert choice == expected and line.startswith(f"train.dtype=auto: {expected} (training steps, tokens/s: ")
    fp32, bf16 = (float(x.replace(",", "")) for x in re.findall(r"(?:fp32|bf16) ([\d,]+)", line))
    tokens = 8 * 64
    assert fp32 == pytest.approx(tokens / 1.0, abs=1) and bf16 == pytest.approx(tokens / bf16_s, abs=1)
    # warm-up steps first, then the candidates alternate; 1 s steps end at MIN_ROUNDS (the budget is spent)
    assert calls == ["float32"] * WARMUP + ["bfloat16"] * WARMUP + ["float32", "bfloat16"] * MIN_ROUNDS


def test_the_median_decides_not_one_lucky_or_unlucky_step() -> None:
    cfg = load_config(None, MODEL)
    fp32 = [1.0, 0.4, 1.0, 1.0]  # warm-up, then one lucky fp32 step
    bf16 = [9.0, 0.5, 5.0, 0.5]  # a slow warm-up (not timed) and one step hit by a neighbour's load
    choice, _ = pick_dtype(cfg, _model(cfg), CPU, timer=_timer({"float32": fp32, "bfloat16": bf16}, []))
    assert choice == "bfloat16"


def test_short_steps_take_more_rounds_and_a_hopeless_candidate_is_dropped() -> None:
    cfg, calls = load_config(None, MODEL), []
    pick_dtype(cfg, _model(cfg), CPU, timer=_timer({"float32": 1e-3, "bfloat16": 0.9e-3}, calls))
    assert calls.count("float32") == calls.count("bfloat16") == WARMUP + MAX_ROUNDS  # the budget is never spent
    calls.clear()  # bf16 emulated: more than DROP times slower, timed once after its warm-up
    choice, line = pick_dtype(cfg, _model(cfg), CPU, timer=_timer({"float32": 1e-3, "bfloat16": DROP * 1.1e-3}, calls))
    assert choice == "float32" and calls.count("bfloat16") == WARMUP + 1
    assert calls.count("float32") == WARMUP + MAX_ROUNDS
    assert "bf16 " in line  # its speed is still reported


def test_a_slow_step_is_timed_on_fewer_rows_of_the_batch() -> None:
    calls = []

    def step_time(rows: int) -> float:  # 0.2 s a row (and a slow first call, which allocates)
        calls.append(rows)
        return 5.0 if len(calls) == 1 else 0.2 * rows

    assert precision.timed_rows(step_time, 64, 0.375) == 1 and calls == [1, 1]
    assert precision.timed_rows(lambda rows: 0.01 * rows, 64, 0.375) == 37
    assert precision.timed_rows(lambda rows: 1e-4 * rows, 64, 0.375) == 64  # fast: the whole batch
    assert precision.timed_rows(lambda rows: 9.0, 64, 0.375) == 1  # never fewer than one row


def test_a_toy_model_or_a_device_without_candidates_is_not_measured() -> None:
    calls = []
    tiny = load_config(None, ["model.n_embd=16", "model.n_head=2", "model.block_size=16", "train.batch_size=2"])
    choice, line = pick_dtype(tiny, _model(tiny), CPU, timer=_timer({"float32": 1.0, "bfloat16": 1e-9}, calls))
    assert choice == "float32" and "a toy model" in line and not calls
    cfg = load_config(None, MODEL)
    choice, line = pick_dtype(cfg, _model(cfg), torch.device("meta"), timer=_timer({}, calls))
    assert choice == "float32" and "no lower precision is timed on meta" in line and not calls


def test_the_choice_replaces_auto_in_the_config() -> None:
    cfg = load_config(None, MODEL)
    assert cfg.train.dtype == "auto"  # the default
    line = resolve_auto_dtype(cfg, _model(cfg), DistEnv(), timer=_timer({"float32": 1.0, "bfloat16": 0.5}, []))
    assert cfg.train.dtype == "bfloat16" and line.startswith("train.dtype=auto: bfloat16")


def test_a_real_measurement_leaves_weights_and_random_streams_as_they_were(_cache_dir: Path) -> None:
    cfg = load_config(None, [*MODEL, "model.dropout=0.1"])  # dropout draws from the global stream
    model = _model(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    choice, line = pick_dtype(cfg, model, CPU)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p, before[n]) and p.grad is None for n, p in model.named_parameters())
    assert choice in ("float32", "bfloat16") and re.search(r"fp32 [\d,]+, bf16 [\d,]+\); measured in [\d.]+ s$", line)
    (file,) = (_cache_dir / "dtype").glob("*.json")
    kept = json.loads(file.read_text())
    assert kept["choice"] == choice and set(kept["tokens_per_s"]) == {"float32", "bfloat16"}
    # the second time the cache answers: no step runs (a timer would be used; none is given, and the
    # model's forward is broken to prove no step is taken)
    model.forward = None
    again, line = pick_dtype(cfg, model, CPU)
    assert again == choice and line.endswith(f"; cached in {file}")


def test_the_cache_is_per_model_and_per_trained_parameters() -> None:
    cfg = load_config(None, MODEL)
    model = _model(cfg)
    file = precision.cache_file(cfg, model, CPU, False)
    wider = load_config(None, [*MODEL, "model.n_embd=128"])
    assert precision.cache_file(wider, _model(wider), CPU, False) != file
    model.lm_head.weight.requires_grad_(False)  # freezing changes the step
    assert precision.cache_file(cfg, model, CPU, False) != file
    assert precision.cache_file(cfg, _model(cfg), CPU, True) != file


@pytest.mark.parametrize("content", [
    "not json",
    "[" * 100_000,
    json.dumps({"choice": "float16", "tokens_per_s": {"float32": 1.0, "float16": 2.0}}),  # not a CPU candidate
    json.dumps({"choice": "bfloat16", "tokens_per_s": {"float32": 1.0, "bfloat16": float("nan")}}),
    json.dumps({"choice": "bfloat16", "tokens_per_s": {"float32": 1.0, "bfloat16": -2.0}}),
    json.dumps({"choice": "bfloat16", "tokens_per_s": {"bfloat16": 2.0}}),
    json.dumps({"choice": "bfloat16", "tokens_per_s": {"float32": 1.0, "bfloat16": 2.0}, "run": "rm -rf /"}),
    json.dumps({"choice": "bfloat16", "tokens_per_s": {"float32": 1.0, "bfloat16": 2.0}}) + " " * 5000,  # too big
])
def test_a_cache_file_that_is_not_a_choice_is_ignored_and_replaced(content: str) -> None:
    cfg = load_config(None, MODEL)
    model = _model(cfg)
    file = precision.cache_file(cfg, model, CPU, False)
    file.parent.mkdir(parents=True)
    file.write_text(content)
    _, line = pick_dtype(cfg, model, CPU)
    assert "; measured in " in line
    assert set(json.loads(file.read_text())) == {"choice", "tokens_per_s"}


def test_a_valid_cache_file_is_taken() -> None:
    cfg = load_config(None, MODEL)
    model = _model(cfg)
    file = precision.cache_file(cfg, model, CPU, False)
    file.parent.mkdir(parents=True)
    file.write_text(json.dumps({"choice": "bfloat16", "tokens_per_s": {"float32": 1000.0, "bfloat16": 2000.0}}))
    assert pick_dtype(cfg, model, CPU) == ("bfloat16", f"train.dtype=auto: bfloat16 (training steps, tokens/s: "
                                                        f"fp32 1,000, bf16 2,000); cached in {file}")
