"""Shared fixtures for the op tests: which backends to test, skips, and error checks.

Add a backend to ``BACKENDS`` and every op test runs on it (skipped, with the reason, where it
cannot run). Triton runs on CPU only under ``TRITON_INTERPRET=1``, which must be set before
triton is imported (the root conftest does it when CUDA is unavailable).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

if not torch.cuda.is_available():  # before anything imports triton (the root conftest does the same)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fastgpt.ops._backend import available_backends, triton_interpreted  # noqa: E402

BACKENDS = ["torch", "triton", "cuda"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _backend_or_skip(name: str, device: str = DEVICE) -> str:
    """``name`` when that backend runs on ``device``; otherwise skip the test, saying why."""
    reason = available_backends(device)[name]
    if reason is not None:
        pytest.skip(f"backend {name!r} unavailable on {device}: {reason}")
    return name


def _dtype_or_skip(dtype: torch.dtype, device: str = DEVICE) -> torch.dtype:
    """``dtype`` when kernels can be tested in it on ``device``; bf16 needs CUDA."""
    if dtype == torch.bfloat16 and (device != "cuda" or triton_interpreted()):
        pytest.skip("bfloat16 is tested on CUDA only (the Triton interpreter computes it wrongly)")
    return dtype


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
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in ``BACKENDS`` that runs here."""
    return _backend_or_skip(request.param)


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture
def backend_or_skip() -> Callable[..., str]:
    return _backend_or_skip


@pytest.fixture
def dtype_or_skip() -> Callable[..., torch.dtype]:
    return _dtype_or_skip


@pytest.fixture
def assert_err_close() -> Callable[..., None]:
    return _assert_err_close
