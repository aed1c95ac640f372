"""Bits per byte and per character: a loss that compares across tokenizers.

A loss in nats per token depends on how much text a token holds. Divided by the text instead,
``bits_per_byte = (sum of the token losses in nats) / (ln 2 * UTF-8 bytes of the tokens scored)``,
and ``bits_per_char`` likewise over characters, it measures the model, not the tokenizer.

``TokenLengths`` holds, for every id, the UTF-8 bytes the token stands for and how many
characters start in them (the bytes that are not UTF-8 continuation bytes ``0b10xxxxxx``), so that
summing over a stream gives exactly its bytes and characters even where a token holds a piece of a
character (byte tokenizers, byte-level BPE). Special tokens (eot, pad, bos) are no text: 0 bytes and
0 characters, while their loss still counts in the sum of nats (every tokenizer has one eot per
document, so this costs every tokenizer alike).

The bytes of a token: char and byte tokenizers by construction; tiktoken's own bytes of each
token; byte-level BPE tokenizers (``bpe`` and tokenizer.json files with a ByteLevel decoder) by
undoing GPT-2's byte-to-character map. Other tokenizer.json files (SentencePiece-style) decode
each token alone, which is exact unless a token's text depends on its neighbours (a leading space
a decoder strips at the start of a text).
"""

from __future__ import annotations

import math

import torch
from tokenizers import decoders

from fastgpt.tokenizers import ByteTokenizer, CharTokenizer, HFTokenizer, TiktokenTokenizer, Tokenizer


def _gpt2_unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's byte -> printable character map that byte-level BPE vocabularies use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:  # unprintable bytes map to the code points from 256 up, in byte order
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_bytes(tokenizer: Tokenizer) -> list[bytes]:
    """The UTF-8 bytes each id of ``tokenizer`` stands for (b"" for special and unused ids)."""
    specials = set(tokenizer.special_ids)
    out = [b""] * tokenizer.vocab_size
    if isinstance(tokenizer, CharTokenizer):
        for i, ch in enumerate(tokenizer.chars):
            out[i] = ch.encode("utf-8")
    elif isinstance(tokenizer, ByteTokenizer):
        out[:256] = [bytes([b]) for b in range(256)]
    elif isinstance(tokenizer, TiktokenTokenizer):
        enc = tokenizer._enc
        specials |= {enc.encode_single_token(s) for s in enc.special_tokens_set}
        for i in range(enc.n_vocab):
            if i not in specials:
                try:
                    out[i] = enc.decode_single_token_bytes(i)
                except KeyError:  # an id the encoding leaves unassigned
                    pass
    elif isinstance(tokenizer, HFTokenizer):
        tok = tokenizer._tok
        added = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        to_byte = _gpt2_unicode_to_byte() if isinstance(tok.decoder, decoders.ByteLevel) else None
        for text, i in tok.get_vocab(with_added_tokens=True).items():
            if i in specials or i in added:
                continue
            if to_byte is not None and all(c in to_byte for c in text):
                out[i] = bytes(to_byte[c] for c in text)
            elif to_byte is not None:  # an added token holding plain text
                out[i] = text.encode("utf-8")
            else:
                out[i] = tok.decode([i], skip_special_tokens=False).encode("utf-8")
    else:
        raise TypeError(f"no byte lengths for a {type(tokenizer).__name__}")
    for i in specials:
        out[i] = b""
    return out


class TokenLengths:
    """Per-id UTF-8 byte and character counts of a tokenizer, for counting the text of targets."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        pieces = token_bytes(tokenizer)
        self.bytes = torch.tensor([len(p) for p in pieces], dtype=torch.int64)  # (V,)
        self.chars = torch.tensor([sum((b & 0xC0) != 0x80 for b in p) for p in pieces], dtype=torch.int64)  # (V,)

    def count(self, targets: torch.Tensor) -> tuple[int, int]:
        """(bytes, characters) of the ids in ``targets`` (any shape); ids < 0 (not scored) count nothing."""
        ids = targets[targets >= 0].cpu()
        return int(self.bytes[ids].sum()), int(self.chars[ids].sum())


def bits_per(nats: float, units: int) -> float:
    """``nats`` of loss in bits per unit of text (byte or character); NaN for no text."""
    return nats / (math.log(2) * units) if units > 0 else math.nan
