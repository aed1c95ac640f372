"""A folder setting that cannot be made or written is one error naming the setting, not raw errno text."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastgpt import run_dir
from fastgpt.data import DataConfig, prepare_data
from fastgpt.run_dir import RunLock


def test_cache_dir_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("some text")
    (tmp_path / "afile").write_text("")
    cfg = DataConfig(dataset=str(tmp_path / "c.txt"), cache_dir=str(tmp_path / "afile" / "sub"))
    with pytest.raises(ValueError, match=r"^data.cache_dir='.*afile/sub': not a directory \("):
        prepare_data(cfg, progress=False)


def test_out_dir_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(path, *args):  # the tests run as root, for whom no folder is read-only
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(run_dir.os, "open", denied)
    with pytest.raises(ValueError, match=r"^train.out_dir='.*/x': permission denied \(.*/x/.lock\)$"):
        RunLock(tmp_path / "x").acquire()


def test_train_cli_out_dir_under_a_file_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("hello world " * 50)
    (tmp_path / "afile").write_text("")
    proc = subprocess.run([sys.executable, "-m", "fastgpt.train", f"data.dataset={tmp_path / 'c.txt'}",
                           f"data.cache_dir={tmp_path / 'cache'}", f"train.out_dir={tmp_path / 'afile' / 'run'}",
                           "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16"],
                          capture_output=True, text=True, timeout=300)
    out_dir = tmp_path / "afile" / "run"
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: train.out_dir='{out_dir}': not a directory"
