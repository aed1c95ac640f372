"""Values out of range, files of the wrong shape and impossible devices: one ``error:`` line and exit 2,
checked before anything is allocated, prepared or run. The CLIs go through ``fastgpt.__main__.run``
in-process (the path ``python -m`` takes); the backend case needs a process without Triton's interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny_run import tiny_args as _args

from fastgpt import generate as generate_mod
from fastgpt.eval import evaluate as eval_mod
from fastgpt.hf import export as export_mod
from fastgpt.train import cli as train_mod


@pytest.mark.parametrize("override, message", [
    ("model.preset=[1]", "unknown preset '[1]'"),
    ("model.init_gain=-1", "model.init_gain must be > 0, got -1.0"),
    ("optim.step_size=0", "optim.step_size must be a positive integer, got 0"),
    ("train.device=gpu", "train.device='gpu' is not a device (auto, cpu, cuda, cuda:N, mps, xpu, xpu:N)"),
    ("train.device=", "train.device='' is not a device"),
    pytest.param("train.device=mps", "train.device='mps': mps is not available on this machine (torch built without",
                 marks=pytest.mark.skipif(torch.backends.mps.is_built(), reason="checks a torch built without MPS")),
    ("data.special_token_weight=1e300", "data.special_token_weight=1e+300 is beyond the limit of 1,000"),
    ("train.batch_size=2147483648", "train.batch_size=2147483648 is beyond the limit of 1,048,576"),
    ("model.n_embd=2147483648", "model.n_embd=2147483648 is beyond the limit of 65,536"),
    ("train.grad_accum_steps=1000000000000000000000000000000", "train.grad_accum_steps=10000"),
    ("data.vocab_size=2147483648", "data.vocab_size=2147483648 is beyond the limit of 16,777,216"),
    ("train.eval_iters=2147483648", "train.eval_iters=2147483648 is beyond the limit of 100,000"),
    ("model.n_layer=2147483648", "model.n_layer=2147483648 is beyond the limit of 1,024"),
    ("model.n_embd=32768", "this run needs at least"),  # within the limits, beyond this machine's memory
    ("data.tokenizer=" + "x" * 300, "tokenizer 'xxxx"),
    ("train.epochs=1e308", "train.epochs=1e+308 is beyond the limit of 1,000,000"),
    ("train.epochs=.nan", "train.epochs must be a finite number, got nan"),
    ("optim.gamma=1e308", "optim.gamma must be in (0, 1], got 1e+308"),
])  # fmt: skip
def test_values_out_of_range(corpus: Path, tmp_path: Path, cli_error, override: str, message: str) -> None:
    extra = [override, "model.n_layer=1024", "model.n_head=64"] if override == "model.n_embd=32768" else [override]
    line = cli_error(train_mod.main, _args(corpus, tmp_path / "out", *extra))
    assert message in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only torch")
def test_cuda_on_a_cpu_only_torch(corpus: Path, trained: Path, tmp_path: Path, cli_error) -> None:
    line = cli_error(train_mod.main, _args(corpus, tmp_path / "o", "train.device=cuda"))
    assert "train.device='cuda': cuda is not available on this machine (torch " in line
    for main in (generate_mod.main, eval_mod.main):
        for device in ("cuda", "xpu"):
            line = cli_error(main, ["--checkpoint", str(trained), "--device", device])
            assert f"--device={device!r}: {device} is not available on this machine" in line


@pytest.mark.parametrize("content", [b'{"model": {"type": "BPE"', b"not json at all", b"\xff\xfe\x00"])
def test_broken_tokenizer_files(corpus: Path, tmp_path: Path, cli_error, content: bytes) -> None:
    file = tmp_path / "tokenizer.json"
    file.write_bytes(content)
    line = cli_error(train_mod.main, _args(corpus, tmp_path / "out", f"data.tokenizer={file}"))
    assert "is not a readable tokenizer.json" in line


@pytest.mark.parametrize("spoil", [
    ("config.yaml", lambda c: {**c, "model": {**c["model"], "n_embd": "sixteen"}}),
    ("config.yaml", lambda c: {**c, "model": {**c["model"], "n_layer": [1]}}),
    ("config.yaml", lambda c: {**c, "model": {k: v for k, v in c["model"].items() if k != "n_head"} | {"x": 1}}),
    ("tokenizer_meta.json", lambda m: {**m, "chars": 12}),
    ("tokenizer_meta.json", lambda m: {"kind": "char"}),
    ("tokenizer_meta.json", lambda m: [m]),
])  # fmt: skip
def test_checkpoint_files_with_wrong_contents(run_copy, cli_error, spoil) -> None:
    out, ckpt = run_copy
    name, change = spoil
    path = ckpt / name
    if name.endswith(".yaml"):
        path.write_text(yaml.safe_dump(change(yaml.safe_load(path.read_text()))))
    else:
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    for main in (generate_mod.main, eval_mod.main):
        assert str(ckpt) in cli_error(main, ["--checkpoint", str(out), "--device", "cpu"])


@pytest.mark.parametrize("state", [{"iter": "two"}, [1, 2, 3], {"rng": None, "optimizer": 7}])
def test_state_with_wrong_contents(run_copy, corpus: Path, cli_error, state) -> None:
    out, ckpt = run_copy
    good = torch.load(ckpt / "state.pt", weights_only=True)
    torch.save({**good, **state} if isinstance(state, dict) else state, ckpt / "state.pt")
    line = cli_error(train_mod.main, ["--resume", *_args(corpus, out, "train.max_iters=4")])
    assert "state.pt" in line


def test_sampling_extremes(trained: Path, cli_error, capsys) -> None:
    base = ["--checkpoint", str(trained), "--device", "cpu", "--max_new_tokens", "5"]
    assert "--temperature a finite number" in cli_error(generate_mod.main, [*base, "--temperature", "nan"])
    assert "--temperature a finite number" in cli_error(generate_mod.main, [*base, "--temperature", "inf"])
    for extra in (["--temperature", "1e-45"], ["--top_p", "1e-300"], ["--temperature", "1e-45", "--top_p", "1e-300"]):
        assert generate_mod.main([*base, *extra]) == 0


def test_output_paths_checked_before_work(trained: Path, tmp_path: Path, cli_error) -> None:
    line = cli_error(eval_mod.main, ["--checkpoint", str(trained), "--output", str(tmp_path), "--device", "cpu"])
    assert "is a folder" in line and "checked before any task runs" in line
    (tmp_path / "file").write_text("x")
    assert "is a file" in cli_error(export_mod.main, ["--checkpoint", str(trained), "--out", str(tmp_path / "file")])


def test_explicit_backend_that_cannot_run_is_refused_before_training(corpus: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if torch.cuda.is_available():
        pytest.skip("Triton runs on this machine's GPU")
    proc = subprocess.run([sys.executable, "-m", "fastgpt.train", *_args(corpus, tmp_path / "out"),
                           "model.attn_backend=triton"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: model.attn_backend='triton' cannot run here")
    assert "data:" not in proc.stderr  # refused before the data was prepared


def test_char_corpus_without_a_newline_samples(tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "one_line.txt"
    corpus.write_text("the king and queen walk by night to see a ghost upon the wall " * 40)
    assert train_mod.main([*_args(corpus, tmp_path / "out"), "train.sample_tokens=20"]) == 0
    assert "--- sample after 2 iterations ---" in capsys.readouterr().out
