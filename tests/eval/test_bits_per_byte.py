"""Bits per byte and per character: exact byte/char counts for every tokenizer kind, hand-computed
values for a uniform model, and agreement across tokenizers on the same text."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastgpt.eval.bits_per_byte import TokenLengths, bits_per
from fastgpt.eval.evaluate import evaluate_loss
from fastgpt.model import GPT, GPTConfig
from fastgpt.tokenizers import ByteTokenizer, CharTokenizer, build_tokenizer

TEXT = "naïve café — 東京 🙂 the king's wall\nü"  # 1-, 2-, 3- and 4-byte characters


def _uniform_model(vocab_size: int, block_size: int = 16) -> GPT:
    """A model whose logits are all zero: every token costs ln(vocab_size) nats."""
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=8,
                          tie_embeddings=False))
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model.eval()


@pytest.mark.parametrize("kind", ["char", "byte", "bpe", "gpt2"])
def test_token_lengths_sum_to_the_texts_bytes_and_characters(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "gpt2":
        request.getfixturevalue("tiktoken_cache")
    tok = build_tokenizer(kind, [TEXT * 20], vocab_size=300) if kind in ("char", "bpe") else build_tokenizer(kind)
    ids = tok.encode(TEXT)
    assert any(len(tok.decode([i]).encode()) != len(tok.decode([i])) for i in ids)  # multi-byte pieces present
    lengths = TokenLengths(tok)
    assert lengths.count(torch.tensor(ids)) == (len(TEXT.encode("utf-8")), len(TEXT))
    # specials are no text, ignored targets count nothing
    assert lengths.count(torch.tensor([tok.eot_id, tok.pad_id, -1])) == (0, 0)


def test_uniform_model_bits_per_byte_match_a_hand_computation() -> None:
    tok = CharTokenizer.train([TEXT])
    tokens = np.asarray(tok.encode(TEXT) + [tok.eot_id] + tok.encode(TEXT), dtype=np.int64)
    got = evaluate_loss(_uniform_model(tok.vocab_size), tokens, batch_size=3, tokenizer=tok)
    scored = len(tokens) - 1  # every token but the first, the eot among them
    text = TEXT[1:] + TEXT  # the text the scored targets stand for (eot: none)
    nats = scored * math.log(tok.vocab_size)
    assert got["tokens"] == scored and got["loss"] == pytest.approx(math.log(tok.vocab_size), rel=1e-6)
    assert got["bytes"] == len(text.encode("utf-8"))
    assert got["bits_per_byte"] == pytest.approx(nats / math.log(2) / len(text.encode("utf-8")), rel=1e-6)
    assert got["bits_per_char"] == pytest.approx(nats / math.log(2) / len(text), rel=1e-6)


def test_uniform_byte_model_costs_log2_vocab_bits_per_byte() -> None:
    tok = ByteTokenizer()
    tokens = np.asarray(tok.encode(TEXT * 3), dtype=np.int64)
    got = evaluate_loss(_uniform_model(tok.vocab_size), tokens, tokenizer=tok)
    assert got["bits_per_byte"] == pytest.approx(math.log2(258), rel=1e-6)
    text = (TEXT * 3)[1:]  # the first byte is 'n': one character, one byte
    assert got["bits_per_char"] == pytest.approx(math.log2(258) * len(text.encode()) / len(text), rel=1e-6)


def test_the_same_text_model_gives_the_same_bits_with_char_and_byte_tokens() -> None:
    """A model of text that pays ln(K) nats per character, read through a char tokenizer (ln K per token)
    and through bytes (ln K on each character's first byte, 0 on the rest): one bpb, one bpc."""
    text, K = TEXT * 4, 50
    char, byte = CharTokenizer.train([text]), ByteTokenizer()
    char_ids, byte_ids = torch.tensor(char.encode(text)), torch.tensor(byte.encode(text))
    char_nats = len(char_ids) * math.log(K)
    byte_nats = sum(math.log(K) for b in text.encode() if b & 0xC0 != 0x80)
    (cb, cc), (bb, bc) = TokenLengths(char).count(char_ids), TokenLengths(byte).count(byte_ids)
    assert len(byte_ids) > len(char_ids) and (cb, cc) == (bb, bc) == (len(text.encode()), len(text))
    assert bits_per(char_nats, cb) == pytest.approx(bits_per(byte_nats, bb), rel=1e-12)
    assert bits_per(char_nats, cc) == pytest.approx(math.log2(K), rel=1e-12)
    assert math.isnan(bits_per(1.0, 0))


def test_val_loss_of_a_bidirectional_model_is_refused() -> None:
    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8, causal=False))
    with pytest.raises(ValueError, match="bidirectional model .* sees the tokens it predicts"):
        evaluate_loss(model, np.arange(10) % 10)
