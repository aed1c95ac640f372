"""Where fastgpt computes: a device name checked against this machine and torch build, and the few
calls that differ between device types (synchronize, memory size).

Names are torch's: ``cpu``, ``cuda`` / ``cuda:N``, ``mps`` (Apple silicon), ``xpu`` / ``xpu:N`` (Intel
GPUs), and ``auto``: the first of cuda, mps, xpu that this machine has, else the CPU. Only the CPU and
CUDA GPUs run fastgpt's own kernels; on mps and xpu every op takes its PyTorch path.
"""

from __future__ import annotations

import functools
import platform

import torch

from fastgpt.messages import cut

DEVICES = "auto, cpu, cuda, cuda:N, mps, xpu, xpu:N"
ACCELERATORS = ("cuda", "mps", "xpu")  # ``auto`` takes the first one available


def unavailable_reason(kind: str) -> str | None:
    """Why device type ``kind`` cannot be used on this machine (None when it can)."""
    if kind == "cpu":
        return None
    if kind == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            return f"torch {torch.__version__} is built without CUDA"
        return None if torch.cuda.is_available() else "no CUDA device is visible"
    if kind == "mps":
        if not torch.backends.mps.is_built():
            return "torch built without MPS"
        return None if torch.backends.mps.is_available() else "MPS needs Apple silicon with macOS 12.3 or later"
    if kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        if xpu is None or not torch._C._has_xpu:
            return "torch built without XPU"
        return None if xpu.is_available() else "no XPU device is visible"
    return "fastgpt runs on " + DEVICES.split(", ", 1)[1]


def device_count(kind: str) -> int:
    """How many devices of type ``kind`` torch sees (1 for cpu and mps)."""
    if kind in ("cuda", "xpu"):
        return getattr(torch, kind).device_count()
    return 1


def resolve_device(name: object, option: str) -> torch.device:
    """The device ``name`` means (``option`` names the setting in messages); a device type this machine
    or torch build lacks, an absent index and unknown names are refused, saying why."""
    if not isinstance(name, str):
        raise ValueError(f"{option}={cut(name)} is not a device ({DEVICES})")
    if name == "auto":
        name = next((kind for kind in ACCELERATORS if unavailable_reason(kind) is None), "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{option}={cut(name)} is not a device ({DEVICES})") from None
    reason = unavailable_reason(device.type)
    if reason is not None:
        raise ValueError(f"{option}={cut(name)}: {device.type} is not available on this machine ({reason}); "
                         "use cpu or auto")
    if device.index is not None and device.index >= device_count(device.type):
        raise ValueError(f"{option}={cut(name)} names {device.type} device {device.index} but "
                         f"{device_count(device.type)} are visible")
    return device


@functools.cache
def device_name(device: torch.device) -> str:
    """What the device is, for caches of choices measured on it: the GPU's or the CPU's model name
    (read once per device and process)."""
    if device.type in ("cuda", "xpu"):
        return getattr(torch, device.type).get_device_name(device)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "cpu")
        except OSError:
            return platform.processor() or "cpu"
    return device.type


def choice_line(name: str, device: torch.device, option: str = "train.device") -> str:
    """One line saying which device ``name`` resolved to, and why."""
    if name != "auto":
        return f"{option}={name}: {device}"
    if device.type != "cpu":
        return f"{option}=auto: {device} (the first of {', '.join(ACCELERATORS)} this machine has)"
    reasons = "; ".join(f"{kind}: {unavailable_reason(kind)}" for kind in ACCELERATORS)
    return f"{option}=auto: cpu (no accelerator here; {reasons})"


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on the CPU)."""
    if device.type in ACCELERATORS:
        getattr(torch, device.type).synchronize(device if device.type != "mps" else None)


def total_memory(device: torch.device) -> int | None:
    """Bytes of memory on an accelerator that reports it (None for the CPU and the others)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "xpu":
        return torch.xpu.get_device_properties(device).total_memory
    if device.type == "mps":
        return torch.mps.recommended_max_memory()
    return None
