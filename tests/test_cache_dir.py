"""What fastgpt measured for this machine (op choices, dtype choices) is kept under
``$FASTGPT_CACHE_DIR``; a cache that cannot be written is a lost shortcut, never a failed run."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fastgpt.cache_dir import cache_dir, write_cache_file
from fastgpt.ops import _autotune_cache


def _fill(disk: Path) -> None:
    try:
        with open(disk / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 65536)
    except OSError:  # full
        pass


def test_a_full_disk_leaves_no_temporary_file_and_the_old_cache_whole(small_disk: Path) -> None:
    file = small_disk / "dtype" / "choice.json"
    assert write_cache_file(file, '{"old": 1}')
    _fill(small_disk)
    assert not write_cache_file(file, json.dumps({"new": "x" * 200_000}))
    assert json.loads(file.read_text()) == {"old": 1}
    assert sorted(p.name for p in file.parent.iterdir()) == ["choice.json"]
    assert not write_cache_file(small_disk / "autotune" / "new.json", "{}")


def test_autotune_keeps_its_choice_in_memory_when_the_file_cannot_be_written(small_disk: Path, monkeypatch) -> None:
    monkeypatch.delenv("FASTGPT_CUDA_EMULATE", raising=False)  # its stamp would build the emulator there first
    monkeypatch.setenv("FASTGPT_CACHE_DIR", str(small_disk))
    _fill(small_disk)
    cpu = torch.device("cpu")
    _autotune_cache.forget()
    try:
        record = {"backend": "torch", "ms": {"torch": 1.0}, "rejected": {}}
        _autotune_cache.store(cpu, "a key", record)  # raised OSError before
        assert _autotune_cache.lookup(cpu, "a key") == record
        assert list(cache_dir("autotune").iterdir()) == []  # no file, no temporary file
    finally:
        _autotune_cache.forget()
