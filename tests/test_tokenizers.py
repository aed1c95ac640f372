"""Every tokenizer kind: round trips, special ids, save/load, and the errors users can cause."""

from __future__ import annotations

import os
import random
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTok
from tokenizers import models, pre_tokenizers

from fastgpt.tokenizers import (
    EOT_TEXT,
    MAX_RUN,
    ByteTokenizer,
    CharTokenizer,
    build_tokenizer,
    load_tokenizer,
    simplify_texts,
    train_bpe,
)

REPO = Path(__file__).resolve().parents[1]
CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40
SAMPLE = "Speak, hear me.\nAll: proceed."
UNICODE = "naïve café — 日本語 😀 <|endoftext|> 12345\n\ttabs"
TIKTOKEN = {"gpt2": 50257, "r50k_base": 50257, "cl100k_base": 100277, "o200k_base": 200019}


def _run_offline(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with a dead proxy, so no download can succeed."""
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", **env}
    env.pop("NO_PROXY", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO, env=env)


def test_char_round_trip_and_ids():
    tok = build_tokenizer("char", [CORPUS])
    chars = sorted(set(CORPUS))
    assert tok.vocab_size == len(chars) + 2
    assert (tok.eot_id, tok.pad_id, tok.bos_id) == (len(chars), len(chars) + 1, None)
    assert tok.encode("A") == [chars.index("A")]
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    assert tok.decode([*tok.encode("hear"), tok.eot_id, tok.pad_id]) == "hear" + EOT_TEXT
    assert tok.encode_batch(["All", "", "speak"]) == [tok.encode("All"), [], tok.encode("speak")]


def test_char_unknown_character_message():
    tok = build_tokenizer("char", ["abc"])
    with pytest.raises(ValueError, match=r"cannot encode 'é' \(U\+00E9\): not in .* vocabulary of 3 characters"):
        tok.encode("abé")
    with pytest.raises(ValueError, match=r"'ß' \(U\+00DF\), 'é' \(U\+00E9\)"):
        tok.encode_batch(["ab", "éßa"])
    with pytest.raises(ValueError, match="pass texts"):
        build_tokenizer("char")


def test_byte_round_trip():
    tok = build_tokenizer("byte")
    assert (tok.vocab_size, tok.eot_id, tok.pad_id) == (258, 256, 257)
    assert tok.encode("hé") == [104, 0xC3, 0xA9]
    assert tok.decode(tok.encode(UNICODE)) == UNICODE
    assert tok.decode([104, 256, 257, 105]) == "h" + EOT_TEXT + "i"
    assert tok.decode([0xC3]) == "\ufffd"  # a cut UTF-8 sequence decodes with a replacement
    with pytest.raises(ValueError, match=r"cannot decode id 258 .* \[0, 258\)"):
        tok.decode([258])


@pytest.mark.parametrize("name", sorted(TIKTOKEN))
def test_tiktoken_round_trip(name, tiktoken_cache):
    tok = build_tokenizer(name)
    assert tok.vocab_size == TIKTOKEN[name]
    assert tok.decode([tok.eot_id]) == EOT_TEXT and tok.pad_id == tok.eot_id
    ids = tok.encode(UNICODE)
    assert tok.eot_id not in ids  # "<|endoftext|>" in text is plain text, never the special id
    assert tok.decode(ids) == UNICODE
    assert tok.encode_batch([UNICODE, "hi"]) == [ids, tok.encode("hi")]


def test_tiktoken_offline_error_names_cache_dir(tmp_path):
    code = "from fastgpt.tokenizers import build_tokenizer; build_tokenizer('cl100k_base')"
    result = _run_offline(code, TIKTOKEN_CACHE_DIR=str(tmp_path))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: tokenizer 'cl100k_base' needs its BPE file")
    assert "TIKTOKEN_CACHE_DIR" in last and str(tmp_path) in last


def test_bpe_round_trip_and_specials():
    tok = build_tokenizer("bpe", [CORPUS], vocab_size=300)
    assert tok.vocab_size == 300
    assert (tok.eot_id, tok.pad_id) == (0, 1)  # the special tokens come first
    assert len(tok.encode("First Citizen")) < len("First Citizen")  # merges were learned
    ids = tok.encode(UNICODE)
    assert tok.eot_id not in ids and max(ids) < tok.vocab_size
    assert tok.decode(ids) == UNICODE  # byte level: characters never seen still round-trip
    assert tok.decode([tok.eot_id]) == EOT_TEXT
    with pytest.raises(ValueError, match="at least 258"):
        build_tokenizer("bpe", [CORPUS], vocab_size=100)


def test_bpe_simplify_splits_digits_and_drops_rare_symbols():
    text = "year 12345 and 12345 again, 12345! " * 50
    assert len(build_tokenizer("bpe", [text], vocab_size=400).encode(" 12345")) == 1
    simple = build_tokenizer("bpe", [text], vocab_size=400, simplify=True)
    assert [simple.decode([i]) for i in simple.encode(" 12345")] == [" ", "1", "2", "3", "4", "5"]
    assert simple.decode(simple.encode("12345 日")) == "12345 日"
    rare, frequent = "日本", "ж" * 150
    out = simplify_texts([f"café {rare} {frequent} — ok"], min_count=100)
    assert out == [f"café  {frequent} — ok"]  # Latin letters and punctuation always stay


def _small_hf_json(path: Path, specials: list[str]) -> Path:
    vocab = {t: i for i, t in enumerate([*specials, "[UNK]", "hello", "world"])}
    tok = HFTok(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.add_special_tokens(specials)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    return path / "tokenizer.json"


def test_local_tokenizer_json(tmp_path):
    file = _small_hf_json(tmp_path / "llama_like", ["<s>", "</s>", "<pad>"])
    for name in (str(file), str(file.parent)):
        tok = build_tokenizer(name)
        assert (tok.bos_id, tok.eot_id, tok.pad_id, tok.vocab_size) == (0, 1, 2, 6)
        assert tok.encode("hello world") == [4, 5]
    no_pad = build_tokenizer(str(_small_hf_json(tmp_path / "no_pad", ["</s>"])))
    assert no_pad.pad_id == no_pad.eot_id and no_pad.bos_id is None
    with pytest.raises(ValueError, match="none of the end-of-text tokens"):
        build_tokenizer(str(_small_hf_json(tmp_path / "no_eot", ["<mask>"])))


def test_trained_bpe_loads_as_tokenizer_json(tmp_path):
    bpe = build_tokenizer("bpe", [CORPUS], vocab_size=300)
    bpe.save(tmp_path)
    again = build_tokenizer(str(tmp_path / "tokenizer.json"))
    assert (again.eot_id, again.pad_id, again.vocab_size) == (bpe.eot_id, bpe.pad_id, bpe.vocab_size)
    assert again.encode(UNICODE) == bpe.encode(UNICODE)


@pytest.mark.parametrize("name", ["char", "byte", "bpe", "gpt2", "json"])
def test_save_load_round_trip(name, tmp_path, request):
    if name == "gpt2":
        request.getfixturevalue("tiktoken_cache")
    if name == "json":
        name = str(_small_hf_json(tmp_path / "src", ["<s>", "</s>", "<pad>"]))
    tok = build_tokenizer(name, [CORPUS], vocab_size=300)
    tok.save(tmp_path / "saved")
    loaded = load_tokenizer(tmp_path / "saved")
    assert type(loaded) is type(tok)
    for attr in ("name", "vocab_size", "eot_id", "bos_id", "pad_id", "special_ids"):
        assert getattr(loaded, attr) == getattr(tok, attr), attr
    assert loaded.encode(SAMPLE) == tok.encode(SAMPLE)
    assert loaded.decode(tok.encode(SAMPLE)) == tok.decode(tok.encode(SAMPLE))


def test_load_tokenizer_missing_meta(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer_meta.json is missing"):
        load_tokenizer(tmp_path)


def test_unknown_and_missing_names():
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt5'; valid: char, byte, gpt2, .*cl100k_base.*bpe"):
        build_tokenizer("gpt5")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_tokenizer("./missing/tokenizer.json")


def test_hub_offline_error_is_one_line():
    code = "from fastgpt.tokenizers import build_tokenizer; build_tokenizer('llama_32k')"
    result = _run_offline(code, HF_HUB_OFFLINE="1")
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: tokenizer 'llama_32k': could not get tokenizer.json")
    assert "'hf-internal-testing/llama-tokenizer'" in last and "local tokenizer.json" in last


def test_char_and_byte_classes_directly():
    assert CharTokenizer("ba").chars == "ab"
    with pytest.raises(ValueError, match="distinct characters"):
        CharTokenizer("aab")
    assert ByteTokenizer().special_ids == (256, 257)


def test_bpe_trains_quickly_on_text_without_whitespace() -> None:
    # one 1 MB pre-token made BPE training quadratic (minutes); runs are now cut at MAX_RUN characters
    text = "".join(random.Random(0).choice(string.ascii_lowercase) for _ in range(1_000_000))
    start = time.monotonic()
    tok = train_bpe([text], vocab_size=1024)
    assert time.monotonic() - start < 60
    assert tok.decode(tok.encode(text[:5000])) == text[:5000]


def test_bpe_cuts_only_runs_longer_than_max_run() -> None:
    from tokenizers import pre_tokenizers

    text = CORPUS + UNICODE + "  a  b\t\tc  \n"
    tok = train_bpe([text], vocab_size=600)
    split = [piece for piece, _ in tok._tok.pre_tokenizer.pre_tokenize_str(text)]
    plain = [piece for piece, _ in pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text)]
    assert split == plain  # ordinary text: the same pre-tokens as ByteLevel alone
    long_run = "x" * (3 * MAX_RUN + 5)
    pieces = [piece for piece, _ in tok._tok.pre_tokenizer.pre_tokenize_str(long_run)]
    assert [len(p) for p in pieces] == [MAX_RUN, MAX_RUN, MAX_RUN, 5]
