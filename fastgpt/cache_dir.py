"""Where fastgpt keeps what it measured or built for this machine: ``$FASTGPT_CACHE_DIR``, by default
``~/.cache/fastgpt``, one folder per kind (``autotune``, ``dtype``, ``cuda-emu``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The folder for ``kind`` under the cache root (not created here)."""
    return Path(os.environ.get("FASTGPT_CACHE_DIR", Path.home() / ".cache" / "fastgpt")) / kind
