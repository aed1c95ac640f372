"""Shared fixtures for the op tests: which backends to test, skips, bf16 on CPU, and error checks.

Add a backend to ``BACKENDS`` and every op test runs on it (skipped, with the reason, where it
cannot run). Triton runs on CPU only under ``TRITON_INTERPRET=1`` and the CUDA kernels only under
``FASTGPT_CUDA_EMULATE=1``; both must be set before fastgpt's kernels load (the root conftest sets
them when CUDA is unavailable). Under emulation the ``cuda`` rows run twice, once per emulator
schedule: ``cuda`` (threads in turn, asynchronous copies landing late) and ``cuda-ahead`` (one warp
running ahead, copies landing at once).

Inputs a backend refuses are skipped with the kernel's own ``unsupported_reason``
(:func:`skip_unsupported`), so no row fails because a test asked for something unsupported.
Under the Triton interpreter, bf16 is computed by value: the root conftest's ``triton_bf16``
fixture activates the test-only shim tests/ops/triton_bf16.py for the session.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

if not torch.cuda.is_available():  # before anything imports triton or fastgpt's kernels (as the root conftest)
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("FASTGPT_CUDA_EMULATE", "1")

from fastgpt.ops._accuracy import error_problem  # noqa: E402
from fastgpt.ops._backend import available_backends  # noqa: E402
from fastgpt.ops._registry import kernel  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CUDA_EMULATED = DEVICE == "cpu" and os.environ.get("FASTGPT_CUDA_EMULATE") == "1"
# test id -> (backend, emulator schedule or None)
_ROWS = {"torch": ("torch", None), "triton": ("triton", None), "cuda": ("cuda", None)}
if CUDA_EMULATED:
    _ROWS |= {"cuda": ("cuda", "interleaved"), "cuda-ahead": ("cuda", "ahead")}
BACKENDS = list(_ROWS)
KERNEL_BACKENDS = [b for b in BACKENDS if b != "torch"]  # ours: the rows with an unsupported_reason


def _backend_or_skip(name: str, device: str = DEVICE) -> str:
    """``name`` when that backend runs on ``device``; otherwise skip the test, saying why."""
    reason = available_backends(device)[name]
    if reason is not None:
        pytest.skip(f"backend {name!r} unavailable on {device}: {reason}")
    return name


def skip_unsupported(backend: str, op: str, *args: object, **kwargs: object) -> None:
    """Skip, with the kernel's own reason, inputs that ``backend``'s ``op`` kernel refuses.

    ``op`` names the kernel module (``flash_attention``, ``rms_norm``, ``fused_adamw``); ``args``
    are what its ``unsupported_reason`` takes. The torch backend takes every input.
    """
    if backend == "torch":
        return
    reason = kernel(backend, op).unsupported_reason(*args, **kwargs)
    if reason is not None:
        pytest.skip(f"{backend} {op} refuses these inputs: {reason}")


def _assert_err_close(
    name: str, out: torch.Tensor, same_dtype: torch.Tensor, ref: torch.Tensor, factor: float = 2.0
) -> None:
    """err(out, ref) <= factor * err(same_dtype, ref) + atol: :func:`fastgpt.ops._accuracy.error_problem`.

    The criterion ``backend="auto"`` also checks each kernel against on first use.
    """
    problem = error_problem(name, out, same_dtype, ref, factor)
    assert problem is None, problem


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each backend in ``BACKENDS`` that runs here (``cuda-ahead`` is ``cuda`` under the other schedule)."""
    name, schedule = _ROWS[request.param]
    _backend_or_skip(name)
    if schedule is not None:
        monkeypatch.setenv("FASTGPT_CUDA_EMULATE_SCHEDULE", schedule)
    return name


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each of our kernel backends (triton, cuda, and cuda-ahead under emulation) that runs here."""
    name, schedule = _ROWS[request.param]
    _backend_or_skip(name)
    if schedule is not None:
        monkeypatch.setenv("FASTGPT_CUDA_EMULATE_SCHEDULE", schedule)
    return name


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture
def backend_or_skip() -> Callable[..., str]:
    return _backend_or_skip


@pytest.fixture(name="skip_unsupported")
def skip_unsupported_fixture() -> Callable[..., None]:
    return skip_unsupported


@pytest.fixture
def assert_err_close() -> Callable[..., None]:
    return _assert_err_close
