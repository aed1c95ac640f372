"""Mutation check of the CUDA emulator's op tests: planted kernel bugs must make them fail.

Each case copies csrc/, plants one bug of a kind real kernels have, builds the emulated library
of the copy (only the translation units that see the edit are compiled again; the others come
from the object cache) and runs the emulator tests of the broken op in a subprocess, which must
fail. The unplanted copy must pass the same tests. Marked ``slow``; ``make test`` runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = "tests/ops/test_cuda_emulator.py"


def _ids(test: str, *params: str) -> list[str]:
    return [f"{TESTS}::{test}[{p}]" for p in params]


# (name, file under csrc/, original text, planted text, tests that must fail)
MUTANTS = [
    (
        "causal-mask-off-by-one",
        "flash_attn/flash_fwd_kernel.cuh",
        "CAUSAL ? min(seqlen, row0 + 1) : seqlen, CAUSAL ? min(seqlen, row0 + 9) : seqlen",
        "CAUSAL ? min(seqlen, row0 + 2) : seqlen, CAUSAL ? min(seqlen, row0 + 10) : seqlen",
        _ids("test_flash_attention", "interleaved-True-17-64-dtype0", "ahead-True-113-64-dtype1"),
    ),
    (
        "swapped-b-fragment",
        "flash_attn/flash_fwd_kernel.cuh",
        "mma_16816<T>(s[2 * np], q_frag[kk], kb[0], kb[1]);",
        "mma_16816<T>(s[2 * np], q_frag[kk], kb[1], kb[0]);",
        _ids("test_flash_attention", "interleaved-False-17-64-dtype0"),
    ),
    (
        "missing-syncthreads",
        "flash_attn/flash_fwd_kernel.cuh",
        "    __syncthreads();  // this stage is refilled by the next iteration's prefetch\n"
        "  }\n  cp_async_wait<0>();\n\n  // normalize",
        "  }\n  cp_async_wait<0>();\n\n  // normalize",
        _ids("test_flash_attention_long", "interleaved-False-dtype0", "ahead-False-dtype0"),
    ),
    (
        "cp-async-wait-count",
        "flash_attn/flash_fwd_kernel.cuh",
        "cp_async_wait<1>();  // everything but the prefetch has landed",
        "cp_async_wait<2>();  // everything but the prefetch has landed",
        _ids("test_flash_attention", "interleaved-False-17-64-dtype0", "ahead-False-17-64-dtype0"),
    ),
    (
        "rms-norm-reduction",
        "rms_norm/rms_norm_kernel.cu",
        "for (int w = 0; w < warps; ++w) total += mine[w];",
        "for (int w = 1; w < warps; ++w) total += mine[w];",
        _ids("test_rms_norm", "interleaved-bf16-4096-residual", "ahead-bf16-4096-residual"),
    ),
    (
        "adamw-bias-correction",
        "adamw/fused_adamw_kernel.cu",
        "s.bc2_sqrt = static_cast<float>(sqrt(1.0 - pow(hp.beta2, step)));",
        "s.bc2_sqrt = static_cast<float>(sqrt(1.0 - pow(hp.beta2, step - 1.0)));",
        _ids("test_fused_adamw", "interleaved-False-fp32-40-tensors"),
    ),
]


def _run_tests(csrc: Path, tests: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "FASTGPT_CUDA_EMULATE": "1", "FASTGPT_CUDA_EMULATE_CSRC": str(csrc)}
    # build first: a compile error is this test's error, not a caught mutant
    build = subprocess.run([sys.executable, "-c", "import fastgpt.ops.cuda"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=900)
    assert build.returncode == 0, f"the emulated build of {csrc} failed:\n{build.stderr[-4000:]}"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )


def _copy_csrc(tmp_path: Path) -> Path:
    dst = tmp_path / "csrc"
    shutil.copytree(ROOT / "csrc", dst)
    return dst


@pytest.mark.slow
def test_unplanted_copy_passes(tmp_path):
    tests = sorted({t for *_, ts in MUTANTS for t in ts})
    res = _run_tests(_copy_csrc(tmp_path), tests)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("name, path, original, planted, tests", MUTANTS, ids=[m[0] for m in MUTANTS])
def test_planted_bug_is_caught(tmp_path, name, path, original, planted, tests):
    csrc = _copy_csrc(tmp_path)
    source = csrc / path
    text = source.read_text()
    assert text.count(original) == 1, f"{name}: the text to mutate is not in {path} exactly once"
    source.write_text(text.replace(original, planted))
    res = _run_tests(csrc, tests)
    assert res.returncode == 1, f"{name} was not caught:\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
    assert "failed" in res.stdout.splitlines()[-1], res.stdout[-3000:]
