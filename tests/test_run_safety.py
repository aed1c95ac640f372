"""No run is lost or damaged: an occupied out_dir, two runs at once, readers racing a run, kill -9
between a checkpoint and its pointer, a really full disk (a small tmpfs), a diverging run.

Everything goes through ``python -m fastgpt.train`` / ``fastgpt.load`` with real processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_run import tiny, word_corpus

import fastgpt
from fastgpt.checkpoint import resolve_checkpoint
from fastgpt.model import GPT
from fastgpt.train import cli as train_mod
from fastgpt.train.checkpoint import load_state

TINY = tiny("train.batch_size=4", "train.log_interval=1", "optim.lr=0.01", drop=("train.max_iters",))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return word_corpus(tmp_path_factory.mktemp("safety"))


def _args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.dataset={corpus}", f"data.cache_dir={corpus.parent / 'cache'}", f"train.out_dir={out}",
            *extra]  # fmt: skip


def _train(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastgpt.train", *args], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1
    return lines[-1]


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content hash (a changed, added or removed file shows)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def finished(corpus: Path) -> Path:
    out = corpus.parent / "finished"
    train_mod.main(_args(corpus, out, "train.max_iters=4", "train.eval_interval=2"))
    return out


def test_a_new_run_into_an_occupied_folder_is_refused(finished: Path, corpus: Path) -> None:
    before = _snapshot(finished)
    line = _one_error_line(_train(*_args(corpus, finished, "train.max_iters=2")))
    assert "holds a run" in line and "--resume" in line and "train.overwrite=true" in line
    # overwrite asked, but the run fails before its first step (an unknown tokenizer file): still untouched
    proc = _train(*_args(corpus, finished, "train.overwrite=true", "data.tokenizer=./missing/tokenizer.json"))
    _one_error_line(proc)
    assert _snapshot(finished) == before


def test_overwrite_replaces_only_once_a_step_went_through(finished: Path, corpus: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = _snapshot(out)
    forward = GPT.forward

    def failing_backward(self: GPT, idx, targets=None, loss_weights=None, cache=None):  # the first step dies
        if self.training:
            raise ValueError("this backend cannot run here")
        return forward(self, idx, targets, loss_weights, cache)

    monkeypatch.setattr(GPT, "forward", failing_backward)
    with pytest.raises(ValueError, match="cannot run here"):
        train_mod.main(_args(corpus, out, "train.overwrite=true", "train.max_iters=2"))
    assert _snapshot(out) == before  # the iter-0 eval ran, yet metrics.jsonl and config.yaml are the old run's
    monkeypatch.setattr(GPT, "forward", forward)
    train_mod.main(_args(corpus, out, "train.overwrite=true", "train.max_iters=2", "train.eval_interval=1"))
    assert [p.name for p in out.glob("ckpt-*")] == ["ckpt-000002"]


def test_a_second_run_refuses_at_once_and_a_dead_runs_lock_is_taken(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = _args(corpus, out, "train.max_iters=100000", "train.eval_interval=5", "train.ckpt_interval=5")
    first = subprocess.Popen([sys.executable, "-m", "fastgpt.train", *args], stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        for line in first.stderr:
            if line.startswith("iter 5:"):
                break
        start = time.monotonic()
        second = _train("--resume", *args)
        assert f"in use by another training run (pid {first.pid}" in _one_error_line(second)
        assert time.monotonic() - start < 60  # refused at start-up, not after preparing anything
        third = _train(*_args(corpus, out, "train.overwrite=true", "train.max_iters=2"))
        assert f"pid {first.pid}" in _one_error_line(third)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (out / ".lock").exists()  # left by the killed run: its lock dies with it
    resumed = _train("--resume", *_args(corpus, out, "train.max_iters=12", "train.eval_interval=6"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not (out / ".lock").exists()


def test_readers_never_fail_while_a_run_saves_and_prunes(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = _args(corpus, out, "train.max_iters=60", "train.eval_interval=1000", "train.ckpt_interval=1")
    trainer = subprocess.Popen([sys.executable, "-m", "fastgpt.train", *args], stderr=subprocess.PIPE, text=True)
    loads = failures = 0
    try:
        while trainer.poll() is None:
            if not any(out.glob("ckpt-*")):
                time.sleep(0.05)
                continue
            for which in ("latest", "best"):
                try:
                    fastgpt.load(str(out), which=which)
                except Exception as exc:  # noqa: BLE001 - counting every failure is the point
                    failures += 1
                    print(f"load failed: {type(exc).__name__}: {exc}")
                loads += 1
    finally:
        trainer.kill()
        trainer.wait()
    assert loads >= 20 and failures == 0, (loads, failures)


KILL_AT_FIRST_POINTER = """
import os, signal
from fastgpt.__main__ import run
from fastgpt import run_dir
from fastgpt.train import cli as train

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # ckpt-000002 is renamed into place; no pointer written yet

run_dir.write_pointer = die
run(train.main)
"""


def test_killed_before_the_first_pointer_falls_back_to_the_checkpoint(corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "killer.py").write_text(KILL_AT_FIRST_POINTER)
    out = tmp_path / "out"
    args = _args(corpus, out, "train.max_iters=4", "train.ckpt_interval=2", "train.eval_interval=100")
    proc = subprocess.run([sys.executable, str(tmp_path / "killer.py"), *args], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL and not (out / "latest").exists()
    assert resolve_checkpoint(out).name == "ckpt-000002"
    fastgpt.load(str(out))
    resumed = _train("--resume", *args)
    assert resumed.returncode == 0 and "resumed from" in resumed.stderr and "iteration 2" in resumed.stderr
    assert load_state(resolve_checkpoint(out))["iter"] == 4


def test_full_disk_is_one_error_line_and_keeps_the_previous_checkpoint(corpus: Path, small_disk: Path) -> None:
    out = small_disk / "out"
    # ~1.2 MB per checkpoint (weights + AdamW moments): the first fits, the second (beside it) cannot
    args = _args(corpus, out, "model.n_embd=64", "model.n_layer=2", "train.max_iters=6", "train.ckpt_interval=2",
                 "train.eval_interval=100")  # fmt: skip
    line = _one_error_line(_train(*args))
    assert "No space left on device" in line and "kept" in line
    assert resolve_checkpoint(out).name == "ckpt-000002"
    fastgpt.load(str(out), which="latest")
    assert load_state(resolve_checkpoint(out))["iter"] == 2
    assert not [p.name for p in out.iterdir() if p.name.startswith(".ckpt-")]  # the partial save is gone


# 70,000 characters: a char-token part of 140 KB in partial/, then train.bin (126 KB) and val.bin beside it
WORDS = "the king and queen walk by night to see a ghost upon the wall".split()
BIG_CORPUS = " ".join(WORDS[i * 7 % len(WORDS)] for i in range(20000))


@pytest.mark.parametrize("small_disk, full_at", [("64k", "the part"), ("256k", "train.bin"), ("64k", "sft")],
                         indirect=["small_disk"])  # fmt: skip
def test_a_full_disk_while_preparing_data_is_one_error_line_and_keeps_the_finished_parts(
        tmp_path: Path, small_disk: Path, full_at: str) -> None:  # fmt: skip
    from fastgpt.data import DataConfig, prepare_data
    from fastgpt.data.partial import FOLDER

    if full_at == "sft":  # 2,000 examples of ~40 tokens: train.bin (uint16) and its mask do not fit in 64k
        corpus, mode = tmp_path / "big.jsonl", "sft"
        corpus.write_text("".join(json.dumps({"prompt": f"add {i} and {i % 7}", "response": str(i + i % 7)}) + "\n"
                                  for i in range(2000)))  # fmt: skip
    else:
        corpus, mode = tmp_path / "big.txt", "random"
        corpus.write_text(BIG_CORPUS)
    args = [*TINY, f"data.dataset={corpus}", f"data.mode={mode}", f"data.cache_dir={small_disk / 'cache'}",
            f"train.out_dir={tmp_path / 'out'}", "train.max_iters=2"]  # fmt: skip
    line = _one_error_line(_train(*args))
    (folder,) = (small_disk / "cache").iterdir()
    assert line.startswith(f"error: data.cache_dir: cannot write the prepared data in '{folder}' (the disk is full")
    # numpy's short write (an OSError without errno): 64k, of the part (np.save); 256k, of train.bin (tofile)
    parts = {"the part": ["digest", "tokenizer"], "sft": ["digest"],
             "train.bin": ["digest", "source0-part0.lengths.npy", "source0-part0.tokens.npy", "tokenizer"]}
    assert sorted(p.name for p in (folder / FOLDER).iterdir()) == parts[full_at]
    assert sorted(p.name for p in folder.iterdir()) == [FOLDER]  # no half-written token file, no manifest
    assert list((tmp_path / "out").iterdir()) == []  # the run wrote nothing

    subprocess.run(["mount", "-o", "remount,size=2m", str(small_disk)], check=True)
    done = _train(*args)  # continues from what was kept, into what one uninterrupted preparation writes
    assert done.returncode == 0, done.stderr[-3000:]
    clean = prepare_data(DataConfig(dataset=str(corpus), mode=mode, cache_dir=str(tmp_path / "clean")),
                         progress=False)  # fmt: skip
    assert clean.dir.name == folder.name and not (folder / FOLDER).exists()
    assert _snapshot(folder) == _snapshot(clean.dir)


def test_a_diverging_run_keeps_its_good_checkpoints(corpus: Path, tmp_path: Path, monkeypatch, cli_error) -> None:
    out = tmp_path / "out"
    forward, calls = GPT.forward, []

    def diverging(self: GPT, idx, targets=None, loss_weights=None, cache=None):  # NaN from the 5th step on
        logits, loss = forward(self, idx, targets, loss_weights, cache)
        if self.training and loss is not None:
            calls.append(1)
            if len(calls) >= 5:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", diverging)
    args = _args(corpus, out, "train.max_iters=50", "train.ckpt_interval=1", "train.eval_interval=2")
    assert "the run diverged" in cli_error(train_mod.main, args)
    assert resolve_checkpoint(out).name == "ckpt-000004"  # nothing saved from the streak (steps 5 to 9)
    assert resolve_checkpoint(out, "best").name in ("ckpt-000002", "ckpt-000004")
    monkeypatch.setattr(GPT, "forward", forward)
    overwrite = ["train.overwrite=true"] if resolve_checkpoint(out, "best").name == "ckpt-000002" else []
    train_mod.main(["--resume=best", *_args(corpus, out, "train.max_iters=6", "train.eval_interval=2", *overwrite)])
    assert load_state(resolve_checkpoint(out))["iter"] == 6


def test_resume_from_a_named_checkpoint(finished: Path, corpus: Path, tmp_path: Path, cli_error) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    named = sorted(p.name for p in out.glob("ckpt-*"))[0]
    line = cli_error(train_mod.main, ["--resume=ckpt-000003", *_args(corpus, out, "train.max_iters=8")])
    have = ", ".join(sorted(p.name for p in out.glob("ckpt-*")))
    assert f"has no complete checkpoint 'ckpt-000003' (it has: {have})" in line
    metrics_inode = (out / "metrics.jsonl").stat().st_ino
    overwrite = ["train.overwrite=true"] if named != resolve_checkpoint(out).name else []
    train_mod.main([f"--resume={named}", *_args(corpus, out, "train.max_iters=8", "train.eval_interval=2",
                                                *overwrite)])  # fmt: skip
    assert load_state(resolve_checkpoint(out))["iter"] == 8
    assert (out / "metrics.jsonl").stat().st_ino != metrics_inode  # rewritten as a new file, not truncated


def test_going_back_to_an_earlier_checkpoint_needs_overwrite_and_then_continues_exactly(
        corpus: Path, tmp_path: Path, cli_error) -> None:  # fmt: skip
    import shutil

    out, kept = tmp_path / "run", tmp_path / "kept"
    args = _args(corpus, out, "train.eval_interval=3", "train.max_iters=6")
    train_mod.main(_args(corpus, out, "train.eval_interval=3", "train.max_iters=3"))
    shutil.copytree(out / "ckpt-000003", kept)
    train_mod.main(["--resume", *args])
    losses = [e["val_loss"] for e in _events(out) if "val_loss" in e]
    # the run as it would be had its best been step 3: an earlier checkpoint beside a later latest
    shutil.copytree(kept, out / "ckpt-000003")
    (out / "best").write_text("ckpt-000003\n")
    before = _snapshot(out)
    line = cli_error(train_mod.main, ["--resume=best", *args])
    assert "ckpt-000003" in line and "later checkpoints (ckpt-000006)" in line and "train.overwrite=true" in line
    assert _snapshot(out) == before  # refused before anything was written
    train_mod.main(["--resume=best", *args, "train.overwrite=true"])
    assert [e["val_loss"] for e in _events(out) if "val_loss" in e] == losses  # steps 4 to 6 again, bit for bit
    assert resolve_checkpoint(out).name == "ckpt-000006"
    assert resolve_checkpoint(out, "best").name in ("ckpt-000003", "ckpt-000006")
    # back to step 3 again with best naming step 6, and no step after it: no pointer names the abandoned step 6
    shutil.copytree(kept, out / "ckpt-000003")
    (out / "best").write_text("ckpt-000006\n")
    train_mod.main(["--resume=ckpt-000003", *_args(corpus, out, "train.eval_interval=3", "train.max_iters=3",
                                                   "train.overwrite=true")])  # fmt: skip
    assert resolve_checkpoint(out, "best").name == resolve_checkpoint(out).name == "ckpt-000003"


def test_resuming_a_named_checkpoint_never_leaves_best_on_a_replaced_folder(corpus: Path, tmp_path: Path) -> None:
    """best named ckpt-6 of a branch given up; the resumed branch saves its own ckpt-6 over that folder, at a
    learning rate that makes it worse: best must then name what this branch measured best, never the new ckpt-6
    for the old one's loss."""
    out = tmp_path / "run"
    every3 = ("train.eval_interval=3", "train.keep_checkpoints=5", "train.max_iters=9")
    train_mod.main(_args(corpus, out, *every3))
    (out / "best").write_text("ckpt-000006\n")
    old = _snapshot(out / "ckpt-000006")
    start = load_state(out / "ckpt-000003")["best_val"]
    train_mod.main(["--resume=ckpt-000003", *_args(corpus, out, *every3, "optim.lr=3", "train.overwrite=true")])
    assert _snapshot(out / "ckpt-000006") != old  # the folder was replaced
    measured = {e["iter"]: e["val_loss"] for e in _events(out) if "val_loss" in e and e["iter"] > 3}
    assert set(measured) == {6, 9} and min(measured.values()) > start  # the new branch is worse than step 3
    assert resolve_checkpoint(out, "best").name == "ckpt-000003"


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_run_killed_before_its_first_checkpoint_starts_fresh_with_resume(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = _args(corpus, out, "train.max_iters=100000", "train.eval_interval=100000")  # no save for a long while
    run = subprocess.Popen([sys.executable, "-m", "fastgpt.train", *args], stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        for line in run.stderr:
            if line.startswith("iter 3:"):  # steps went through: config.yaml and metrics.jsonl are written
                break
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert run.returncode == -signal.SIGKILL
    assert (out / "config.yaml").is_file() and (out / "metrics.jsonl").is_file() and not list(out.glob("ckpt-*"))
    (out / ".lock").unlink()  # the killed run's (a lock nobody holds): the refused rerun below takes and drops it
    before = _snapshot(out)

    line = _one_error_line(_train(*_args(corpus, out, "train.max_iters=4")))
    assert str(out) in line and "holds a run with no checkpoint" in line
    assert "--resume starts it again" in line and "train.overwrite=true replaces it" in line
    assert _snapshot(out) == before  # refused: nothing touched

    # the run's own config (the tiny model, the corpus): only the folder and how long are given
    resumed = _train("--resume", f"train.out_dir={out}", "train.max_iters=4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sum("starts fresh" in line for line in resumed.stderr.splitlines()) == 1
    assert "no checkpoint was saved" in resumed.stderr
    assert load_state(resolve_checkpoint(out))["iter"] == 4
    assert fastgpt.load(str(out))[0].config.n_embd == 16
    assert [e["iter"] for e in _events(out) if "train_loss" in e and "tokens_per_s" in e] == [1, 2, 3, 4]
