"""optim.name=muon in runs: Muon for the blocks' weight matrices, AdamW for the rest, each at its own rate
under one schedule; the grouping on real GPTs (tied and untied embeddings, biases, a shared FFN, freezing,
LoRA), a run that learns, exact resume through the CLI, and bad values as one error line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from tiny_run import SMALL, TINY_MODEL, tiny, tiny_args, train_interrupted, word_corpus

from fastgpt.config import OptimConfig
from fastgpt.model import GPT, GPTConfig
from fastgpt.nn.lora import add_lora
from fastgpt.optim import HybridOptimizer, Muon
from fastgpt.train import cli as train_mod
from fastgpt.train.freeze import freeze
from fastgpt.train.optimizer import build_optimizer
from fastgpt.train.schedule import lr_factor, make_scheduler

TINY = tiny(*SMALL, "train.batch_size=4", "train.eval_iters=2", "train.log_interval=1", "optim.warmup_iters=2",
            "optim.lr=0.01", "optim.name=muon", "train.dtype=float32", drop=("train.max_iters",))
# the weight matrices of the attention and MLP projections, and LoRA's A and B on them
PROJECTION = re.compile(r"blocks\.\d+\.(attn\.(c_attn|c_proj)|mlp\.(c_fc|c_proj|gate|up|down))\.(weight|lora_a|lora_b)")


@pytest.fixture
def words(tmp_path: Path) -> Path:
    return word_corpus(tmp_path, 600)


def _args(tmp_path: Path, corpus: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.dataset={corpus}", f"data.cache_dir={corpus.parent / 'cache'}",
            f"train.out_dir={tmp_path / 'out'}", *extra]


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


CASES = {
    "tied, biases": (dict(bias=True), None),
    "untied, no biases": (dict(bias=False, tie_embeddings=False), None),
    "swiglu, shared ffn": (dict(ffn_type="swiglu", tie_ffn_across_layers=True, tie_embeddings=False), None),
    "frozen": (dict(bias=True), lambda m: freeze(m, ["blocks.0.*", "wpe.weight"])),
    "lora": (dict(bias=True), lambda m: add_lora(m, 4, 16.0, 0.0, ["attn.c_attn", "mlp.c_fc"])),
}


@pytest.mark.parametrize("case", CASES)
def test_every_trainable_parameter_is_in_one_group_and_the_matrices_in_muons(case: str) -> None:
    changes, prepare = CASES[case]
    model = GPT(GPTConfig(**TINY_MODEL, **changes))
    if prepare is not None:
        prepare(model)
    said = []
    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-3, muon_lr=0.03), torch.device("cpu"),
                          say=said.append)
    assert isinstance(opt, HybridOptimizer) and isinstance(opt.optimizers["muon"], Muon)
    grouped = [id(p) for group in opt.param_groups for p in group["params"]]
    named = dict(model.named_parameters())
    trainable = {id(p) for p in named.values() if p.requires_grad}
    assert len(grouped) == len(set(grouped)) and set(grouped) == trainable  # once each, frozen ones in none
    in_muon = {id(p) for p in opt.optimizers["muon"].param_groups[0]["params"]}
    muon_names = sorted(n for n, p in named.items() if id(p) in in_muon)
    want = sorted(n for n, p in named.items() if p.requires_grad and PROJECTION.fullmatch(n))
    assert muon_names == want and want
    adamw_names = {n for n, p in named.items() if p.requires_grad and id(p) not in in_muon}
    if case == "lora":
        assert all(".lora_" in n for n in muon_names) and not adamw_names  # every base weight is frozen
    elif case == "frozen":
        assert not any(n.startswith("blocks.0.") or n == "wpe.weight" for n in muon_names + sorted(adamw_names))
    else:
        assert {"wte.weight", "wpe.weight", "ln_f.norm.weight"} <= adamw_names
        assert ("lm_head.weight" in adamw_names) == (not model.config.tie_embeddings)
        assert any(n.endswith(".bias") for n in adamw_names) == model.config.bias
    # the rates: Muon's group at muon_lr, AdamW's at lr, through the schedule
    sched = make_scheduler(opt, OptimConfig(name="muon", lr=1e-3, muon_lr=0.03, warmup_iters=2), 10)
    for it in range(4):
        factor = lr_factor(it, OptimConfig(warmup_iters=2, lr=1e-3), 10)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 * factor] * 2 + [0.03 * factor])
        opt.step()  # no gradients: nothing moves
        sched.step()
    # one line per optimizer, naming the groups' tensors with layers as *
    lines = said[0].splitlines()
    assert len(said) == 1 and len(lines) == 2 and lines[0].startswith("optim.name=muon: Muon (lr 0.03) on ")
    assert "blocks.*." in lines[0] and "blocks.0." not in said[0]
    assert (" frozen tensors in neither" in lines[1]) == (case in ("frozen", "lora"))


def test_a_muon_run_learns(tmp_path: Path, words: Path, capsys: pytest.CaptureFixture) -> None:
    train_mod.main(_args(tmp_path, words, "train.max_iters=30", "train.eval_interval=30"))
    err = capsys.readouterr().err
    assert err.count("optim.name=muon: Muon (lr 0.02) on 8 tensors") == 1
    vals = [e["val_loss"] for e in _events(tmp_path / "out") if "val_loss" in e]
    assert vals[-1] < vals[0] - 1.0, vals


def test_resume_continues_exactly(tmp_path: Path, words: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """12 steps straight, and 6 + --resume 6: the same losses, rates and final weights, bit for bit."""
    args = _args(tmp_path, words, "train.max_iters=12", "train.eval_interval=6", "model.dropout=0.1",
                 "optim.weight_decay=0.1")
    train_mod.main(args)
    straight = _events(tmp_path / "out")
    (tmp_path / "out").rename(tmp_path / "straight")

    train_interrupted(monkeypatch, args, 6)
    train_mod.main(["--resume", *args])
    keys = ("iter", "train_loss", "val_loss", "lr")
    resumed = [{k: e[k] for k in keys if k in e} for e in _events(tmp_path / "out")]
    assert resumed == [{k: e[k] for k in keys if k in e} for e in straight]
    a = load_file(tmp_path / "straight" / "ckpt-000012" / "model.safetensors")
    b = load_file(tmp_path / "out" / "ckpt-000012" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_a_new_lr_keeps_muons_own_rate(tmp_path: Path, words: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """--resume optim.lr=X sets every group's base rate to X (Checkpointer._continue_schedule): AdamW's rate
    follows it, Muon's stays optim.muon_lr's."""
    train_mod.main(_args(tmp_path, words, "train.max_iters=4", "train.eval_interval=4"))
    seen = {}
    monkeypatch.setattr(train_mod.Trainer, "run", lambda self: seen.update(
        rates=[g["lr"] for g in self.optimizer.param_groups], it=self.iter, cfg=self.cfg.optim))
    train_mod.main(["--resume", *_args(tmp_path, words, "train.max_iters=8", "optim.lr=0.004")])
    factor = lr_factor(4, seen["cfg"], 8)  # the recipe's min_lr, the new lr
    assert seen["it"] == 4 and seen["cfg"].lr == 0.004 and seen["cfg"].muon_lr == 0.02
    assert seen["rates"] == pytest.approx([0.004 * factor] * 2 + [0.02 * factor], rel=1e-12)


def test_resume_may_lower_muons_rate(tmp_path: Path, words: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """optim.muon_lr may change on --resume (what the divergence message suggests, beside optim.lr)."""
    train_mod.main(_args(tmp_path, words, "train.max_iters=4", "train.eval_interval=4"))
    seen = {}
    monkeypatch.setattr(train_mod.Trainer, "run", lambda self: seen.update(
        rates=[g["lr"] for g in self.optimizer.param_groups], cfg=self.cfg.optim))
    train_mod.main(["--resume", *_args(tmp_path, words, "train.max_iters=8", "optim.muon_lr=0.005")])
    factor = lr_factor(4, seen["cfg"], 8)
    assert seen["rates"] == pytest.approx([seen["cfg"].lr * factor] * 2 + [0.005 * factor], rel=1e-12)


def test_the_divergence_advice_lowers_both_rates() -> None:
    from types import SimpleNamespace

    from fastgpt.config import load_config
    from fastgpt.train.checkpointer import Checkpointer

    cfg = load_config(None, ["optim.name=muon", "optim.lr=0.01", "optim.muon_lr=0.02"])
    line = Checkpointer.recovery(SimpleNamespace(cfg=cfg, saved_iter=4, out_dir="out/x"))
    assert line.endswith("--resume=ckpt-000004 train.out_dir=out/x optim.lr=0.001 optim.muon_lr=0.002"), line


def test_frozen_blocks_stay_bit_identical(tmp_path: Path, words: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kept = {}
    run = train_mod.Trainer.run

    def keep(self: train_mod.Trainer) -> None:
        kept["before"], kept["trainer"] = {k: v.clone() for k, v in self.model.state_dict().items()}, self
        run(self)

    monkeypatch.setattr(train_mod.Trainer, "run", keep)
    train_mod.main(_args(tmp_path, words, "train.max_iters=4", "train.eval_interval=4", "train.freeze=[blocks.0.*]"))
    after, before = kept["trainer"].model.state_dict(), kept["before"]
    assert all(torch.equal(after[k], before[k]) == k.startswith("blocks.0.") for k in after)


def test_lora_adapters_train_under_muon(tmp_path: Path, corpus: Path, trained: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    kept = {}
    run = train_mod.Trainer.run
    monkeypatch.setattr(train_mod.Trainer, "run", lambda self: kept.update(trainer=self) or run(self))
    train_mod.main(tiny_args(corpus, tmp_path / "out", "optim.name=muon", "optim.muon_lr=0.05", "train.max_iters=20",
                             "train.eval_interval=20", f"train.init_from={trained}", "train.lora_rank=4"))
    trainer = kept["trainer"]
    assert set(trainer.optimizer.optimizers["muon"].state) == {
        p for n, p in trainer.model.named_parameters() if ".lora_" in n}
    assert all(p.abs().sum() > 0 for n, p in trainer.model.named_parameters() if n.endswith(".lora_b"))  # from 0
    # the base trained 2 steps: its embeddings are near random, and adapters on attention gain little; AdamW
    # at optim.lr=0.05 measured the same (3.063 -> 3.050 at 20 steps; Muon 3.063 -> 3.017)
    vals = [e["val_loss"] for e in _events(tmp_path / "out") if "val_loss" in e]
    assert vals[-1] < vals[0] - 0.03, vals


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_ddp_ranks_train_like_one_process(tmp_path: Path, words: Path) -> None:
    """2 ranks x batch 4 (each orthogonalizing half the matrices) against 1 process x batch 8: the same
    losses up to the order of float sums in the gradients' all-reduce (measured: 1.3e-7 relative at most)."""
    extra = ("train.eval_interval=3", "optim.lr_decay_iters=6", "train.max_iters=6")
    train_mod.main(_args(tmp_path / "one", words, "train.batch_size=8", *extra))
    out = tmp_path / "ddp" / "out"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "fastgpt.train", *_args(tmp_path / "ddp", words, "train.batch_size=4", *extra)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("optim.name=muon: Muon (lr 0.02, Newton-Schulz shared by 2 ranks) on 8 tensors") == 1
    one, ddp = ([(e["iter"], k, e[k]) for e in _events(run) for k in ("train_loss", "val_loss") if k in e]
                for run in (tmp_path / "one" / "out", out))
    assert [x[:2] for x in one] == [x[:2] for x in ddp] and len(one) == 6 + 2 * 3
    worst = max(abs(a[2] - b[2]) / abs(b[2]) for a, b in zip(ddp, one))
    assert worst <= 1e-5, f"max relative loss difference {worst:.2e}"


@pytest.mark.parametrize("extra, message", [
    (["optim.muon_lr=0"], "optim.muon_lr must be > 0, got 0"),
    (["optim.muon_lr=-0.02"], "optim.muon_lr must be > 0, got -0.02"),
    (["optim.muon_ns_steps=0"], "optim.muon_ns_steps must be a positive integer, got 0"),
    (["optim.muon_momentum=1"], "optim.muon_momentum must be in [0, 1), got 1"),
    (["optim.name=muom"], "optim.name='muom' is not one of adamw, fused_adamw, sgd, muon; did you mean muon?"),
    (["optim.name=adam"], "; did you mean adamw?"),
    (["train.parallel=fsdp"], "optim.name=muon does not run with train.parallel=fsdp"),
])  # fmt: skip
def test_bad_values_are_one_error_line(tmp_path: Path, words: Path, cli_error, extra: list[str],
                                       message: str) -> None:
    assert message in cli_error(train_mod.main, _args(tmp_path, words, "train.max_iters=1", *extra))
