"""Shared test set-up: Triton's CPU interpreter when there is no GPU, and the local data folder.

``TRITON_INTERPRET`` must be set before any Triton kernel is defined, so it is set here, before
test modules import fastgpt's kernels.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fastgpt.__main__ import run

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


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
