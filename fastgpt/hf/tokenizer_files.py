"""fastgpt tokenizers as Hugging Face ``transformers`` tokenizers, encoding every text identically.

* ``tokenizers``-based ones (trained ``bpe``, a tokenizer.json, hub tokenizers): their own
  tokenizer.json, with eos/bos/pad set from fastgpt's special ids;
* tiktoken encodings (``gpt2``, ``cl100k_base``, ...): rebuilt as a byte-level BPE with the
  encoding's split regex and ranks, its merges recovered from the ranks (``bpe_merges``);
* char and byte tokenizers have no HF equivalent: ``transformers_tokenizer`` returns None.

One difference remains: HF tokenizers read special-token text such as ``<|endoftext|>`` in the
input as the special id; fastgpt's ``encode`` reads it as plain text.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from tiktoken_ext.openai_public import ENCODING_CONSTRUCTORS
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTok

from fastgpt.tokenizers import HF_FILE, HFTokenizer, TiktokenTokenizer, Tokenizer


def transformers_tokenizer(tokenizer: Tokenizer, model_max_length: int | None = None) -> Any | None:
    """A transformers fast tokenizer encoding exactly as ``tokenizer`` does, or None when there
    is none (char and byte tokenizers). tiktoken encodings become a byte-level BPE whose merges
    are recovered from the encoding's ranks."""
    from transformers import PreTrainedTokenizerFast

    if isinstance(tokenizer, TiktokenTokenizer):
        tok = tiktoken_to_hf(tokenizer.name)
        eot = tok.id_to_token(tokenizer.eot_id)
        specials = dict(eos_token=eot, bos_token=eot, unk_token=eot)
    elif isinstance(tokenizer, HFTokenizer):
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save(tmp)
            tok = HFTok.from_file(str(Path(tmp) / HF_FILE))
        specials = dict(eos_token=tok.id_to_token(tokenizer.eot_id), pad_token=tok.id_to_token(tokenizer.pad_id))
        if tokenizer.bos_id is not None:
            specials["bos_token"] = tok.id_to_token(tokenizer.bos_id)
    else:
        return None
    extra = {"model_max_length": model_max_length} if model_max_length else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials, **extra)


def _byte_symbols() -> list[str]:
    """The printable character standing for each byte in byte-level BPE vocabularies (GPT-2's).

    Printable Latin-1 bytes stand for themselves; the others get code points 256, 257, ... in order.
    """
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    symbols, extra = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list of a byte-pair encoding given only its token ranks.

    A token of rank r was made by one merge; running BPE on its bytes with the tokens ranked
    below r leaves exactly that merge's two parts.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        splits = [i for i in range(1, len(token)) if ranks.get(token[:i], rank) < rank > ranks.get(token[i:], rank)]
        if len(splits) == 1:  # the only way to make it from two earlier tokens (most tokens): no need to run BPE
            merges.append((token[: splits[0]], token[splits[0] :]))
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            pair_ranks = [ranks.get(a + b, math.inf) for a, b in zip(parts, parts[1:])]
            best = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
            if pair_ranks[best] >= rank:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
        elif len(parts) > 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not reachable by merging lower-ranked tokens")
    return merges


def tiktoken_to_hf(name: str) -> HFTok:
    """The tiktoken encoding ``name`` as a ``tokenizers.Tokenizer`` (same ids for every text)."""
    spec = ENCODING_CONSTRUCTORS[name]()  # pat_str, mergeable_ranks, special_tokens
    ranks: dict[bytes, int] = spec["mergeable_ranks"]
    symbols = _byte_symbols()

    def text(token: bytes) -> str:
        return "".join(symbols[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()} | dict(spec["special_tokens"])
    merges = [(text(a), text(b)) for a, b in bpe_merges(ranks)]
    # ignore_merges: a pre-token that is itself in the vocabulary is one token, as in tiktoken
    tok = HFTok(models.BPE(vocab, merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(spec["pat_str"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec["special_tokens"]])
    return tok
