"""Which op backends exist on this machine, and why not where they do not.

Backends: ``cuda`` (our CUDA C++ extension ``fastgpt._C``), ``triton`` (our Triton kernels) and
``torch`` (PyTorch's own kernels, :mod:`fastgpt.ops.torch_path`, always available). An explicit
backend that cannot run raises ``BackendUnavailable`` saying why. With ``FASTGPT_CUDA_EMULATE=1``,
``cuda`` is the emulated build of csrc/ and runs on CPU tensors only. How ``auto`` chooses among
the usable ones is :mod:`fastgpt.ops.autotune`."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

BACKENDS = ("cuda", "triton", "torch")
CHOICES = ("auto", *BACKENDS)


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here; the message says why."""


def cuda_emulated() -> bool:
    """True when ``backend="cuda"`` runs the emulated build of csrc/ on CPU (FASTGPT_CUDA_EMULATE=1)."""
    return os.environ.get("FASTGPT_CUDA_EMULATE", "0") == "1"


def _extension_error() -> str | None:
    """Why ``fastgpt._C`` (or, emulated, its CPU build) cannot be used (None when it loads)."""
    if cuda_emulated():
        from fastgpt.ops.cuda.emulated_build import error  # builds on first use

        return error()
    return _real_extension_error()


@functools.cache
def _real_extension_error() -> str | None:
    if importlib.util.find_spec("fastgpt._C") is None:
        return "the CUDA extension fastgpt._C is not built (install with a CUDA toolchain and a CUDA build of torch)"
    try:
        importlib.import_module("fastgpt._C")
    except ImportError as exc:
        return f"the CUDA extension fastgpt._C does not load: {exc}"
    return None


@functools.cache
def _triton_error() -> str | None:
    """Why Triton cannot be imported (None when it can)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return None


def triton_interpreted() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run on ``device`` (None when it can)."""
    if backend == "torch":
        return None
    if backend == "triton":
        if _triton_error():
            return _triton_error()
        if device.type == "cuda" or (device.type == "cpu" and triton_interpreted()):
            return None
        if triton_interpreted():
            return f"the Triton interpreter (TRITON_INTERPRET=1) runs on CPU or CUDA tensors (tensors are on {device})"
        return (f"Triton kernels need a CUDA device (tensors are on {device}); "
                "set TRITON_INTERPRET=1 to run them slowly on CPU")
    if backend == "cuda":
        if cuda_emulated():
            if device.type != "cpu":
                return f"the emulated CUDA build (FASTGPT_CUDA_EMULATE=1) runs on CPU tensors (tensors are on {device})"
            return _extension_error()
        if device.type != "cuda":
            return f"CUDA kernels need a CUDA device (tensors are on {device})"
        return _extension_error()
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(CHOICES)}")


def available_backends(device: torch.device | str) -> dict[str, str | None]:
    """Map each backend to None (usable on ``device``) or the reason it is not."""
    device = torch.device(device)
    return {name: unavailable_reason(name, device) for name in BACKENDS}


def require(backend: str, device: torch.device) -> None:
    """Raise ``BackendUnavailable`` (saying why) when the explicit ``backend`` cannot run on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(CHOICES)}")
    reason = unavailable_reason(backend, device)
    if reason:
        raise BackendUnavailable(f"backend {backend!r} is unavailable: {reason}")
