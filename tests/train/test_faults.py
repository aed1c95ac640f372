"""Faults lose nothing: kill -9 during a save, a full disk, SIGINT, NaN losses, out of memory."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_run import tiny, word_corpus

from fastgpt.checkpoint import load, resolve_checkpoint
from fastgpt.model import GPT
from fastgpt.run_dir import CKPT_NAME, RECORD
from fastgpt.train import checkpoint
from fastgpt.train import cli as train_mod
from fastgpt.train.checkpoint import load_state

TINY = tiny("train.batch_size=4", "train.log_interval=1", "optim.lr=0.01", drop=("train.max_iters",))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return word_corpus(tmp_path_factory.mktemp("faults"))


def _args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.dataset={corpus}", f"data.cache_dir={corpus.parent / 'cache'}", f"train.out_dir={out}",
            *extra]  # fmt: skip


def _curve(out: Path) -> list[dict]:
    """The logged losses and learning rates (no timings)."""
    keys = ("iter", "train_loss", "val_loss", "lr", "skipped")
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: e[k] for k in keys if k in e} for e in events]


def _leftovers(out: Path, mine: tuple[str, ...] = ()) -> list[str]:
    """What interrupted saves left: temporary folders and pointer files, unnamed checkpoints (not the
    run's record of its checkpoints, nor the user's own files ``mine``)."""
    named = {(out / p).read_text().strip() for p in ("latest", "best")}
    return sorted(p.name for p in out.iterdir() if p.name not in (RECORD, *mine) and (
        p.name.startswith(".") or p.name.startswith("ckpt-") and p.name not in named))  # fmt: skip


SAVE_EVERY_2 = ("train.max_iters=6", "train.ckpt_interval=2", "train.eval_interval=100")


@pytest.fixture(scope="module")
def straight(corpus: Path) -> list[dict]:
    """The curve of an uninterrupted run that saves at 2, 4 and 6."""
    out = corpus.parent / "straight"
    train_mod.main(_args(corpus, out, *SAVE_EVERY_2))
    return _curve(out)


# --- kill -9 during a save ----------------------------------------------------------------

KILLER = """
import os, signal, sys
from pathlib import Path
from fastgpt.train import checkpoint
from fastgpt import run_dir
from fastgpt.train import cli as train
from fastgpt.__main__ import run

saves = 0
save_checkpoint = checkpoint.save_checkpoint

def counting(*args, **kwargs):
    global saves
    saves += 1
    return save_checkpoint(*args, **kwargs)

def die_in_second_save(original, condition=lambda *a: True):
    def wrapper(*args, **kwargs):
        if saves == 2 and condition(*args):
            if original is checkpoint.torch.save:
                Path(args[1]).write_bytes(b"half a state.pt")
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    return wrapper

checkpoint.save_checkpoint = counting
point = sys.argv.pop(1)
if point == "writing":  # the temporary folder holds weights, config, tokenizer and half the state
    checkpoint.torch.save = die_in_second_save(checkpoint.torch.save)
elif point == "renamed":  # ckpt-000004 is in place, the pointers still name ckpt-000002
    run_dir.write_pointer = die_in_second_save(run_dir.write_pointer)
elif point == "pointer":  # latest's new text is in a temporary file, not yet renamed over latest
    checkpoint.os.replace = die_in_second_save(os.replace, lambda src, dst: Path(dst).name == "latest")
elif point == "pruning":  # the pointers name ckpt-000004, ckpt-000002 is not deleted yet
    run_dir.prune = die_in_second_save(run_dir.prune)
run(train.main)
"""


@pytest.mark.parametrize("point, survivor", [("writing", 2), ("renamed", 2), ("pointer", 2), ("pruning", 4)])
def test_kill_9_during_a_save_keeps_a_checkpoint(
    corpus: Path, tmp_path: Path, straight: list[dict], point: str, survivor: int
) -> None:
    (tmp_path / "killer.py").write_text(KILLER)
    out = tmp_path / "out"
    args = _args(corpus, out, *SAVE_EVERY_2)
    proc = subprocess.run([sys.executable, str(tmp_path / "killer.py"), point, *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert resolve_checkpoint(out).name == f"ckpt-{survivor:06d}"
    load(out, which="latest")
    assert load_state(resolve_checkpoint(out))["iter"] == survivor
    if point != "pruning":  # (there, best still names ckpt-000002: nothing is debris)
        assert _leftovers(out)  # the debris of the interrupted save ...

    train_mod.main(["--resume", *args])
    assert resolve_checkpoint(out).name == "ckpt-000006"
    assert _leftovers(out) == []  # ... is cleaned up by the next save
    assert _curve(out) == straight  # and the run went on as if nothing happened


# --- pruning -------------------------------------------------------------------------------

# the user's: names like the run's, but not the exact ones it writes (and a file like its temporary ones)
MINE = ("ckpt-backup", "ckpt-000030-keep", ".ckpt-mine", ".best-runs.txt")


def _ckpts(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if CKPT_NAME.fullmatch(p.name)}


def test_pruning_deletes_the_runs_stale_checkpoints_and_nothing_of_the_users(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in MINE:
        (out / name).mkdir() if name.startswith(("ckpt", ".ckpt")) else (out / name).write_text("my notes\n")
        if (out / name).is_dir():
            (out / name / "notes.txt").write_text("mine\n")
    args = _args(corpus, out, "train.max_iters=6", "train.ckpt_interval=2", "train.eval_interval=100")
    train_mod.main([*args, "train.keep_checkpoints=3"])  # a new run: saves 2, 4 and 6, keeps them all
    assert _ckpts(out) == {"ckpt-000002", "ckpt-000004", "ckpt-000006"}
    assert all((out / name).exists() for name in MINE)

    (out / "ckpt-000099").mkdir()  # the exact name, but never saved by the run
    (out / "ckpt-000099" / "notes.txt").write_text("mine\n")
    train_mod.main(["--resume", *args, "train.max_iters=8", "train.keep_checkpoints=1"])
    kept = {resolve_checkpoint(out).name, resolve_checkpoint(out, "best").name}
    assert resolve_checkpoint(out).name == "ckpt-000008"
    assert _ckpts(out) == kept | {"ckpt-000099"}  # 4, and 2 or 6 unless best: pruned
    assert not (out / "ckpt-000004").exists()
    assert all((out / name).exists() for name in MINE) and (out / "ckpt-000099" / "notes.txt").is_file()
    assert _leftovers(out, (*MINE, "ckpt-000099")) == []
    assert set((out / RECORD).read_text().split()) == kept  # what is left of the run's own


def test_full_disk_fails_the_save_and_keeps_the_previous_checkpoint(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli_error
) -> None:
    out = tmp_path / "out"
    calls, save_model = [], checkpoint.save_model

    def full_on_second_save(model: torch.nn.Module, filename: str) -> None:
        calls.append(filename)
        if len(calls) == 2:
            Path(filename).write_bytes(b"\0" * 64)  # what fitted before the disk filled up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        save_model(model, filename)

    monkeypatch.setattr(checkpoint, "save_model", full_on_second_save)
    line = cli_error(train_mod.main, _args(corpus, out, *SAVE_EVERY_2))
    assert line == (f"error: could not save a checkpoint in '{out}' (No space left on device); "
                    "the previous checkpoint is kept")  # fmt: skip
    assert resolve_checkpoint(out).name == "ckpt-000002" and load_state(resolve_checkpoint(out))["iter"] == 2
    load(out, which="latest")
    assert _leftovers(out) == []  # the half-written temporary folder is gone


# --- signals ------------------------------------------------------------------------------


def test_sigint_saves_and_resume_continues_exactly(corpus: Path, tmp_path: Path) -> None:
    args = _args(corpus, tmp_path / "out", "train.max_iters=24", "train.eval_interval=12", "model.dropout=0.1")
    proc = subprocess.Popen([sys.executable, "-m", "fastgpt.train", *args], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    for line in proc.stderr:
        if line.startswith("iter 0:"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "stopped by SIGINT at iteration" in err and "Traceback" not in err
    stopped = load_state(resolve_checkpoint(tmp_path / "out"))["iter"]
    assert 0 < stopped < 24

    train_mod.main(["--resume", *args])
    (tmp_path / "out").rename(tmp_path / "resumed")
    train_mod.main(args)  # the same run, uninterrupted
    assert _curve(tmp_path / "resumed") == _curve(tmp_path / "out")  # bit-identical losses, dropout included


# --- NaN losses and out of memory ---------------------------------------------------------


def _nan_on_training_calls(monkeypatch: pytest.MonkeyPatch, bad: set[int] | None) -> None:
    """Make the training loss NaN on the forward calls numbered in ``bad`` (1-based; None = all)."""
    forward, calls = GPT.forward, []

    def poisoned(self: GPT, idx, targets=None, loss_weights=None, cache=None):
        logits, loss = forward(self, idx, targets, loss_weights, cache)
        if self.training and loss is not None:
            calls.append(1)
            if bad is None or len(calls) in bad:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", poisoned)


def test_nonfinite_steps_are_skipped_and_counted(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    _nan_on_training_calls(monkeypatch, bad={3, 4})
    out = tmp_path / "out"
    train_mod.main(_args(corpus, out, "train.max_iters=8", "train.eval_interval=100"))
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    skipped = [(e["iter"], e["nonfinite_total"]) for e in events if "skipped" in e]
    assert skipped == [(3, 1), (4, 2)]
    steps = [e for e in events if "tokens_per_s" in e]
    assert [e["iter"] for e in steps] == [1, 2, 5, 6, 7, 8] and all(e["train_loss"] < 10 for e in steps)
    assert load_state(resolve_checkpoint(out))["nonfinite"] == 2
    model, _ = load(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # skipped steps left the weights alone


def test_diverged_run_stops_with_a_message(corpus: Path, tmp_path: Path, monkeypatch, cli_error) -> None:
    _nan_on_training_calls(monkeypatch, bad=None)
    line = cli_error(train_mod.main, _args(corpus, tmp_path / "out", "train.max_iters=50"))
    assert line == ("error: the loss was NaN or inf 5 steps in a row (up to iteration 5); the run diverged: "
                    "nothing was saved; try a lower optim.lr (now 0.01) or more warmup")  # fmt: skip


@pytest.mark.parametrize("stop", ["the save refuses", "the NaN streak"])
def test_a_blown_up_step_is_never_latest_and_the_error_names_the_resume_that_recovers(
        corpus: Path, tmp_path: Path, stop: str) -> None:  # fmt: skip
    out = tmp_path / "out"
    args = _args(corpus, out, "train.max_iters=4", "train.ckpt_interval=2", "train.eval_interval=100")
    train_mod.main(args)  # a good run: ckpt-000004
    # optim.lr=1e30: step 5's loss is finite, its update leaves weights around 1e30, step 6's loss is inf
    interval = "train.ckpt_interval=1" if stop == "the save refuses" else "train.ckpt_interval=1000"
    diverged = subprocess.run([sys.executable, "-m", "fastgpt.train", "--resume", *args, "train.max_iters=40",
                               "optim.lr=1e30", interval], capture_output=True, text=True, timeout=300)  # fmt: skip
    err = diverged.stderr
    assert diverged.returncode == 2 and "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: the weights after iteration 5 are not finite" if stop == "the save refuses" else
                           "error: the loss was NaN or inf 5 steps in a row (up to iteration 10)"), line  # fmt: skip
    command = f"python -m fastgpt.train --resume=ckpt-000004 train.out_dir={out} optim.lr=1e+29"
    assert line.endswith(f"continue from ckpt-000004, its last checkpoint with finite weights, with a lower optim.lr "
                         f"(now 1e+30) or more optim.warmup_iters: {command}"), line  # fmt: skip
    assert resolve_checkpoint(out).name == "ckpt-000004" and _ckpts(out) == {"ckpt-000004"}  # step 5 not saved
    model, _ = load(out, which="latest")
    assert all(torch.isfinite(p).all() and p.abs().max() < 100 for p in model.parameters())

    recovered = [*command.split()[3:-1], "optim.lr=0.001", "train.max_iters=8"]  # the command, with a sane lr
    train_mod.main(recovered)
    assert load_state(resolve_checkpoint(out))["iter"] == 8
    model, _ = load(out, which="latest")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_out_of_memory_suggests_a_smaller_batch(corpus: Path, tmp_path: Path, monkeypatch, cli_error) -> None:
    def out_of_memory(self: train_mod.Trainer) -> float:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(train_mod.Trainer, "train_step", out_of_memory)
    line = cli_error(train_mod.main, _args(corpus, tmp_path / "out", "train.max_iters=5"))
    assert line == ("error: CUDA ran out of memory; use a smaller train.batch_size (now 4) and more "
                    "train.grad_accum_steps, or a smaller model")  # fmt: skip
