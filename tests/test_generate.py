"""Generation: KV cache gives the same tokens, sampling filters, the CLI and its errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastgpt import GPT, GPTConfig
from fastgpt.generate import generate, sample_next
from fastgpt.tokenizers import build_tokenizer
from fastgpt.train.checkpoint import save_checkpoint

TEXT = "to be or not to be, that is the question\n"


@pytest.mark.parametrize("opts", [{}, {"pos_encoding": "rope", "n_kv_head": 1, "norm": "rms_norm"},
                                  {"tie_attn_proj_across_layers": True, "pos_encoding": "sincos"}])
def test_kv_cache_gives_identical_tokens_past_block_size(opts: dict) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=12, n_layer=2, n_head=2, n_embd=16, **opts)).eval()
    prompt = [1, 2, 3, 4, 5]
    for kwargs in ({"greedy": True}, {"temperature": 1.0, "top_k": 10}):
        runs = []
        for use_cache in (True, False):
            g = torch.Generator().manual_seed(7)
            runs.append(list(generate(model, prompt, 30, use_cache=use_cache, generator=g, **kwargs)))
        assert runs[0] == runs[1] and len(runs[0]) == 30  # 35 tokens: the window slides past block_size


def test_prompt_longer_than_block_is_cropped_and_eot_stops() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8)).eval()
    out = list(generate(model, list(range(20)), 5, greedy=True))
    assert len(out) == 5
    first = out[0]
    assert list(generate(model, list(range(20)), 5, greedy=True, eot_id=first)) == [first]


def test_sampling_filters() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, 1.0, None, None, True, g).item() == 3
    draws = {sample_next(logits, 1.0, 2, None, False, g).item() for _ in range(200)}
    assert draws == {2, 3}
    # softmax of (0,1,2,3) = (.03, .09, .24, .64): the top two hold 0.88 of the mass
    draws = {sample_next(logits, 1.0, None, 0.8, False, g).item() for _ in range(200)}
    assert draws == {2, 3}
    draws = {sample_next(logits, 1.0, None, 0.5, False, g).item() for _ in range(200)}
    assert draws == {3}


@pytest.fixture(scope="module")
def char_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    tok = build_tokenizer("char", [TEXT])
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg)
    save_checkpoint(out, 1, model, tok, {"model": dataclasses.asdict(cfg)}, {"iter": 1})
    return out


def _generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastgpt.generate", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_streams_samples(char_checkpoint: Path) -> None:
    proc = _generate("--checkpoint", str(char_checkpoint), "--prompt", "to be", "--max_new_tokens", "20",
                     "--num_samples", "2", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("--- sample") == 2 and proc.stdout.count("to be") >= 2


@pytest.mark.parametrize("args,message", [
    (["--prompt", "é"], "cannot encode"),
    (["--temperature", "-1"], "--temperature"),
    (["--top_p", "2"], "--top_p"),
])
def test_cli_errors(char_checkpoint: Path, args: list[str], message: str) -> None:
    proc = _generate("--checkpoint", str(char_checkpoint), *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_cli_missing_checkpoint(tmp_path: Path) -> None:
    proc = _generate("--checkpoint", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
