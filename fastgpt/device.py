"""A device name from the command line or a config (``auto``, ``cpu``, ``cuda``, ``cuda:N``) as a
``torch.device`` that exists here; anything else is a ValueError naming the option and the value."""

from __future__ import annotations

import torch

DEVICES = "auto, cpu, cuda, cuda:N"


def resolve_device(name: object, option: str) -> torch.device:
    """``auto`` -> the GPU when CUDA exists, else the CPU; ``cuda`` on a machine (or a torch build)
    without CUDA, an absent GPU index and unknown names are refused."""
    if not isinstance(name, str):
        raise ValueError(f"{option}={name!r} is not one of {DEVICES}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{option}={name!r} is not one of {DEVICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option}={name!r} but no CUDA device is available here "
                             f"(torch {torch.__version__}); use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{option}={name!r} names GPU {device.index} but {torch.cuda.device_count()} "
                             "are visible")
    elif device.type != "cpu":
        raise ValueError(f"{option}={name!r} is not one of {DEVICES}")
    return device
