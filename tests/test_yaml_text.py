"""YAML that fastgpt reads (--config files, overrides, a checkpoint's config.yaml): a FIFO, /dev/zero, an
alias bomb, deep nesting and huge values are one ``error:`` line and exit 2, quickly (real files, a real
FIFO, real processes under a timeout)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastgpt
from fastgpt.config import load_config

TIMEOUT = 60  # seconds; each of these takes about one
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))  # 9**9 items


def _error(*argv: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(Path(fastgpt.__file__).parents[1])}
    try:
        done = subprocess.run([sys.executable, "-m", "fastgpt", "train", "--print-config", *argv], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"train --print-config {' '.join(argv)[:100]} ran past {TIMEOUT} s")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) < 300, done.stderr[-2000:]
    return lines[0]


def test_a_config_that_is_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")  # opening it for reading would block until a writer came
    assert "is not a regular file" in _error("--config", str(tmp_path / "fifo"), cwd=tmp_path)
    assert "is not a regular file" in _error("--config", "/dev/zero", cwd=tmp_path)
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 200_000)
    assert "is larger than 1 MB" in _error("--config", str(big), cwd=tmp_path)


def test_an_alias_bomb_and_deep_nesting(tmp_path: Path) -> None:
    (tmp_path / "bomb.yaml").write_text(BOMB)
    assert "aliases (*name) are not read" in _error("--config", "bomb.yaml", cwd=tmp_path)
    (tmp_path / "deep.yaml").write_text("train:\n  max_iters: " + "[" * 1000 + "\n")
    assert "nested more than 50 levels deep" in _error("--config", "deep.yaml", cwd=tmp_path)
    line = _error("train.max_iters=" + "[" * 100_000, cwd=tmp_path)  # the value is cut in the message
    assert "nested more than 50 levels deep" in line and "(100,016 chars)" in line


def test_plain_configs_still_read(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text("train:\n  max_iters: 7\n  freeze: [blocks.0.*, wte.*]\noptim:\n  lr: 3.0e-4\n")
    cfg = load_config(tmp_path / "ok.yaml", ["train.batch_size=3", "data.dataset=[a.txt, b.txt]"])
    assert (cfg.train.max_iters, cfg.train.freeze, cfg.optim.lr) == (7, ["blocks.0.*", "wte.*"], 3e-4)
    assert (cfg.train.batch_size, cfg.data.dataset) == (3, ["a.txt", "b.txt"])
