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

import importlib
import os
from collections.abc import Callable

import pytest
import torch

if not torch.cuda.is_available():  # before anything imports triton or fastgpt's kernels (as the root conftest)
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("FASTGPT_CUDA_EMULATE", "1")

from fastgpt.ops._backend import available_backends  # noqa: E402

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


def skip_unsupported(backend: str, op: str, *args: object) -> None:
    """Skip, with the kernel's own reason, inputs that ``backend``'s ``op`` kernel refuses.

    ``op`` names the kernel module (``flash_attention``, ``rms_norm``, ``fused_adamw``); ``args``
    are what its ``unsupported_reason`` takes. The torch backend takes every input.
    """
    if backend == "torch":
        return
    reason = importlib.import_module(f"fastgpt.ops.{backend}.{op}").unsupported_reason(*args)
    if reason is not None:
        pytest.skip(f"{backend} {op} refuses these inputs: {reason}")


# floor of the absolute tolerance, for results PyTorch happens to get exactly (e.g. a zero gradient)
_ATOL = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-3}


def _assert_err_close(
    name: str, out: torch.Tensor, same_dtype: torch.Tensor, ref: torch.Tensor, factor: float = 2.0
) -> None:
    """err(out, ref) <= factor * err(same_dtype, ref) + atol, errors measured as max |diff|.

    ``ref`` is computed in float64, ``same_dtype`` by PyTorch in ``out``'s dtype: the kernel may
    be a small factor less accurate than PyTorch itself. atol is one unit in the last place of
    ``out``'s dtype at the reference's largest magnitude, and at least ``_ATOL[dtype]``.
    """
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == same_dtype.dtype, f"{name}: dtype {out.dtype} != {same_dtype.dtype}"
    diff = (out.double() - ref).abs()
    torch_err = (same_dtype.double() - ref).abs().max().item() if ref.numel() else 0.0
    ref_max = ref.abs().max().item() if ref.numel() else 0.0
    atol = max(torch.finfo(out.dtype).eps * ref_max, _ATOL[out.dtype])
    bound = factor * torch_err + atol
    err = diff.max().item() if diff.numel() else 0.0
    assert not diff.isnan().any(), f"{name}: NaN in output"
    assert err <= bound, (
        f"{name}: max error {err:.3e} (mean {diff.mean().item():.3e}) exceeds {factor} * torch's {torch_err:.3e}"
        f" + atol {atol:.3e} = {bound:.3e}"
    )


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
