"""Two CPU processes under torchrun (gloo): DDP and FSDP2 train like one process with the same global
batch, FSDP's sharded checkpoints resume on another number of ranks, SIGTERM stops both ranks at
the same step, and a hung rank times out with one line.

"Same global batch" means the same ``batch_size * world_size`` (rows per micro-step over all ranks),
grad_accum_steps and seed: every rank takes its slice of the rows one process would draw
(``TokenLoader``), DDP/FSDP average the ranks' gradients, and the logged loss is the ranks' mean.
The only differences left are in the order of float sums (a mean of two means of 4 rows, not one
mean of 8), about 1e-7 relative per step in fp32; Adam amplifies them a little over a few steps, so
losses are compared at rtol 1e-5 (measured: at most 2.1e-7).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from tiny_run import SMALL, tiny, word_corpus

from fastgpt.checkpoint import is_sharded, load, resolve_checkpoint
from fastgpt.train import cli as train_mod
from fastgpt.train.checkpoint import load_state

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

TINY = tiny(*SMALL, "train.eval_iters=2", "train.log_interval=1", "train.eval_interval=3", "optim.warmup_iters=2",
            "optim.lr=0.01", "optim.lr_decay_iters=6", drop=("train.batch_size", "train.max_iters"))
RTOL = 1e-5
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return word_corpus(tmp_path_factory.mktemp("corpus"), 600)


def _args(corpus: Path, out: Path, *extra: str) -> list[str]:
    data = [f"data.dataset={corpus}", f"data.cache_dir={corpus.parent / 'cache'}"]
    return [*TINY, *data, f"train.out_dir={out}", *extra]


def _torchrun(args: list[str], script: str = "-m fastgpt.train", **env: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 SCRIPT ARGS`` on a free port."""
    return subprocess.run([*TORCHRUN, *script.split(), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})  # fmt: skip


def _losses(out: Path, steps_only: bool = False) -> list[tuple[int, str, float]]:
    """(iter, name, loss) of every training step, and (unless ``steps_only``) every evaluation."""
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [(e["iter"], "step", e["train_loss"]) for e in events if "tokens_per_s" in e]
    evals = [(e["iter"], k, e[k]) for e in events for k in ("train_loss", "val_loss") if k in e and "lr" not in e]
    return steps if steps_only else steps + evals


def _assert_close(got: list, want: list) -> None:
    assert [(i, k) for i, k, _ in got] == [(i, k) for i, k, _ in want]
    worst = max(abs(a - b) / abs(b) for (_, _, a), (_, _, b) in zip(got, want, strict=True))
    assert worst <= RTOL, f"max relative loss difference {worst:.2e}"


@pytest.fixture(scope="module")
def one_process(corpus: Path) -> Path:
    """The reference: one process, batch 8, 6 steps."""
    out = corpus.parent / "one"
    train_mod.main(_args(corpus, out, "train.batch_size=8", "train.max_iters=6"))
    return out


def test_ddp_two_ranks_match_one_process(corpus: Path, one_process: Path) -> None:
    out = corpus.parent / "ddp"
    proc = _torchrun(_args(corpus, out, "train.batch_size=4", "train.max_iters=6"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_close(_losses(out), _losses(one_process))
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {e["world_size"] for e in events if "tokens_per_s" in e} == {2}
    assert proc.stderr.count("iter 6: train_loss") == proc.stderr.count("iter 6: loss") == 1  # rank 0 alone reports

    # one process with 2 accumulation steps of 4 rows trains on the same rows as well
    accum = corpus.parent / "accum"
    train_mod.main(_args(corpus, accum, "train.batch_size=4", "train.grad_accum_steps=2", "train.max_iters=6"))
    _assert_close(_losses(accum, steps_only=True), _losses(one_process, steps_only=True))


def test_fsdp_matches_one_process_and_resumes_on_another_world_size(corpus: Path, one_process: Path) -> None:
    """2 FSDP ranks x batch 4 for 3 steps, then 1 process x batch 8 resumes the sharded checkpoint."""
    out = corpus.parent / "fsdp"
    proc = _torchrun(_args(corpus, out, "train.parallel=fsdp", "train.batch_size=4", "train.max_iters=3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = resolve_checkpoint(out)
    assert is_sharded(ckpt) and not (ckpt / "model.safetensors").exists()
    assert sorted(p.name for p in (ckpt / "sharded").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]

    train_mod.main(["--resume", "--allow_pickle", *_args(corpus, out, "train.parallel=fsdp", "train.batch_size=8",
                                                        "train.max_iters=6")])
    _assert_close(_losses(out), _losses(one_process))

    # the sharded checkpoint loads like any other, and converts to the single-file form
    reference, tok = load(one_process)
    x = torch.tensor([tok.encode("the king and")])
    model, _ = load(out, allow_pickle=True)  # shards alone: their metadata is a pickle, read on request only
    torch.testing.assert_close(model(x)[0], reference(x)[0], rtol=1e-4, atol=1e-5)
    from fastgpt.train.convert import main as convert

    assert convert(["--checkpoint", str(out), "--out", str(corpus.parent / "single"), "--allow_pickle"]) == 0
    assert (corpus.parent / "single" / "model.safetensors").is_file()
    torch.testing.assert_close(load(corpus.parent / "single")[0](x)[0], model(x)[0], rtol=0, atol=0)


def test_sigterm_to_torchrun_stops_both_ranks_at_one_step(corpus: Path, tmp_path: Path) -> None:
    """torchrun forwards SIGTERM to the ranks; they agree on the step, save once and exit."""
    args = _args(corpus, tmp_path / "out", "train.batch_size=4", "train.max_iters=100000", "train.eval_interval=100000")
    proc = subprocess.Popen([*TORCHRUN, "-m", "fastgpt.train", *args], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    for line in proc.stderr:
        if line.startswith("iter 0:"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    stops = re.findall(r"stopped by SIGTERM at iteration (\d+); checkpoint saved", err)
    assert len(stops) == 1, err[-3000:]  # said once, by rank 0
    assert load_state(resolve_checkpoint(tmp_path / "out"))["iter"] == int(stops[0])
    assert "fastgpt/" not in "".join(line for line in err.splitlines() if line.lstrip().startswith("File "))


DRIVER = """
import time
from fastgpt.train import cli as train
from fastgpt.__main__ import run

step = train.Trainer.train_step

def hang_on_rank_1(self):
    if self.env.rank == 1 and self.iter == 3:
        time.sleep(8)  # longer than FASTGPT_DIST_TIMEOUT: rank 0 waits for it in the all-reduce
    return step(self)

train.Trainer.train_step = hang_on_rank_1
run(train.main)
"""


def test_hung_rank_times_out_with_one_line(corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "driver.py").write_text(DRIVER)
    args = _args(corpus, tmp_path / "out", "train.batch_size=4", "train.max_iters=6")
    proc = _torchrun(args, script=str(tmp_path / "driver.py"), FASTGPT_DIST_TIMEOUT="3")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: rank 0 of 2")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Timed out" in lines[0] and "another rank probably died or hangs" in lines[0]
    assert "FASTGPT_DIST_TIMEOUT=3s" in lines[0]


SLOW_PREPARATION = """
import time
from fastgpt.__main__ import run
from fastgpt.train import cli, trainer

prepare = trainer.prepare_data

def slow_on_rank_0(cfg, progress=True):
    if progress:  # rank 0: longer than FASTGPT_DIST_TIMEOUT, which the other rank must not apply
        time.sleep(8)
    return prepare(cfg, progress)

trainer.prepare_data = slow_on_rank_0
run(cli.main)
"""


def test_other_ranks_wait_for_a_data_preparation_longer_than_the_timeout(corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "driver.py").write_text(SLOW_PREPARATION)
    args = _args(corpus, tmp_path / "out", "train.batch_size=4", "train.max_iters=2", "data.cache_dir=" +
                 str(tmp_path / "cache"))  # fmt: skip
    proc = _torchrun(args, script=str(tmp_path / "driver.py"), FASTGPT_DIST_TIMEOUT="3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the other ranks wait for it without FASTGPT_DIST_TIMEOUT" in proc.stderr
    assert load_state(resolve_checkpoint(tmp_path / "out"))["iter"] == 2


AUTOTUNE_DRIVER = """
import json, os, sys
import torch
from fastgpt.ops import _autotune_cache, autotune, rms_norm
from fastgpt.train import distributed

rank = int(os.environ["RANK"])
os.environ["FASTGPT_CACHE_DIR"] = os.path.join(sys.argv[1], f"rank{rank}")
cpu = torch.device("cpu")
key = autotune.key_of(autotune.spec_of("rms_norm", (torch.zeros(5, 16), None, None, None)))
if rank == 0:  # a choice only rank 0 remembers, in its cache file
    _autotune_cache.store(cpu, key, {"backend": "torch", "ms": {"torch": 2.5}, "rejected": {}})
    autotune.forget()

def tune(spec, supported):
    assert rank == 0, f"rank {rank} measured instead of taking rank 0's choice"
    return {"backend": "torch", "ms": {"torch": 1.0}, "rejected": {}}

autotune.tune = tune
distributed.setup("cpu")
for shape in ((3, 8), (3, 8), (5, 16)):  # the repeat is answered without a collective
    rms_norm(torch.randn(*shape), None)
# one write per rank (a line shorter than PIPE_BUF): print's pieces could interleave with the other rank's
sys.stdout.write("used " + json.dumps({k: _autotune_cache.records()[k]["ms"] for k in autotune.used()}) + "\\n")
sys.stdout.flush()
distributed.teardown()
"""


def test_every_rank_takes_rank_0s_op_choices(tmp_path: Path) -> None:
    """distributed.setup sets the autotune group: rank 1 never measures, it receives rank 0's choices,
    including one rank 0 read from its own cache file; only rank 0 writes a file."""
    (tmp_path / "driver.py").write_text(AUTOTUNE_DRIVER)
    proc = _torchrun([str(tmp_path)], script=str(tmp_path / "driver.py"), FASTGPT_DIST_TIMEOUT="60",
                     FASTGPT_AUTO_SLOW="1", FASTGPT_AUTOTUNE="1", TRITON_INTERPRET="0", FASTGPT_CUDA_EMULATE="0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    used = [json.loads(line.removeprefix("used ")) for line in proc.stdout.splitlines() if line.startswith("used ")]
    assert len(used) == 2 and used[0] == used[1], proc.stdout
    assert sorted(ms["torch"] for ms in used[0].values()) == [1.0, 2.5], used
    assert not (tmp_path / "rank1").exists()
