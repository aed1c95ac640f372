"""Build script: the optional CUDA extension ``fastgpt._C``.

Package metadata lives in pyproject.toml. The extension is built from every ``.cpp``/``.cu`` under
``csrc/`` except ``csrc/emu/`` (the CPU emulation layer) when a CUDA build of torch and nvcc are
present; otherwise a pure-Python/Triton package is installed. Environment:

- ``FASTGPT_SKIP_CUDA_BUILD=1``: never build the extension.
- ``FASTGPT_FORCE_CUDA_BUILD=1``: a failed or impossible build is an error instead of a warning.
- ``TORCH_CUDA_ARCH_LIST``: target GPUs (default "8.0;9.0").
- ``MAX_JOBS``: parallel compile jobs (default: what free memory allows, at most the core count).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
SKIP = os.environ.get("FASTGPT_SKIP_CUDA_BUILD") == "1"
FORCE = os.environ.get("FASTGPT_FORCE_CUDA_BUILD") == "1"
GIB = 1 << 30


def _say(msg: str) -> None:
    print(f"fastgpt setup: {msg}", file=sys.stderr)


def _default_max_jobs() -> int:
    """One nvcc job per ~3 GiB of available memory, at least 1, at most the core count."""
    try:
        with open("/proc/meminfo") as f:
            meminfo = dict(line.split(":", 1) for line in f)
        available = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 1
    return max(1, min(os.cpu_count() or 1, available // (3 * GIB)))


def _cuda_unavailable_reason() -> str | None:
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        return "torch is not installed in the build environment (use --no-build-isolation)"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if CUDA_HOME is None:
        return "nvcc was not found (set CUDA_HOME)"
    return None


def _extension_kwargs() -> dict:
    if SKIP:
        _say("FASTGPT_SKIP_CUDA_BUILD=1: skipping the CUDA extension")
        return {}
    reason = _cuda_unavailable_reason()
    if reason:
        if FORCE:
            sys.exit(f"fastgpt setup: FASTGPT_FORCE_CUDA_BUILD=1 but the CUDA extension cannot be built: {reason}")
        _say(f"not building the CUDA extension: {reason}; installing the pure-Python/Triton package")
        return {}

    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    os.environ.setdefault("MAX_JOBS", str(_default_max_jobs()))
    # csrc/emu/ is the CPU emulation layer (FASTGPT_CUDA_EMULATE=1, fastgpt/ops/cuda/emulated_build.py): never
    # part of the CUDA build
    sources = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "csrc").rglob("*")
        if p.suffix in (".cpp", ".cu") and "emu" not in p.relative_to(ROOT / "csrc").parts
    )
    _say(f"building fastgpt._C for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} "
         f"with MAX_JOBS={os.environ['MAX_JOBS']} ({len(sources)} sources)")

    class OptionalBuildExtension(BuildExtension):
        """A failed build warns and installs without the extension, unless FORCE is set."""

        def run(self) -> None:
            try:
                super().run()
            except Exception as exc:
                if FORCE:
                    raise
                _say(f"building the CUDA extension failed ({exc}); installing without it")

    ext = CUDAExtension(
        name="fastgpt._C",
        sources=sources,
        include_dirs=[str(ROOT / "csrc")],
        extra_compile_args={
            "cxx": ["-O3", "-std=c++20"],
            # ptxas warns when a kernel spills registers or uses local memory (a performance bug)
            "nvcc": [
                "-O3", "-std=c++20", "-lineinfo", "--expt-relaxed-constexpr", "-Xptxas=-warn-spills,-warn-lmem-usage",
            ],
        },
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}}


setup(**_extension_kwargs())
