"""Shared test set-up: Triton's CPU interpreter and the CUDA emulator when there is no GPU, and the
local data folder.

Without a CUDA device, ``TRITON_INTERPRET=1`` (Triton kernels run in its CPU interpreter) and
``FASTGPT_CUDA_EMULATE=1`` (``backend="cuda"`` runs the csrc/ kernels built as host C++ on CPU
tensors) are set by default, here, before test modules import fastgpt's kernels (TRITON_INTERPRET
is read when triton is imported). Set either to 0 to test without it. Under the interpreter, the
session fixture ``triton_bf16`` makes it compute bf16 by value (tests/ops/triton_bf16.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from fastgpt.__main__ import run
from fastgpt.train import cli as train_cli

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny_run.py, for test modules in subfolders too
from tiny_run import CORPUS, tiny_args  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("FASTGPT_CUDA_EMULATE", "1")


SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _load_triton_bf16() -> ModuleType:
    """tests/ops/triton_bf16.py as a module (the suite imports in importlib mode: no packages here)."""
    if "triton_bf16" not in sys.modules:
        path = Path(__file__).parent / "ops" / "triton_bf16.py"
        spec = importlib.util.spec_from_file_location("triton_bf16", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["triton_bf16"] = module
        spec.loader.exec_module(module)
    return sys.modules["triton_bf16"]


@pytest.fixture(scope="session", autouse=True)
def triton_bf16() -> ModuleType | None:
    """Under the Triton interpreter, bf16 computed by value for the whole session (the test-only shim
    tests/ops/triton_bf16.py); the shim module, or None where Triton runs compiled or is absent."""
    from fastgpt.ops._backend import triton_interpreted, unavailable_reason

    if torch.cuda.is_available() or not triton_interpreted() or unavailable_reason("triton", torch.device("cpu")):
        return None
    shim = _load_triton_bf16()
    shim.activate()
    return shim


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data`` (tinyshakespeare.txt, tiktoken_cache/, ...); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"local data folder {SHARED_DATA.resolve()} is absent")
    return SHARED_DATA.resolve()


@pytest.fixture
def tiktoken_cache(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``TIKTOKEN_CACHE_DIR`` at the shared cache for this test; skips when absent."""
    cache = shared_data / "tiktoken_cache"
    if not cache.is_dir():
        pytest.skip(f"tiktoken cache {cache} is absent")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest):
    """A real tmpfs of 2 MiB, or of the size the test parametrizes it with indirectly (root only;
    skipped elsewhere): a disk that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    size = getattr(request, "param", "2m")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()[:100]}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def cli_error(capsys: pytest.CaptureFixture) -> Callable[[Callable, list[str]], str]:
    """``cli_error(main, argv)``: run ``main`` as ``fastgpt.__main__.run`` would, check that it printed one
    ``error: ...`` line (no traceback) and exited 2, and return that line."""

    def check(main: Callable, argv: list[str]) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            run(main, argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert stop.value.code == 2, err
        assert "Traceback" not in err and lines[-1].startswith("error: ")
        assert sum(line.startswith("error:") for line in lines) == 1
        return lines[-1]

    return check


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short text file (``tests/tiny_run.py``) in a folder of this test module's own."""
    path = tmp_path_factory.mktemp("tiny") / "corpus.txt"
    path.write_text(CORPUS)
    return path


@pytest.fixture(scope="module")
def trained(corpus: Path) -> Path:
    """A run's out_dir after the tiny run's 2 steps (char tokenizer); copy it before changing it."""
    out = corpus.parent / "trained"
    train_cli.main(tiny_args(corpus, out))
    return out


@pytest.fixture
def run_copy(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the trained run for one test to spoil: (its out_dir, its latest checkpoint folder)."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out, out / (out / "latest").read_text().strip()

