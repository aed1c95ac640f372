"""Faults met by the CLIs (real files, real processes): one ``error:`` line and exit 2, never a traceback.

* JSON nested 100000 deep in a data source (``.jsonl`` and ``.json``), an SFT row, an eval task's JSONL
  file, a prepared folder's manifest.json and a run's metrics.jsonl.
* a training batch that cannot be allocated in CPU memory (torch's allocator refuses it).
* ``lm_eval --tasks hellaswag`` whose dataset cannot be downloaded (offline, or no network at all: then
  at once, not after the hub client's retries).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_run import tiny_args

import fastgpt

DEEP = "[" * 100_000
TIMEOUT = 120  # seconds a CLI process may take (these take a few)


def _run(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m fastgpt ARGV``, the fastgpt this test imports, under ``TIMEOUT``."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(Path(fastgpt.__file__).parents[1])}
    try:
        return subprocess.run([sys.executable, "-m", "fastgpt", *argv], capture_output=True, text=True,
                              timeout=TIMEOUT, cwd=cwd, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"python -m fastgpt {argv[0]} ran past {TIMEOUT} s")


def _error(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run the CLI, check that it failed with one ``error:`` line (exit 2) and return that line."""
    done = _run(*argv, cwd=cwd, env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and sum(line.startswith("error:") for line in lines) == 1, done.stderr
    return lines[-1]


def _train_args(tmp_path: Path, dataset: Path, *extra: str) -> list[str]:
    return ["train", *tiny_args(dataset, tmp_path / "out", *extra)]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_deep_json_in_a_data_source(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / f"deep{suffix}"
    source.write_text(json.dumps({"text": "a first document"}) + "\n" + DEEP + "\n" if suffix == ".jsonl" else DEEP)
    line = _error(*_train_args(tmp_path, source), cwd=tmp_path)
    where = f"{source}: line 2" if suffix == ".jsonl" else f"{source}:"
    assert line.startswith(f"error: {where}") and "nested too deeply" in line


def test_deep_json_in_an_sft_row(tmp_path: Path) -> None:
    rows = tmp_path / "chat.jsonl"
    rows.write_text(json.dumps({"prompt": "hi", "response": "ok"}) + "\n" + DEEP + "\n")
    line = _error(*_train_args(tmp_path, rows, "data.mode=sft"), cwd=tmp_path)
    assert line.startswith(f"error: {rows}:2: ") and "nested too deeply" in line


def test_deep_json_in_an_eval_task_file(trained: Path, tmp_path: Path) -> None:
    task = tmp_path / "hellaswag.jsonl"
    task.write_text(json.dumps({"context": "a b", "choices": ["c", "d"], "label": 0}) + "\n" + DEEP + "\n")
    line = _error("eval", "--checkpoint", str(trained), "--data", f"hellaswag={task}", "--device", "cpu",
                  cwd=tmp_path)
    assert line.startswith(f"error: {task}:2: ") and "nested too deeply" in line


def test_a_deep_manifest_is_prepared_again(corpus: Path, trained: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(corpus.parent / "cache", cache)
    (manifest,) = cache.glob("*/manifest.json")
    manifest.write_text(DEEP)
    done = _run(*_train_args(tmp_path, corpus, f"data.cache_dir={cache}"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(manifest.read_text())["train_tokens"] > 0


def test_a_deep_line_in_metrics_is_skipped_on_resume(corpus: Path, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(DEEP + "\n")
    done = _run("train", "--resume", *tiny_args(corpus, out, "train.max_iters=3"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert DEEP not in (out / "metrics.jsonl").read_text()


def test_a_batch_beyond_memory_on_cpu_is_one_error_line(corpus: Path, tmp_path: Path) -> None:
    # the first big tensor, the (B, T, C) embedding, is 1048576 x 16 x 4096 floats = 256 GiB: far beyond this
    # machine's memory, so the allocator refuses it at once (nothing is filled, nothing swaps)
    if os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") > 128 << 30:
        pytest.skip("this machine has more than 128 GiB of memory: a 256 GiB tensor might be allocated")
    line = _error(*_train_args(tmp_path, corpus, "train.batch_size=1048576", "model.n_embd=4096"), cwd=tmp_path)
    assert line == ("error: the batch did not fit in memory (the CPU allocator refused a tensor of 256.0 GiB); "
                    "use a smaller train.batch_size (now 1048576) and more train.grad_accum_steps, a smaller "
                    "model.block_size (now 16), or a smaller model (model.n_embd, model.n_layer)")


needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-eval is not installed (pip install 'fastgpt[eval]')")


def _lm_eval_env(tmp_path: Path, offline: bool) -> dict[str, str]:
    """An empty Hugging Face cache (no copy of any task's dataset), with or without the offline switches."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["HF_HOME"] = str(tmp_path / "hf")
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"} if offline else env


@needs_lm_eval
def test_lm_eval_offline_is_one_error_line(trained: Path, tmp_path: Path) -> None:
    line = _error("lm_eval", "--model_args", f"checkpoint={trained},device=cpu", "--tasks", "hellaswag",
                  cwd=tmp_path, env=_lm_eval_env(tmp_path, offline=True))
    assert line.startswith("error: lm_eval --tasks hellaswag: a task's dataset could not be downloaded "
                           "(Couldn't reach 'Rowan/hellaswag' on the Hub"), line
    assert "HF_DATASETS_OFFLINE=1" in line and "--include_path DIR" in line
    assert line.endswith("python -m fastgpt eval --checkpoint DIR --tasks hellaswag --data hellaswag=FILE.jsonl")


@needs_lm_eval
def test_lm_eval_without_network_fails_at_once(trained: Path, tmp_path: Path) -> None:
    from fastgpt.data.sources import hub_unreachable

    if hub_unreachable() is None:
        pytest.skip("the Hugging Face hub can be reached from here: lm_eval would download hellaswag")
    start = time.monotonic()
    line = _error("lm_eval", "--model_args", f"checkpoint={trained},device=cpu", "--tasks", "hellaswag",
                  cwd=tmp_path, env=_lm_eval_env(tmp_path, offline=False))
    took = time.monotonic() - start
    assert "could not be downloaded" in line and "; no network: " in line, line
    assert took < 20, f"took {took:.0f} s: the hub client retried instead of failing at once"
