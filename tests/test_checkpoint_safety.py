"""A checkpoint of DCP shards only (their ``.metadata`` is a pickle) is read by no CLI without
``--allow_pickle``, and a ``sharded/`` symlink out of the checkpoint is refused even with it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from malicious import plant_pickle
from tiny_run import tiny_args


@pytest.fixture
def shards_only(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    ckpt = out / (out / "latest").read_text().strip()
    (ckpt / "model.safetensors").unlink()
    return out, ckpt


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)


def test_convert_and_resume_run_no_pickle(shards_only, corpus: Path, tmp_path: Path) -> None:
    out, ckpt = shards_only
    marker = tmp_path / "ran"
    plant_pickle(ckpt / "sharded" / ".metadata", marker)
    for args in (("fastgpt", "convert", "--checkpoint", str(out), "--out", str(tmp_path / "x")),
                 ("fastgpt.train", "--resume", *tiny_args(corpus, out, "train.max_iters=4"))):
        proc = _cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "--allow_pickle" in proc.stderr.strip().splitlines()[-1]
        assert not marker.exists()


def test_sharded_symlink_out_is_refused(shards_only, tmp_path: Path) -> None:
    out, ckpt = shards_only
    marker = tmp_path / "ran"
    plant_pickle(tmp_path / "elsewhere" / ".metadata", marker)
    (ckpt / "sharded").symlink_to(tmp_path / "elsewhere")
    proc = _cli("fastgpt", "convert", "--checkpoint", str(out), "--out", str(tmp_path / "x"), "--allow_pickle")
    assert proc.returncode == 2 and "symlink" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    assert not marker.exists()
