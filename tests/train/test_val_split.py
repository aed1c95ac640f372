"""A validation split shorter than block_size + 1 is still scored; one too small to score is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_run import tiny

from fastgpt.data import DataConfig, prepare_data
from fastgpt.train import cli as train_mod

TINY = tiny("model.block_size=32", "train.eval_iters=2", "train.eval_interval=1",
            drop=("train.device", "optim.warmup_iters"))


def _prepare(tmp_path: Path, text: str, val_fraction: float):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "c.txt").write_text(text)
    cfg = DataConfig(dataset=str(tmp_path / "c.txt"), cache_dir=str(tmp_path / "cache"), val_fraction=val_fraction)
    return prepare_data(cfg, progress=False)


def test_eval_block_size(tmp_path):
    data = _prepare(tmp_path, "abcdefghij" * 30, val_fraction=0.05)  # 301 tokens: 15 val
    assert data.val_count == 15
    assert data.eval_block_size("train", 32) == 32 and data.eval_block_size("val", 32) == 14
    assert data.eval_block_size("val", 8) == 8
    none = _prepare(tmp_path / "n", "abcdefghij" * 30, val_fraction=0)
    assert none.eval_block_size("val", 32) is None
    one = _prepare(tmp_path / "o", "abcdefghij" * 3, val_fraction=0.05)  # 31 tokens: 1 val
    with pytest.raises(ValueError, match=r"data.val_fraction=0.05 leaves 1 val token\(s\) of 31, too few"):
        one.eval_block_size("val", 32)


def test_short_validation_split_still_gives_val_loss(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("the king and queen walk by night. " * 20)  # 681 tokens: 20 val
    train_mod.main([*TINY, f"data.dataset={tmp_path / 'c.txt'}", f"data.cache_dir={tmp_path / 'cache'}",
                    "data.val_fraction=0.03", f"train.out_dir={tmp_path / 'out'}"])
    events = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in events if "val_loss" in e] == [0, 1, 2]
    assert "val_loss: the validation split has 20 tokens: windows of 19" in capsys.readouterr().err
