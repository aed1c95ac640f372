"""Shared test set-up: Triton's CPU interpreter when there is no GPU, and the local data folder.

``TRITON_INTERPRET`` must be set before any Triton kernel is defined, so it is set here, before
test modules import fastgpt's kernels.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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
