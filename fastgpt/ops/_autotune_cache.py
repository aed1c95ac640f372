"""``auto``'s remembered choices: in memory, and in one small JSON file per software stack.

The file is ``$FASTGPT_CACHE_DIR/autotune/<stamp hash>.json`` (default ``~/.cache/fastgpt``), the
stamp being (device name, torch, triton, fastgpt, extension build): other versions never read
each other's choices. It is written atomically (a temporary file, then ``os.replace``) and is only
ever parsed as JSON (never unpickled or executed) and validated: a file over :data:`MAX_BYTES`, not
JSON or not of the expected shape is ignored with a warning, an entry that is not a well-formed
record is dropped.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import math
import warnings
from pathlib import Path

import torch

from fastgpt.cache_dir import cache_dir, write_cache_file
from fastgpt.device import device_name
from fastgpt.ops._backend import BACKENDS, cuda_emulated, unavailable_reason

MAX_BYTES = 1 << 20
"""Larger files are ignored unread (a few hundred shape classes take a few tens of KB)."""

_MEMORY: dict[str, dict[str, dict]] = {}  # device name -> key -> record


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _extension_build(device: torch.device) -> str:
    """Which build of the CUDA extension ``cuda`` runs here: the library's path, size and mtime.

    The emulated build's library is named by the hash of its objects, so its name suffices."""
    if unavailable_reason("cuda", device) is not None:
        return "none"
    if cuda_emulated():
        from fastgpt.ops.cuda import emulated_build

        path = emulated_build.loaded_library()  # loaded by the availability check above
        return "emulated:" + (path.name if path is not None else "not loaded")
    path = Path(importlib.util.find_spec("fastgpt._C").origin)
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def stamp(device: torch.device) -> dict[str, str]:
    """What the choices for ``device`` depend on."""
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "fastgpt": _version("fastgpt"),
        "extension": _extension_build(device),
    }


def path(device: torch.device) -> Path:
    """The cache file for ``device`` and this software stack."""
    digest = hashlib.sha256(json.dumps(stamp(device), sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir("autotune") / f"{digest}.json"


def _milliseconds(t: object) -> bool:
    return isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and t >= 0


def valid_record(record: object) -> bool:
    """A record is {"backend": name, "ms": {name: finite ms >= 0}, "rejected": {name: text}}."""
    if not isinstance(record, dict) or set(record) != {"backend", "ms", "rejected"}:
        return False
    ms, rejected = record["ms"], record["rejected"]
    return (
        isinstance(record["backend"], str)
        and record["backend"] in BACKENDS
        and isinstance(ms, dict)
        and all(b in BACKENDS and _milliseconds(t) for b, t in ms.items())
        and record["backend"] in ms
        and isinstance(rejected, dict)
        and all(b in BACKENDS and isinstance(e, str) for b, e in rejected.items())
    )


def _read(file: Path, expected: dict[str, str]) -> dict[str, dict]:
    try:
        size = file.stat().st_size
        if size > MAX_BYTES:
            warnings.warn(f"fastgpt auto: ignoring choices file {file}: {size} bytes, over {MAX_BYTES}",
                          RuntimeWarning, stacklevel=3)
            return {}
        data = json.loads(file.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        warnings.warn(f"fastgpt auto: ignoring unreadable choices file {file}: {exc}", RuntimeWarning, stacklevel=3)
        return {}
    if not isinstance(data, dict) or data.get("stamp") != expected or not isinstance(data.get("choices"), dict):
        warnings.warn(f"fastgpt auto: ignoring malformed choices file {file}", RuntimeWarning, stacklevel=3)
        return {}
    return {k: r for k, r in data["choices"].items() if isinstance(k, str) and valid_record(r)}


def _table(device: torch.device) -> dict[str, dict]:
    name = device_name(device)
    if name not in _MEMORY:
        _MEMORY[name] = _read(path(device), stamp(device))
    return _MEMORY[name]


def lookup(device: torch.device, key: str) -> dict | None:
    """The remembered record for ``key`` on ``device`` (from this process or the file), or None."""
    return _table(device).get(key)


def remember(device: torch.device, key: str, record: dict) -> None:
    """Remember ``record`` in this process only (a choice received from another rank)."""
    if valid_record(record):
        _MEMORY.setdefault(device_name(device), {})[key] = record


def store(device: torch.device, key: str, record: dict) -> None:
    """Remember ``record`` and merge it into the file, written atomically; a file that cannot be
    written (a full disk, a read-only cache folder) leaves the record in memory only."""
    table = _table(device)
    table[key] = record
    file, expected = path(device), stamp(device)
    merged = _read(file, expected) | table
    write_cache_file(file, json.dumps({"stamp": expected, "choices": merged}, indent=1, sort_keys=True))


def records() -> dict[str, dict]:
    """Every record this process knows, read from the files of the devices used so far."""
    return {key: record for table in _MEMORY.values() for key, record in table.items()}


def forget() -> None:
    """Drop every record held in memory (the files stay and are read again when next needed)."""
    _MEMORY.clear()


def load(device: torch.device) -> None:
    """Read ``device``'s file into memory, if not done yet."""
    _table(device)
