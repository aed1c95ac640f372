"""``python -m fastgpt.info``: versions, devices, and which op backends are usable (and why not)."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

from fastgpt.messages import ArgumentParser
from fastgpt.ops import _autotune_cache
from fastgpt.ops._backend import available_backends, triton_interpreted


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report() -> str:
    """The information as printable lines."""
    lines = [
        f"fastgpt {_version('fastgpt')}",
        f"python {platform.python_version()} on {platform.platform()}",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none: CPU-only build'})",
        f"triton {_version('triton')}" + (" (TRITON_INTERPRET=1: kernels run in the CPU interpreter)"
                                            if triton_interpreted() else ""),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}")
    else:
        lines.append("GPU: none (no CUDA device visible to torch)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lines.append(f"op backends on {device} (auto checks and times the usable ones beside torch):")
    for name, reason in available_backends(device).items():
        lines.append(f"  {name:7s} {'available' if reason is None else 'unavailable: ' + reason}")
    lines.extend(_autotune_lines(device))
    return "\n".join(lines)


def _autotune_lines(device: torch.device) -> list[str]:
    """auto's remembered choices for ``device``, each with the measured times and the rejected kernels."""
    _autotune_cache.load(device)
    records = _autotune_cache.records()
    lines = [f"auto's choices ({_autotune_cache.path(device)}):" if records else
             f"auto's choices: none measured yet ({_autotune_cache.path(device)})"]
    for key, record in sorted(records.items()):
        times = ", ".join(f"{b} {ms:.3g} ms" for b, ms in sorted(record["ms"].items(), key=lambda kv: kv[1]))
        rejected = "".join(f"; {b} rejected: {err}" for b, err in record["rejected"].items())
        lines.append(f"  {key}: {record['backend']} ({times}{rejected})")
    return lines


def main(argv: list[str] | None = None) -> int:
    about = "Print versions, devices, and which op backends are usable (and why not)."
    ArgumentParser(prog="python -m fastgpt info", description=about).parse_args(argv)
    print(report())
    return 0


if __name__ == "__main__":
    from fastgpt.__main__ import run

    run(main)
