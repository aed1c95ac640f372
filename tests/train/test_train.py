"""The training CLI end to end: losses fall, checkpoints, exact resume, signals, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_run import SMALL, tiny, train_interrupted, word_corpus

import fastgpt
from fastgpt.checkpoint import resolve_checkpoint
from fastgpt.generate import generate
from fastgpt.optim import FusedAdamW
from fastgpt.train import cli as train_mod

TINY = tiny(*SMALL, "train.batch_size=4", "train.eval_iters=2", "train.log_interval=1", "optim.warmup_iters=2",
            "optim.lr=0.01", drop=("train.device", "train.max_iters"))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return word_corpus(tmp_path, 600)


def _args(tmp_path: Path, corpus: Path, *extra: str) -> list[str]:
    return [
        *TINY,
        f"data.dataset={corpus}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"train.out_dir={tmp_path / 'out'}",
        *extra,
    ]


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_learns_saves_and_loads(tmp_path: Path, corpus: Path) -> None:
    train_mod.main(_args(tmp_path, corpus, "train.max_iters=40", "train.eval_interval=20"))
    out = tmp_path / "out"
    events = _events(out)
    vals = [e["val_loss"] for e in events if "val_loss" in e]
    assert [e["iter"] for e in events if "val_loss" in e] == [0, 20, 40]
    assert vals[-1] < vals[0] - 1.0  # a repetitive corpus is easy to learn
    train = [e for e in events if "train_loss" in e and "val_loss" not in e]
    assert len(train) == 40 and all({"lr", "tokens_per_s", "world_size"} <= e.keys() for e in train)
    assert (out / "loss.png").stat().st_size > 1000 and (out / "config.yaml").exists()
    assert resolve_checkpoint(out).name == "ckpt-000040"
    model, tok = fastgpt.load(out)
    text = tok.decode(list(generate(model, tok.encode("the "), 30, greedy=True)))
    assert len(text) >= 30 and set(text) <= set(corpus.read_text()) | {"\n"}
    train_mod.main(_args(tmp_path, corpus, "train.max_iters=4", "train.eval_interval=2", "train.overwrite=true"))
    assert [e["iter"] for e in _events(out) if "val_loss" in e] == [0, 2, 4]  # a fresh run, a fresh log
    assert resolve_checkpoint(out, "best").name in ("ckpt-000002", "ckpt-000004")  # not the old run's


def test_resume_continues_exactly(tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = _args(tmp_path, corpus, "train.max_iters=16", "train.eval_interval=8", "model.dropout=0.1")
    train_mod.main(args)
    straight = _events(tmp_path / "out")
    (tmp_path / "out").rename(tmp_path / "straight")

    train_interrupted(monkeypatch, args, 6)
    assert resolve_checkpoint(tmp_path / "out").name == "ckpt-000006"
    train_mod.main(["--resume", *args])
    keys = ("iter", "train_loss", "val_loss", "lr")
    resumed = [{k: e[k] for k in keys if k in e} for e in _events(tmp_path / "out")]
    assert resumed == [{k: e[k] for k in keys if k in e} for e in straight]  # bit-identical losses


def test_sigterm_saves_and_exits_cleanly(tmp_path: Path, corpus: Path) -> None:
    args = _args(tmp_path, corpus, "train.max_iters=100000", "train.eval_interval=100000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastgpt.train", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    for line in proc.stderr:
        if line.startswith("iter 0:"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert (resolve_checkpoint(tmp_path / "out") / "state.pt").exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["train.max_iters=x"], "train.max_iters must be int"),
        (["train.bogus=1"], "unknown config key train.bogus"),
        (["model.block_size=100000"], "fewer than block_size + 1"),
        (["--config", "/nonexistent.yaml"], "does not exist"),
        (["model.n_head=3"], "model.n_embd=32 must be divisible by model.n_head=3"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path: Path, corpus: Path, extra: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fastgpt.train", *_args(tmp_path, corpus), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_resume_without_checkpoint_fails_clearly(tmp_path: Path, corpus: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fastgpt.train", "--resume", *_args(tmp_path, corpus)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name,expected", [("adamw", "torch fused"), ("fused_adamw", "FusedAdamW")])
def test_optimizer_choice_on_cpu(tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                 expected: str) -> None:
    # without our kernels, optim.name=adamw takes torch's fused step (CPU and CUDA both have one);
    # the suite runs Triton's interpreter on CPU, which would count as a kernel backend here
    import fastgpt.ops

    monkeypatch.setattr(fastgpt.ops, "available_backends", lambda device: {"cuda": "absent", "triton": "absent",
                                                                            "torch": None})
    seen = {}
    monkeypatch.setattr(train_mod.Trainer, "run", lambda self: seen.update(opt=self.optimizer))
    train_mod.main(_args(tmp_path, corpus, "train.max_iters=1", f"optim.name={name}"))
    opt = seen["opt"]
    if expected == "FusedAdamW":
        assert type(opt) is FusedAdamW
    else:
        assert type(opt) is torch.optim.AdamW and all(g["fused"] for g in opt.param_groups)


def test_the_vocabulary_the_tokenizer_sets_is_logged(tmp_path: Path, corpus: Path, capsys) -> None:
    train_mod.main(_args(tmp_path, corpus, "train.max_iters=1", "train.eval_interval=1", "model.vocab_size=999"))
    err = capsys.readouterr().err
    saved = fastgpt.load(tmp_path / "out")[0].config.vocab_size
    assert saved < 999 and f"model.vocab_size=999 set to {saved}, the vocabulary of data.tokenizer='char'" in err
    assert err.count("ops (auto): ") == 1, err  # the backends auto runs, logged once


def test_recipe_flag_picks_the_built_in_recipe(tmp_path: Path, corpus: Path, monkeypatch, cli_error) -> None:
    from fastgpt.train import recipes

    seen = {}
    monkeypatch.setattr(train_mod.Trainer, "run", lambda self: seen.update(cfg=self.cfg))
    data = [f"data.dataset={corpus}", f"data.cache_dir={tmp_path / 'cache'}", f"train.out_dir={tmp_path / 'out'}",
            "train.device=cpu", "train.dtype=float32"]
    train_mod.main(["--recipe", "gpu", *data])
    assert seen["cfg"].train.batch_size == recipes.GPU["train"]["batch_size"] != recipes.CPU["train"]["batch_size"]
    assert (seen["cfg"].model.n_layer, seen["cfg"].model.n_embd) == (6, 384)  # the shakespeare-char preset
    train_mod.main(["--recipe", "cpu", *data])
    assert (seen["cfg"].model.n_layer, seen["cfg"].train.batch_size) == (4, recipes.CPU["train"]["batch_size"])
    config = tmp_path / "run.yaml"
    config.write_text("train: {max_iters: 3}\n")
    assert "not both" in cli_error(train_mod.main, ["--config", str(config), "--recipe", "cpu", *data])
