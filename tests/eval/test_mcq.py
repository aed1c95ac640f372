"""Log-likelihood scoring against a plain, unbatched computation; cropping, greedy flags, ties."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastgpt.eval.mcq import MCQItem, encode_pair, evaluate_mcq, score_choices, score_tokens
from fastgpt.eval.tasks import load_items
from fastgpt.model import GPT, GPTConfig
from fastgpt.tokenizers import ByteTokenizer, build_tokenizer


def _model(vocab: int, block: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    # a larger init than GPT-2's makes the choices' scores differ clearly
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=32, init_gain=20.0)).eval()


def _logprob(model: GPT, context: list[int], continuation: list[int]) -> float:
    """One full forward over context + continuation, summing the continuation's log-probs."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logp = model(ids[:, :-1])[0][0].log_softmax(-1)  # (T - 1, vocab)
    return sum(logp[len(context) - 1 + j, tok].item() for j, tok in enumerate(continuation))


def test_hellaswag_matches_unbatched_reference(shared_data: Path, tiktoken_cache: Path) -> None:
    tok = build_tokenizer("gpt2")
    model = _model(tok.vocab_size, 256)
    items = load_items("hellaswag", shared_data / "hellaswag_val.jsonl", limit=20)
    assert len(items) == 20 and all(len(it.choices) == 4 for it in items)
    scores = score_choices(model, tok, items, batch_size=7)
    acc = acc_norm = 0
    for n, (item, got) in enumerate(zip(items, scores)):
        ctx = tok.encode(item.context)
        want = [_logprob(model, ctx, tok.encode(" " + ending)) for ending in item.choices]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-5, atol=1e-4)
        if n < 8:
            acc += max(range(4), key=lambda i: want[i]) == item.label
            acc_norm += max(range(4), key=lambda i: want[i] / len(item.choices[i])) == item.label
    assert evaluate_mcq(model, tok, items[:8], batch_size=5) == {"acc": acc / 8, "acc_norm": acc_norm / 8, "n": 8}


def test_long_sequences_are_cropped_from_the_left() -> None:
    model = _model(258, 8)
    ctx, cont = list(range(40, 60)), [70, 71, 72]
    (got, _), = score_tokens(model, [(ctx, cont)])
    assert got == pytest.approx(_logprob(model, ctx[-6:], cont), abs=1e-5)  # 6 + 3 = block_size + 1 tokens
    long = list(range(80, 92))  # 12 continuation tokens: the last 8 are scored, after long[3] alone
    (got, _), = score_tokens(model, [(ctx, long)])
    assert got == pytest.approx(_logprob(model, long[3:4], long[4:]), abs=1e-5)


def test_is_greedy_only_for_the_argmax_continuation() -> None:
    model = _model(258, 16)
    ids = [65, 66]
    for _ in range(4):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    other = (ids[-1] + 1) % 258
    results = score_tokens(model, [(ids[:2], ids[2:]), (ids[:2], ids[2:-1] + [other])], batch_size=2)
    assert [greedy for _, greedy in results] == [True, False]


def test_encode_pair_moves_trailing_space_and_fills_empty_context() -> None:
    tok = ByteTokenizer()
    assert encode_pair(tok, "ab ", "c") == ([97, 98], [32, 99])
    assert encode_pair(tok, "", "c") == ([tok.eot_id], [99])


def test_item_pairs_and_ties() -> None:
    item = MCQItem(["x _", "y _"], ["z", "z"], 1)
    assert item.pairs() == [("x _", " z"), ("y _", " z")]
    assert MCQItem("", ["good.", "bad."], 0).pairs() == [("", "good."), ("", "bad.")]
    model = _model(258, 16)
    # identical choices score identically: the first one wins, as argmax does
    assert evaluate_mcq(model, ByteTokenizer(), [MCQItem("q", ["a", "a"], 1)])["acc"] == 0.0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(context="q", choices=["a"], label=0), "at least 2 non-empty choices"),
        (dict(context="q", choices=["a", ""], label=0), "at least 2 non-empty choices"),
        (dict(context=["q"], choices=["a", "b"], label=0), "1 contexts for 2 choices"),
        (dict(context="q", choices=["a", "b"], label=2), "label 2 is not the index"),
    ],
)
def test_item_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MCQItem(**kwargs)
