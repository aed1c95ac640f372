"""Where fastgpt keeps what it measured or built for this machine: ``$FASTGPT_CACHE_DIR``, by default
``~/.cache/fastgpt``, one folder per kind (``autotune``, ``dtype``, ``cuda-emu``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The folder for ``kind`` under the cache root (not created here)."""
    return Path(os.environ.get("FASTGPT_CACHE_DIR", Path.home() / ".cache" / "fastgpt")) / kind


def write_cache_file(file: Path, text: str) -> bool:
    """Replace ``file`` with ``text`` atomically (a temporary file beside it, renamed over it), creating
    its folder. A cache that cannot be written (a full disk, a read-only home) is only a lost shortcut:
    False, and no temporary file is left behind."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    except OSError:
        return False
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, file)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        return False
    return True
