"""Bad input to the CLIs: one line ``error: ...`` on stderr, exit code 2, no traceback.

Most cases call ``fastgpt.__main__.run`` in-process (the same path ``python -m`` takes, without the
start-up cost); the tokenizer download and the generation prompt go through a real subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_run import tiny_args as _args

from fastgpt import generate as generate_mod
from fastgpt.checkpoint import resolve_checkpoint
from fastgpt.tokenizers import build_tokenizer
from fastgpt.train import cli as train_mod
from fastgpt.train.convert import main as convert_main

# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config", "/nonexistent/run.yaml"], "config file '/nonexistent/run.yaml' does not exist"),
        (["train.bogus=1"], "unknown config key train.bogus"),
        (["trian.max_iters=1"], "unknown config section 'trian'; did you mean train?"),
        (["train.max_iters=x"], "train.max_iters must be int, got 'x'"),
        (["optim.lr=[1, 2]"], "optim.lr must be float, got [1, 2]"),
        (["train.max_iters"], "must look like section.key=value"),
        (["train.max_iters=[1"], "override 'train.max_iters=[1': the value is not valid YAML"),
        (["optim.lr=.nan"], "optim.lr must be a finite number, got nan"),
        (["model.n_head=3"], "model.n_embd=16 must be divisible by model.n_head=3"),
        (["model.n_kv_head=3"], "model.n_head=2 must be divisible by model.n_kv_head=3"),
        (["model.n_layer=0"], "model.n_layer must be a positive integer, got 0"),
        (["model.pos_encoding=rope", "model.n_embd=18", "model.n_head=2"], "needs an even head dim"),
        (["train.parallel=zero3"], "train.parallel='zero3' is not one of ddp, fsdp"),
    ],
)
def test_config_errors(corpus: Path, tmp_path: Path, cli_error, extra: list[str], message: str) -> None:
    line = cli_error(train_mod.main, _args(corpus, tmp_path / "out", *extra))
    assert message in line


def test_unreadable_config_files(corpus: Path, tmp_path: Path, cli_error) -> None:
    args = _args(corpus, tmp_path / "out")
    assert "is a folder, not a file" in cli_error(train_mod.main, ["--config", str(tmp_path), *args])
    (tmp_path / "junk.yaml").write_bytes(b"\xff\xfe\x00garbage\x80")
    assert "is not UTF-8 text" in cli_error(train_mod.main, ["--config", str(tmp_path / "junk.yaml"), *args])
    (tmp_path / "list.yaml").write_text("- train\n- model\n")
    line = cli_error(train_mod.main, ["--config", str(tmp_path / "list.yaml"), *args])
    assert "must map section names to mappings, got list" in line
    (tmp_path / "typed.yaml").write_text("train:\n  log_interval: [1, 2]\n")
    line = cli_error(train_mod.main, ["--config", str(tmp_path / "typed.yaml"), *args])
    assert "train.log_interval must be int, got [1, 2]" in line


# --- data ---------------------------------------------------------------------------------


def test_dataset_errors(corpus: Path, tmp_path: Path, cli_error) -> None:
    out = tmp_path / "out"
    line = cli_error(train_mod.main, [*_args(corpus, out), f"data.dataset={tmp_path / 'missing.txt'}"])
    assert "missing.txt': no such file or folder" in line
    (tmp_path / "empty.txt").write_text("")
    line = cli_error(train_mod.main, [*_args(corpus, out), f"data.dataset={tmp_path / 'empty.txt'}"])
    assert "empty.txt' has no text" in line
    (tmp_path / "small.txt").write_text("to be or not")  # 13 tokens: 12 for training, block_size 16
    line = cli_error(train_mod.main, [*_args(corpus, out), f"data.dataset={tmp_path / 'small.txt'}"])
    assert "has 12 training tokens, fewer than block_size + 1 = 17" in line


def test_tokenizer_unavailable_offline(corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "empty_cache").mkdir()
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty_cache"),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "fastgpt.train", *_args(corpus, tmp_path / "out", "data.tokenizer=cl100k_base")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: tokenizer 'cl100k_base' needs its BPE file")


# --- checkpoints --------------------------------------------------------------------------


def test_missing_checkpoint(tmp_path: Path, cli_error) -> None:
    line = cli_error(generate_mod.main, ["--checkpoint", str(tmp_path / "nothing")])
    assert "does not exist" in line
    line = cli_error(generate_mod.main, ["--checkpoint", str(tmp_path)])
    assert "holds no checkpoint" in line


def test_corrupt_checkpoints(run_copy, corpus: Path, cli_error) -> None:
    out, ckpt = run_copy
    weights = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # a truncated write
    assert "unreadable weights" in cli_error(generate_mod.main, ["--checkpoint", str(out)])
    (ckpt / "model.safetensors").write_bytes(weights)

    (ckpt / "state.pt").write_bytes(os.urandom(300))
    resume = ["--resume", *_args(corpus, out, "train.max_iters=4")]
    assert "has an unreadable state.pt" in cli_error(train_mod.main, resume)
    torch.save({"iter": 2}, ckpt / "state.pt")  # readable, but not the layout training saves
    assert "has a state.pt this version cannot resume (KeyError: 'optimizer')" in cli_error(train_mod.main, resume)

    (ckpt / "config.yaml").write_text("model: [unclosed\n")
    assert "has no readable config.yaml" in cli_error(generate_mod.main, ["--checkpoint", str(out)])
    (ckpt / "config.yaml").write_text("train: {}\n")
    assert "config.yaml without a model section" in cli_error(generate_mod.main, ["--checkpoint", str(out)])


def test_corrupt_sharded_checkpoint(corpus: Path, tmp_path: Path, cli_error) -> None:
    out = tmp_path / "run"
    train_mod.main(_args(corpus, out, "train.parallel=fsdp"))  # one process: DCP shards all the same
    ckpt = resolve_checkpoint(out)
    (ckpt / "sharded" / ".metadata").write_bytes(b"\x80\x04garbage")
    line = cli_error(generate_mod.main, ["--checkpoint", str(out), "--allow_pickle"])
    assert "has unreadable shards or does not fit this model" in line
    resume = ["--resume", "--allow_pickle", *_args(corpus, out, "train.parallel=fsdp", "train.max_iters=4")]
    assert "has unreadable shards" in cli_error(train_mod.main, resume)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    line = cli_error(convert_main, ["--checkpoint", str(out), "--out", str(tmp_path / "taken")])
    assert "exists and is not empty" in line


def test_incompatible_checkpoints(run_copy, corpus: Path, cli_error) -> None:
    out, ckpt = run_copy
    resume = ["--resume", *_args(corpus, out, "train.max_iters=4", "model.n_embd=32")]
    line = cli_error(train_mod.main, resume)
    assert "model.n_embd cannot change when resuming (the run has 16, given 32)" in line

    (ckpt / "tokenizer_meta.json").unlink()
    build_tokenizer("byte").save(ckpt)  # 258 tokens for a model trained on ~20 characters
    line = cli_error(generate_mod.main, ["--checkpoint", str(out)])
    assert "its tokenizer (byte) has 258 tokens but the model only" in line
    from fastgpt.eval import evaluate as eval_mod

    assert "do not belong together" in cli_error(eval_mod.main, ["--checkpoint", str(out)])


def test_prompt_the_tokenizer_cannot_encode(trained: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fastgpt.generate", "--checkpoint", str(trained), "--prompt", "é", "--device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'é'" in lines[0]
