"""Checkpoint layout: pointers, pruning, round trip, and clear errors for bad folders."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from fastgpt import GPT, GPTConfig
from fastgpt.checkpoint import CheckpointError, load, resolve_checkpoint
from fastgpt.tokenizers import build_tokenizer
from fastgpt.train.checkpoint import load_state, save_checkpoint

CFG = GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=8)


def _save(out: Path, step: int, best: bool = False, cfg: GPTConfig = CFG, keep: int = 1) -> GPT:
    torch.manual_seed(step)
    model = GPT(cfg)
    tok = build_tokenizer("char", ["abcdefghijklmnopqrstuvwxyz."])
    save_checkpoint(out, step, model, tok, {"model": dataclasses.asdict(cfg)}, {"iter": step}, best=best, keep=keep)
    return model


def test_latest_and_best_pointers_and_pruning(tmp_path: Path) -> None:
    _save(tmp_path, 1)  # the first is also best
    _save(tmp_path, 2)
    best = _save(tmp_path, 3, best=True)
    latest = _save(tmp_path, 4)
    assert resolve_checkpoint(tmp_path).name == "ckpt-000004"
    assert resolve_checkpoint(tmp_path, "best").name == "ckpt-000003"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["ckpt-000003", "ckpt-000004"]
    assert load_state(resolve_checkpoint(tmp_path))["iter"] == 4
    for which, ref in (("best", best), ("latest", latest)):
        model, tok = load(tmp_path, which=which)
        x = torch.tensor([tok.encode("abc")])
        torch.testing.assert_close(model(x)[0], ref.eval()(x)[0], rtol=0, atol=0)


def test_keep_the_n_newest_and_the_best(tmp_path: Path) -> None:
    for step in range(1, 6):
        _save(tmp_path, step, best=step == 2, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["ckpt-000002", "ckpt-000004", "ckpt-000005"]
    assert resolve_checkpoint(tmp_path, "best").name == "ckpt-000002"
    _save(tmp_path, 6, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [f"ckpt-00000{i}" for i in (2, 4, 5, 6)]
    (tmp_path / "latest").write_text("ckpt-000002\n")  # resumed from 2: 4, 5 and 6 belong to the branch given up
    _save(tmp_path, 3, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["ckpt-000002", "ckpt-000003"]


def test_tied_weights_stay_tied(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    model, _ = load(tmp_path)
    assert model.lm_head.weight is model.wte.weight


def test_bad_folders_raise_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load(tmp_path)
    _save(tmp_path, 1)
    ckpt = resolve_checkpoint(tmp_path)
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable weights"):
        load(tmp_path)
    _save(tmp_path, 2, cfg=dataclasses.replace(CFG, n_embd=12, n_head=2))
    # weights of a d=12 model under a config that says d=8
    (resolve_checkpoint(tmp_path) / "config.yaml").write_text(yaml.safe_dump({"model": dataclasses.asdict(CFG)}))
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load(tmp_path, which="latest")
    assert issubclass(CheckpointError, ValueError)  # the CLIs report it as one line, exit 2
