"""Generation: KV cache gives the same tokens, sampling filters, the CLI and its errors."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastgpt import GPT, GPTConfig
from fastgpt.generate import generate, stream_text
from fastgpt.model import sample_next
from fastgpt.tokenizers import EOT_TEXT, build_tokenizer
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


def test_stream_text_stops_at_eot_and_does_not_print_it() -> None:
    tok = build_tokenizer("char", [TEXT])
    out = io.StringIO()
    ids = [*tok.encode("to be"), tok.eot_id, *tok.encode(" or")]
    assert stream_text(tok, iter(ids), out) == tok.encode("to be")
    assert out.getvalue() == "to be"


def test_model_generate_takes_tensors_lists_and_text() -> None:
    torch.manual_seed(0)
    tok = build_tokenizer("char", [TEXT])
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)).train()
    prompt = tok.encode("to be")
    reference = list(generate(model, prompt, 12, greedy=True))
    assert model.generate(prompt, 12, greedy=True) == prompt + reference and model.training  # mode restored
    batch = model.generate(torch.tensor([prompt, prompt]), 12, greedy=True)
    assert batch.shape == (2, 5 + 12) and batch[1].tolist() == prompt + reference
    assert model.generate(torch.tensor(prompt), 3, greedy=True).tolist() == prompt + reference[:3]
    text = model.generate("to be", 12, greedy=True, tokenizer=tok)
    assert text == "to be" + tok.decode(reference).split(EOT_TEXT)[0]
    # eot stops a list (and is left out) and fills a finished row of a batch
    rows = model.generate(torch.tensor([prompt, prompt]), 12, greedy=True, eot_id=reference[0])
    assert rows.shape == (2, 5 + 1) and rows[:, -1].tolist() == [reference[0]] * 2
    sampled = list(generate(model.eval(), prompt, 20, top_k=5, generator=torch.Generator().manual_seed(5)))
    assert model.generate(prompt, 20, top_k=5, generator=torch.Generator().manual_seed(5)) == prompt + sampled
    k = max(sampled.index(t) for t in sampled)  # the latest first appearance of a token
    assert k > 2
    assert model.generate(prompt, 20, top_k=5, generator=torch.Generator().manual_seed(5),
                          eot_id=sampled[k]) == prompt + sampled[:k]
    with pytest.raises(ValueError, match="a text prompt needs tokenizer="):
        model.generate("to be", 3)


def test_out_of_range_token_ids_name_the_id_and_vocab_size() -> None:
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))
    message = r"token id 25 is out of range for this model's vocabulary of 20 \(ids 0..19\)"
    with pytest.raises(ValueError, match=message):
        model(torch.tensor([[1, 25, 3]]))
    with pytest.raises(ValueError, match=message):
        list(generate(model, [1, 25], 3))
    with pytest.raises(ValueError, match="token id -1 is out of range"):
        model.generate([-1], 3)
