"""Instruction fine-tuning end to end: a run learns a task from its prompts, continues from a run
(train.init_from=DIR) or a Hugging Face model, and generate answers prompt files in batches."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from fastgpt import generate as generate_mod
from fastgpt.checkpoint import load, resolve_checkpoint
from fastgpt.data.chat_template import ChatTemplate
from fastgpt.generate import generate, generate_batch
from fastgpt.train import cli as train_mod

LETTERS = "abcdefghij"
# a 2-layer char model in fp32 (train.dtype=auto picks by timing: two runs could differ); an example
# (<|user|>\nabcd\n<|assistant|>\ndcba<eot>) is 33 tokens: one row
RUN = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=32", "model.bias=false",
       "train.batch_size=16", "train.eval_iters=2", "train.log_interval=50", "train.sample_tokens=0",
       "optim.lr=3e-3", "optim.warmup_iters=20", "train.device=cpu", "train.dtype=float32", "data.tokenizer=char",
       "data.mode=sft"]


def _words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice(LETTERS) for _ in range(4)) for _ in range(n)]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 200-step SFT run on "reverse four letters", and prompts none of its rows holds."""
    tmp = tmp_path_factory.mktemp("sft")
    words = _words(random.Random(0), 1500)
    rows = tmp / "reverse.jsonl"
    rows.write_text("".join(json.dumps({"prompt": w, "response": w[::-1]}) + "\n" for w in words))
    held_out = [w for w in _words(random.Random(1), 200) if w not in set(words)][:60]
    args = [*RUN, f"data.dataset={rows}", f"data.cache_dir={tmp / 'cache'}", "train.eval_interval=1000"]
    train_mod.main([*args, f"train.out_dir={tmp / 'out'}", "train.max_iters=200"])
    return {"tmp": tmp, "args": args, "out": tmp / "out", "held_out": held_out}


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _answer(run: dict, prompts: list[str], *flags: str, name: str = "answers") -> list[dict]:
    (run["tmp"] / f"{name}.txt").write_text("\n".join(prompts) + "\n")
    out = run["tmp"] / f"{name}.jsonl"
    generate_mod.main(["--checkpoint", str(run["out"]), "--prompt_file", str(run["tmp"] / f"{name}.txt"),
                       "--output", str(out), "--greedy", "--max_new_tokens", "8", "--device", "cpu", *flags])
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_sft_learns_to_reverse_held_out_prompts(run: dict) -> None:
    answers = _answer(run, run["held_out"], "--chat")
    assert [a["prompt"] for a in answers] == run["held_out"]  # one line per prompt, in order
    right = sum(a["response"] == a["prompt"][::-1] for a in answers) / len(answers)
    assert right >= 0.7, answers[:10]
    losses = [e["val_loss"] for e in _events(run["out"]) if "val_loss" in e]
    assert losses[-1] < 0.2 * losses[0]


def test_batched_replies_equal_one_at_a_time(run: dict) -> None:
    prompts = run["held_out"][:6] + ["abc", "abcde", "ab", "bcd"]  # four token lengths: four groups
    assert _answer(run, prompts, "--chat", name="batched") == _answer(run, prompts, "--chat", "--batch_size", "1",
                                                                      name="single")
    plain = _answer(run, prompts, name="plain")  # no template: the prompt text continued
    assert len(plain) == len(prompts)
    model, tok = load(run["out"])
    template = ChatTemplate(tok)
    encoded = [template.prompt([{"role": "user", "content": p}]) for p in prompts[:6]]
    together = generate_batch(model, encoded, 8, greedy=True, stop_ids=template.stop_ids)
    alone = [list(generate(model, ids, 8, greedy=True, eot_id=tok.eot_id)) for ids in encoded]
    assert together == alone


def test_chat_prompt_prints_only_the_reply(run: dict, capsys: pytest.CaptureFixture) -> None:
    word = run["held_out"][0]
    expected = _answer(run, [word], "--chat", name="one")[0]["response"]
    capsys.readouterr()
    generate_mod.main(["--checkpoint", str(run["out"]), "--chat", "--prompt", word, "--greedy",
                       "--max_new_tokens", "8", "--device", "cpu"])
    assert capsys.readouterr().out == expected + "\n"


def test_init_from_a_run_continues_from_its_weights(run: dict) -> None:
    out = run["tmp"] / "continued"
    train_mod.main([*run["args"], f"train.init_from={run['out']}", f"train.out_dir={out}", "train.max_iters=1"])
    source = [e for e in _events(run["out"]) if "val_loss" in e][-1]
    first = [e for e in _events(out) if "val_loss" in e][0]
    assert first["iter"] == 0 and source["iter"] == 200
    assert first["val_loss"] == pytest.approx(source["val_loss"], rel=1e-6)
    assert first["train_loss"] == pytest.approx(source["train_loss"], rel=1e-6)


@pytest.mark.parametrize("extra,message", [
    (["data.tokenizer=byte"], "was trained with the tokenizer 'char' (23 tokens), but data.tokenizer='byte'"),
    (["train.init_from=nowhere/run"], "train.init_from='nowhere/run' is not 'scratch'"),
])
def test_init_from_refusals_are_one_line(run: dict, cli_error, extra: list[str], message: str) -> None:
    init = [] if any(e.startswith("train.init_from") for e in extra) else [f"train.init_from={run['out']}"]
    line = cli_error(train_mod.main, [*run["args"], *init, *extra, f"train.out_dir={run['tmp'] / 'refused'}"])
    assert message in line


def test_generate_input_errors_are_one_line(run: dict, cli_error) -> None:
    (run["tmp"] / "blank.txt").write_text("\n  \n")
    base = ["--checkpoint", str(run["out"]), "--device", "cpu"]
    cases = [
        (["--prompt_file", str(run["tmp"] / "missing.txt")], "does not exist"),
        (["--prompt_file", str(run["tmp"] / "blank.txt")], "has no prompts"),
        (["--prompt", "abcd", "--output", str(run["tmp"] / "no" / "out.jsonl")], "does not exist"),
        (["--prompt", "abcd", "--prompt_file", str(run["tmp"] / "blank.txt")], "not both"),
        (["--chat", "--prompt", "ABCD"], "--prompt: cannot encode 'A'"),
    ]
    for flags, message in cases:
        assert message in cli_error(generate_mod.main, [*base, *flags])


def test_sft_from_a_hugging_face_model(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=258, n_positions=64,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path / "gpt2-byte")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"instruction": w, "output": w[::-1]}) + "\n"
                            for w in _words(random.Random(0), 40)))
    # a learning rate too small to move the weights: the checkpoint must hold the HF model's
    train_mod.main([f"data.dataset={rows}", "data.mode=sft", "data.tokenizer=byte", f"data.cache_dir={tmp_path / 'c'}",
                    f"train.init_from=hf:{tmp_path / 'gpt2-byte'}", f"train.out_dir={tmp_path / 'out'}",
                    "train.max_iters=2", "train.batch_size=4", "train.eval_iters=1", "train.sample_tokens=0",
                    "optim.lr=1e-12", "optim.min_lr=0", "optim.warmup_iters=1", "train.device=cpu"])
    model, tok = load(tmp_path / "out")
    assert model.config.block_size == 64 and tok.name == "byte"
    idx = torch.randint(0, 258, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, rtol=1e-4, atol=1e-4)


def test_init_from_a_char_run_with_the_runs_tokenizer(run: dict, cli_error) -> None:
    rows = run["tmp"] / "copy.jsonl"  # fewer letters: a char tokenizer built on them is another one
    rows.write_text("".join(json.dumps({"prompt": w, "response": w}) + "\n"
                            for w in ["".join(random.Random(i).choice("abcde") for _ in range(4)) for i in range(64)]))
    ckpt = resolve_checkpoint(run["out"], "best")
    args = [*RUN, f"data.dataset={rows}", f"data.cache_dir={run['tmp'] / 'cache'}", "train.max_iters=2",
            f"train.init_from={run['out']}", f"train.out_dir={run['tmp'] / 'copy'}"]
    assert f"data.tokenizer={str(ckpt)!r} reads it from the checkpoint" in cli_error(train_mod.main, args)
    train_mod.main([*args, f"data.tokenizer={ckpt}"])
    assert load(run["tmp"] / "copy")[1].chars == load(run["out"])[1].chars
