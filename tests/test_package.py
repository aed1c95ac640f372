"""The package itself: light imports, no extension needed, info, the CUDA build switches."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def _run(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def test_import_does_not_pull_heavy_optional_packages() -> None:
    proc = _run("import sys, fastgpt, fastgpt.train, fastgpt.generate\n"
                "print(sorted(m for m in ('datasets', 'transformers', 'wandb') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_gpt2_parameter_count_one_liner() -> None:
    proc = _run("import fastgpt; print(fastgpt.GPT.from_preset('gpt2').num_params())")
    assert proc.stdout.strip() == "124439808", proc.stderr


def test_info_names_every_backend() -> None:
    proc = subprocess.run([sys.executable, "-m", "fastgpt.info"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from fastgpt.ops._backend import available_backends

    device = re.search(r"^op backends on (\S+) ", proc.stdout, re.M).group(1)
    states = dict(re.findall(r"^  (\w+) +(available|unavailable: .+)$", proc.stdout, re.M))
    want = {name: "available" if reason is None else f"unavailable: {reason}"
            for name, reason in available_backends(device).items()}
    assert states == want, proc.stdout
    assert states["torch"] == "available"


_CPU_FALLBACKS = """
import pytest, torch
from fastgpt.ops import BackendUnavailable, available_backends, flash_attention, reference, resolve_backend
reasons = available_backends("cpu")
assert reasons["torch"] is None and "CUDA device" in reasons["cuda"], reasons
q, k, v = torch.randn(3, 1, 2, 5, 8).unbind(0)
assert resolve_backend("auto", "flash_attention", q.device, q, k, v, True, None) == "torch"
want = reference.flash_attention(q.double(), k.double(), v.double(), True).float()
torch.testing.assert_close(flash_attention(q, k, v, backend="auto"), want)
with pytest.raises(BackendUnavailable, match="backend 'cuda' is unavailable"):
    flash_attention(q, k, v, backend="cuda")
with pytest.raises(ValueError, match="unknown backend 'tpu'"):
    flash_attention(q, k, v, backend="tpu")
print("ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallbacks")
def test_cpu_fallbacks_and_explicit_backend_errors() -> None:
    """What a user without a GPU gets: in a fresh process without the test suite's CUDA emulation."""
    env = {k: v for k, v in os.environ.items() if k != "FASTGPT_CUDA_EMULATE"}
    proc = _run(_CPU_FALLBACKS, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_forced_cuda_build_fails_loudly_without_cuda_torch(tmp_path) -> None:
    if torch.version.cuda is not None:
        pytest.skip("this torch is a CUDA build: the forced build could succeed")
    import os
    from pathlib import Path

    root = Path(__file__).parents[1]
    env = {**os.environ, "FASTGPT_FORCE_CUDA_BUILD": "1"}
    proc = subprocess.run([sys.executable, "setup.py", "--name"], cwd=root, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode != 0 and "FASTGPT_FORCE_CUDA_BUILD=1" in proc.stderr
    proc = subprocess.run([sys.executable, "setup.py", "--name"], cwd=root, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "FASTGPT_SKIP_CUDA_BUILD": "1"})
    assert proc.returncode == 0 and "skipping the CUDA extension" in proc.stderr


def test_make_train_installs_no_triton_and_no_extras() -> None:
    """The training install is what training uses: triton (~1 GB, useless without a GPU but for the
    tests' interpreter) comes with the dev extras; numpy is installed with torch, before setup.py
    imports torch (else torch warns "Failed to initialize NumPy")."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("triton")]
    assert [d for d in project["optional-dependencies"]["dev"] if d.startswith("triton")]
    make = (root / "Makefile").read_text()
    run_stamp = re.search(r"^\$\(RUN_STAMP\):.*?\n\n", make, re.M | re.S).group(0)  # its rule, to a blank line
    assert "--no-build-isolation -e .\n" in run_stamp  # fastgpt without [extras]
    assert '"$(TORCH)" numpy' in run_stamp
    assert "train: $(RUN_STAMP)" in make and "test: $(STAMP)" in make and "$(STAMP): $(RUN_STAMP)" in make
