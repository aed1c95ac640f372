"""The CUDA C++ backend (``fastgpt._C``): build, registration, and the C++ host code's messages.

The ops themselves are tested, parametrized by backend, in test_flash_attention.py,
test_rms_norm.py and test_fused_adamw.py (on CPU through the emulated build of csrc/ under
``FASTGPT_CUDA_EMULATE=1``). Here: the real extension builds out of tree and registers every op,
the installed one registers them, and the C++ host code refuses bad inputs with messages naming
the op and the value, which the Python wrappers never let reach it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastgpt.ops._backend import _extension_error

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_OPS = ("flash_attn_fwd", "flash_attn_bwd", "rms_norm_fwd", "rms_norm_bwd", "fused_adamw_")


# ---------------------------------------------------------------------------------------------
# build and registration
# ---------------------------------------------------------------------------------------------

_CHECK_OPS = """
import sys
import fastgpt
fastgpt.__path__.append(sys.argv[1])  # the freshly built fastgpt/_C*.so, outside the source tree
import torch
import fastgpt._C
missing = [op for op in sys.argv[2:] if not hasattr(torch.ops.fastgpt, op)]
print("fastgpt._C from", fastgpt._C.__file__, "registers", [op for op in sys.argv[2:] if op not in missing])
sys.exit(f"missing ops: {missing}" if missing else 0)
"""


@pytest.mark.slow
def test_extension_builds_and_registers_every_op(tmp_path: Path) -> None:
    """Build fastgpt._C out of tree (never touching an installed one) and check its ops register."""
    from torch.utils.cpp_extension import CUDA_HOME

    if torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} is a CPU-only build: the CUDA extension cannot be built")
    if CUDA_HOME is None or shutil.which("nvcc", path=str(Path(CUDA_HOME) / "bin")) is None:
        pytest.skip("nvcc not found (set CUDA_HOME): the CUDA extension cannot be built")
    if not (Path(CUDA_HOME) / "include" / "cuda_runtime.h").exists():
        pytest.skip(f"CUDA_HOME={CUDA_HOME} has no include/cuda_runtime.h (set CUDA_HOME to the toolkit's root)")
    env = {**os.environ, "FASTGPT_FORCE_CUDA_BUILD": "1", "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
    build = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "build_ext",
            "--build-lib",
            str(tmp_path / "lib"),
            "--build-temp",
            str(tmp_path / "tmp"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, f"build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    check = subprocess.run(
        [sys.executable, "-c", _CHECK_OPS, str(tmp_path / "lib" / "fastgpt"), *EXPECTED_OPS],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    print(check.stdout)
    assert check.returncode == 0, f"{check.stdout}\n{check.stderr}"


@pytest.mark.parametrize("op", EXPECTED_OPS)
def test_installed_extension_registers(op: str) -> None:
    reason = _extension_error()
    if reason is not None:
        pytest.skip(reason)
    import fastgpt.ops.cuda  # noqa: F401

    assert hasattr(torch.ops.fastgpt, op), f"torch.ops.fastgpt.{op} is not registered"


# ---------------------------------------------------------------------------------------------
# the C++ host code's checks (reached only by calling torch.ops.fastgpt.* directly)
# ---------------------------------------------------------------------------------------------


def test_flash_attention_host_messages(backend_or_skip, device):
    backend_or_skip("cuda")
    import fastgpt.ops.cuda.flash_attention  # noqa: F401  (registers the fake implementations)

    q = torch.randn(1, 2, 16, 96, device=device, dtype=torch.float16)
    with pytest.raises(RuntimeError, match=r"fastgpt flash_attn_fwd: head dim 96 is not supported \(64, 128\)"):
        torch.ops.fastgpt.flash_attn_fwd(q, q, q, True, 0.1)
    q32 = torch.randn(1, 2, 16, 64, device=device)
    with pytest.raises(RuntimeError, match="fastgpt flash_attn_fwd: dtype float32 is not supported"):
        torch.ops.fastgpt.flash_attn_fwd(q32, q32, q32, True, 0.1)


def test_rms_norm_host_messages(backend_or_skip, device):
    backend_or_skip("cuda")
    import fastgpt.ops.cuda.rms_norm  # noqa: F401

    x = torch.randn(2, 65537, device=device)
    with pytest.raises(RuntimeError, match=r"fastgpt rms_norm_fwd: row length 65537 is not supported \(1 to 65536\)"):
        torch.ops.fastgpt.rms_norm_fwd(x, None, None, 1e-6)


def test_fused_adamw_host_messages(backend_or_skip, device):
    backend_or_skip("cuda")
    import fastgpt.ops.cuda.fused_adamw  # noqa: F401

    p = torch.randn(10, device=device)
    m, v, s = torch.zeros(10, device=device), torch.zeros(10, device=device), torch.ones((), device=device)
    hyper = (None, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)
    with pytest.raises(RuntimeError, match=r"fastgpt fused_adamw_: exp_avgs\[0\] must be float32 \(got float16\)"):
        torch.ops.fastgpt.fused_adamw_([p], [p.clone()], [m.half()], [v], [s], *hyper)
    with pytest.raises(RuntimeError, match=r"grads\[0\] must be float32 \(got bfloat16\)"):
        torch.ops.fastgpt.fused_adamw_([p], [p.bfloat16()], [m], [v], [s], *hyper)
