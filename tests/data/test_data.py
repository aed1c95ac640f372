"""Sources, preparation and its cache, and the batch loader's modes, ranks and resume."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastgpt.data import DataConfig, PreparedData, TokenLoader, prepare_data
from fastgpt.data.sources import clean_play, load_documents
from fastgpt.tokenizers import EOT_TEXT

DOCS = [f"Tweet {i}: the quick brown fox, number {i * 7}." for i in range(40)]


def _prepare(tmp_path: Path, dataset: str | list[str], **kwargs) -> PreparedData:
    return prepare_data(DataConfig(dataset=dataset, cache_dir=str(tmp_path / "cache"), **kwargs), progress=False)


def _stream(data: PreparedData) -> str:
    tokens = np.concatenate([data.train_tokens(), data.val_tokens()])
    return data.tokenizer.decode(tokens.tolist())


def _write_jsonl(path: Path, docs: list[str], column: str = "tweet") -> Path:
    path.write_text("".join(json.dumps({"id": i, column: d}) + "\n" for i, d in enumerate(docs)))
    return path


# --- config and sources -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"val_fraction": 1.0}, r"data.val_fraction must be in \[0, 1\)"),
        ({"sample_ratio": 0.0}, r"data.sample_ratio must be in \(0, 1\]"),
        ({"mode": "stream"}, "data.mode must be one of random, epoch, padded, sft, got 'stream'"),
        ({"dataset": ["a", "b"], "weights": [1.0]}, "data.weights must be 2 positive numbers"),
        ({"dataset": []}, "data.dataset must be a non-empty"),
        ({"vocab_size": 100}, "data.vocab_size must be >= 258"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**kwargs)


def test_clean_play_strips_markup():
    markdown = (
        "# Hamlet\n\n## ACT I\n\n_FRANCISCO at his post. Enter to him\nBERNARDO_\n\n"
        "**BERNARDO**  \nWho's there?  \nStand, ho!\n\n**HORATIO**  \n__\\[Aside]_  \nFriends.\n\n"
        "*Exit.*\n\n**MARCELLUS**  \nFarewell. _Exit_\n"
    )
    assert clean_play(markdown) == (
        "Hamlet\n\nACT I\n\nBERNARDO:\nWho's there?\nStand, ho!\n\nHORATIO:\nFriends.\n\nMARCELLUS:\nFarewell.\n"
    )


def test_local_formats_and_folders(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text(f"one{EOT_TEXT}two\n{EOT_TEXT}\n")
    _write_jsonl(tmp_path / "d" / "b.jsonl", ["three", "", "four"], column="text")
    (tmp_path / "d" / "c.json").write_text(json.dumps([{"text": "five"}, {"text": None}]))
    with open(tmp_path / "d" / "e.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text", "label"], ['six, "quoted"\nline', "1"]])
    (tmp_path / "d" / "ignored.md").write_text("not data")
    assert load_documents(str(tmp_path / "d")) == ["one", "two\n", "three", "four", "five", 'six, "quoted"\nline']


def test_parquet_source(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"tweet": DOCS[:3], "n": [1, 2, 3]}), tmp_path / "t.parquet")
    assert load_documents(str(tmp_path / "t.parquet"), "tweet") == DOCS[:3]
    with pytest.raises(ValueError, match=r"no column 'text'; its columns are \['tweet', 'n'\]"):
        load_documents(str(tmp_path / "t.parquet"))


def test_source_errors(tmp_path):
    _write_jsonl(tmp_path / "t.jsonl", DOCS)
    with pytest.raises(ValueError, match=r"no column 'text'; its columns are \['id', 'tweet'\]"):
        load_documents(str(tmp_path / "t.jsonl"))
    for missing in ("missing.txt", "./missing", "data/sub/x"):
        with pytest.raises(FileNotFoundError, match="no such file or folder"):
            load_documents(missing)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="dataset '.*empty.txt' has no text"):
        _prepare(tmp_path, str(tmp_path / "empty.txt"))


def test_hub_dataset_offline_is_one_line_and_imports_stay_lazy():
    code = (
        "import sys, fastgpt.data\n"
        "assert not {'datasets', 'transformers', 'wandb'} & set(sys.modules), 'heavy import'\n"
        "fastgpt.data.load_documents('someone/some_dataset')"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: dataset 'someone/some_dataset' is not a local path, and loading it")


def _load_in_subprocess(name: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    code = (
        "import sys, fastgpt.data\n"
        "try:\n"
        f"    fastgpt.data.load_documents({name!r})\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
        "print('datasets imported' if 'datasets' in sys.modules else 'datasets not imported')\n"
    )
    base = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper() and not k.startswith("HF_")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**base, **env})


def test_no_network_fails_at_once_and_names_the_local_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tinystories_sample.txt").write_text("Once upon a time.")
    # a closed port: the one connection attempt is refused at once, as on a machine without network
    result = _load_in_subprocess("tinystories_sample", tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    message, imported = result.stdout.strip().splitlines()
    assert message.startswith("dataset 'tinystories_sample' is not a local path, and the Hugging Face hub cannot "
                              "be reached (cannot connect to 127.0.0.1:9")
    assert "did you mean the local file 'data/tinystories_sample.txt'?" in message
    assert imported == "datasets not imported"  # no hub client, so none of its retries


def test_offline_mode_names_the_local_file(tmp_path):
    (tmp_path / "tinystories_sample.jsonl").write_text('{"text": "Once upon a time."}\n')
    result = _load_in_subprocess("tinystories_sample", tmp_path, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    message = result.stdout.strip().splitlines()[0]
    assert "loading it from the Hugging Face hub failed" in message
    assert message.endswith("did you mean the local file 'tinystories_sample.jsonl'?")


# --- preparation --------------------------------------------------------------------------


def test_prepare_txt_char(tmp_path):
    text = "".join(DOCS)
    data = _prepare(tmp_path, str(_txt(tmp_path, text)), val_fraction=0.1)
    n = len(text) + 1  # one eot after the document
    assert (data.train_count, data.val_count) == (n - int(n * 0.1), int(n * 0.1))
    assert data.dtype == np.uint16 and data.train_tokens().dtype == np.uint16
    assert _stream(data) == text + EOT_TEXT
    assert data.tokenizer.decode(data.val_tokens().tolist()) == text[-(int(n * 0.1) - 1) :] + EOT_TEXT
    assert data.doc_offsets("train").tolist() == [0, data.train_count]
    files = {p.name for p in data.dir.iterdir()}
    assert {"train.bin", "val.bin", "train_docs.npy", "val_docs.npy", "manifest.json", "tokenizer_meta.json"} <= files
    manifest = json.loads((data.dir / "manifest.json").read_text())
    assert manifest["tokenizer"] == "char" and manifest["vocab_size"] == data.tokenizer.vocab_size
    assert manifest["hash"] in data.dir.name


def _txt(tmp_path: Path, text: str, name: str = "corpus.txt") -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_prepare_jsonl_documents_and_offsets(tmp_path):
    path = _write_jsonl(tmp_path / "tweets.jsonl", DOCS)
    data = _prepare(tmp_path, str(path), text_column="tweet", tokenizer="byte", val_fraction=0.25)
    assert _stream(data) == "".join(d + EOT_TEXT for d in DOCS)
    lengths = [len(d) + 1 for d in DOCS]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    cut = data.train_count
    assert data.doc_offsets("train").tolist() == [*bounds[bounds < cut].tolist(), cut]
    assert data.doc_offsets("val").tolist()[-1] == data.val_count
    assert data.manifest["documents"] == len(DOCS)


def test_prepare_csv_and_bpe(tmp_path):
    with open(tmp_path / "t.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text"], *([d] for d in DOCS)])
    data = _prepare(tmp_path, str(tmp_path / "t.csv"), tokenizer="bpe", vocab_size=300)
    assert data.tokenizer.name == "bpe" and data.tokenizer.vocab_size <= 300
    assert _stream(data) == "".join(d + EOT_TEXT for d in DOCS)


def test_prepare_shakespeare(tmp_path):
    data = _prepare(tmp_path, "shakespeare")
    assert data.manifest["documents"] == 38
    assert data.train_count > 4_000_000 and data.val_count > 400_000  # 4x tinyshakespeare
    text = data.tokenizer.decode(data.val_tokens()[:200_000].tolist())
    assert "**" not in text and "#" not in text and "_" not in text
    assert "\nHAMLET:\n" in _stream(data) or "\nROMEO:\n" in _stream(data)


def test_sample_ratio_is_deterministic(tmp_path):
    path = str(_write_jsonl(tmp_path / "t.jsonl", DOCS))
    a = _prepare(tmp_path, path, text_column="tweet", tokenizer="byte", sample_ratio=0.25)
    b = prepare_data(DataConfig(dataset=path, text_column="tweet", tokenizer="byte", sample_ratio=0.25,
                                cache_dir=str(tmp_path / "other")), progress=False)  # fmt: skip
    assert a.manifest["documents"] == 10 and _stream(a) == _stream(b)
    kept = _stream(a).split(EOT_TEXT)[:-1]
    assert kept == [d for d in DOCS if d in kept]  # original order


def test_mixing_weights(tmp_path):
    big_docs = [f"big document {i:03d} " * 4 for i in range(300)]
    big = _write_jsonl(tmp_path / "big.jsonl", big_docs, column="text")
    small = _write_jsonl(tmp_path / "small.jsonl", [f"small {i:03d}" for i in range(50)], column="text")
    data = _prepare(tmp_path, [str(big), str(small)], tokenizer="byte", weights=[3, 1], val_fraction=0)
    docs = _stream(data).split(EOT_TEXT)[:-1]
    big_chars = sum(len(d) + 1 for d in docs if d.startswith("big"))
    small_chars = sum(len(d) + 1 for d in docs if d.startswith("small"))
    assert small_chars == 50 * 10  # the scarce source is used whole
    assert big_chars == 3 * small_chars  # 3:1 to the token: the crossing document is cut
    assert len(set(docs)) == len(docs)  # nothing repeated
    cut = [d for d in docs if d.startswith("big") and d not in big_docs]
    assert len(cut) <= 1 and all(any(full.startswith(c) for full in big_docs) for c in cut)  # one cut, a prefix


@pytest.mark.parametrize("weights", [[1, 3], [3, 1], [1, 1]])
def test_mixing_weights_of_whole_txt_files(tmp_path, weights):
    # each .txt file is one document: the share is reached by cutting it, not by whole documents
    (tmp_path / "a.txt").write_text("a" * 4_000)
    (tmp_path / "b.txt").write_text("b" * 40_000)
    data = _prepare(tmp_path, [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], tokenizer="byte",
                    weights=weights, val_fraction=0.1)
    text = _stream(data)
    a, b = text.count("a"), text.count("b")
    assert abs(a / (a + b) - weights[0] / sum(weights)) < 0.02, (a, b)
    assert text.count(EOT_TEXT) == 2  # the part of a cut file ends with eot like any document


def test_val_fraction_zero(tmp_path):
    data = _prepare(tmp_path, str(_txt(tmp_path, "abcabc")), val_fraction=0)
    assert data.val_count == 0 and data.val_tokens().shape == (0,) and data.train_count == 7


@pytest.mark.parametrize("name, dtype", [("gpt2", np.uint16), ("o200k_base", np.uint32)])
def test_token_dtype_follows_vocab(tmp_path, tiktoken_cache, name, dtype):
    data = _prepare(tmp_path, str(_txt(tmp_path, "Hello there, world!")), tokenizer=name)
    assert data.dtype == dtype and data.train_tokens().dtype == dtype
    assert os.path.getsize(data.dir / "train.bin") == data.train_count * np.dtype(dtype).itemsize
    assert _stream(data) == "Hello there, world!" + EOT_TEXT


def test_cache_reuse_and_invalidation(tmp_path, monkeypatch):
    path = _txt(tmp_path, "some text to cache")
    first = _prepare(tmp_path, str(path))
    stamp = (first.dir / "train.bin").stat().st_mtime_ns
    assert _prepare(tmp_path, str(path)).dir == first.dir
    assert (first.dir / "train.bin").stat().st_mtime_ns == stamp  # reused, not rewritten

    assert _prepare(tmp_path, str(path), val_fraction=0.5).dir != first.dir  # a setting changed
    path.write_text("other text, longer than before")
    changed = _prepare(tmp_path, str(path))
    assert changed.dir != first.dir and _stream(changed) == "other text, longer than before" + EOT_TEXT

    (changed.dir / "train.bin").write_bytes(b"\0\0")  # a crashed run: manifest gone, files broken
    (changed.dir / "manifest.json").unlink()
    redone = _prepare(tmp_path, str(path))
    assert redone.dir == changed.dir and _stream(redone) == "other text, longer than before" + EOT_TEXT

    manifest = json.loads((redone.dir / "manifest.json").read_text())
    (redone.dir / "manifest.json").write_text(json.dumps({**manifest, "hash": "stale"}))
    assert _prepare(tmp_path, str(path)).manifest["hash"] == manifest["hash"]


# --- loader -------------------------------------------------------------------------------


def _arange_loader(n: int, **kwargs) -> TokenLoader:
    return TokenLoader(np.arange(n, dtype=np.uint16), **{"block_size": 8, "batch_size": 4, **kwargs})


def test_random_batches_are_shifted_windows():
    loader = _arange_loader(1000)
    x, y, w = loader.next_batch()
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == torch.int64 and w is None
    assert torch.equal(y, x + 1)  # every row is a window of consecutive tokens, y shifted by one
    assert torch.equal(x - x[:, :1], torch.arange(8).expand(4, 8))
    assert int(y.max()) <= 999
    assert not torch.equal(x, loader.next_batch()[0])


def test_epoch_mode_covers_every_window_once():
    loader = _arange_loader(8 * 40 + 1, mode="epoch", batch_size=5)
    assert loader.batches_per_epoch == 8
    starts = [int(s) for _ in range(8) for s in loader.next_batch()[0][:, 0]]
    assert sorted(starts) == list(range(0, 320, 8)) and loader.epoch == 1
    second = [int(s) for _ in range(8) for s in loader.next_batch()[0][:, 0]]
    assert sorted(second) == sorted(starts) and second != starts  # reshuffled


def test_ranks_are_disjoint():
    seen = []
    for rank in range(3):
        loader = _arange_loader(8 * 37 + 1, mode="epoch", rank=rank, world_size=3, batch_size=3)
        seen.append({int(s) for _ in range(loader.batches_per_epoch) for s in loader.next_batch()[0][:, 0]})
    assert all(len(s) == 12 for s in seen) and not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    a, b = (_arange_loader(5000, rank=r, world_size=2).next_batch()[0] for r in (0, 1))
    assert not torch.equal(a, b)  # random mode: each rank has its own rows


@pytest.mark.parametrize("mode", ["random", "epoch", "padded"])
def test_ranks_split_the_global_batch(mode):
    """The ranks' batches, stacked, are one process's batch of world_size times the rows, step by step,
    and one rank with grad accumulation (batch 2, four times) draws the same rows in the same order."""
    offsets = np.arange(0, 1001, 20)  # 50 documents; 31 windows of 33 tokens
    make = lambda **kw: TokenLoader(np.arange(1000, dtype=np.uint16), 32, mode=mode, seed=3,  # noqa: E731
                                    doc_offsets=offsets, pad_id=0, **kw)
    whole = make(batch_size=8)
    ranks = [make(batch_size=2, rank=r, world_size=4) for r in range(4)]
    accum = make(batch_size=2)
    firsts = []
    for _ in range(13):
        x = whole.next_batch()[0]
        assert torch.equal(x, torch.cat([r.next_batch()[0] for r in ranks]))
        assert torch.equal(x, torch.cat([accum.next_batch()[0] for _ in range(4)]))
        firsts += x[:, 0].tolist()
    per_epoch = {"epoch": list(range(0, 31 * 32, 32)), "padded": offsets[:-1].tolist()}.get(mode)
    if per_epoch:  # epochs follow each other without a gap; each uses every window (document) once
        n = len(per_epoch)
        assert sorted(firsts[:n]) == sorted(firsts[n : 2 * n]) == per_epoch and firsts[:n] != firsts[n : 2 * n]


@pytest.mark.parametrize("mode", ["random", "epoch", "padded"])
def test_resume_continues_exactly(mode):
    offsets = np.arange(0, 1001, 20)
    make = lambda: _arange_loader(1000, mode=mode, doc_offsets=offsets, pad_id=0, seed=7)  # noqa: E731
    loader = make()
    for _ in range(3):
        loader.next_batch()
    state = loader.state_dict()
    expected = [loader.next_batch() for _ in range(12)]  # crosses an epoch boundary in epoch modes
    resumed = make()
    resumed.load_state_dict(state)
    for (x, y, _), (x2, y2, _) in zip(expected, (resumed.next_batch() for _ in range(12)), strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(ValueError, match="cannot resume"):
        _arange_loader(1000, mode=mode, doc_offsets=offsets, pad_id=0, seed=8).load_state_dict(state)
    # the state is rows consumed: 2 ranks of batch 2 continue where 1 rank of batch 4 stopped
    halves = [_arange_loader(1000, mode=mode, doc_offsets=offsets, pad_id=0, seed=7, batch_size=2, rank=r,
                             world_size=2) for r in (0, 1)]  # fmt: skip
    for half in halves:
        half.load_state_dict(state)
    assert torch.equal(torch.cat([h.next_batch()[0] for h in halves]), expected[0][0])
    with pytest.raises(ValueError, match="batch_size \\* world_size = 8, which does not divide it"):
        _arange_loader(1000, mode=mode, doc_offsets=offsets, pad_id=0, seed=7, batch_size=8).load_state_dict(state)


def test_padded_mode_masks_pads_and_weights_specials():
    eot, pad = 99, 98
    docs = [[1, 2, eot], [3, 4, 5, 6, 7, 8, 9, 10, 11, eot], [12, eot], [13, 14, 15, 16, eot]]
    tokens = np.array([t for d in docs for t in d], dtype=np.uint16)
    offsets = np.cumsum([0] + [len(d) for d in docs])
    loader = TokenLoader(tokens, 6, 4, mode="padded", doc_offsets=offsets, pad_id=pad,
                         special_ids=(pad, eot), special_token_weight=0.5)  # fmt: skip
    x, y, w = loader.next_batch()
    rows = {int(r[0]): (r, t, v) for r, t, v in zip(x, y, w, strict=True)}
    r, t, v = rows[1]
    assert r.tolist() == [1, 2, eot, pad, pad, pad] and t.tolist() == [2, eot, -1, -1, -1, -1]
    assert v.tolist() == [1, 0.5, 0, 0, 0, 0]
    r, t, v = rows[3]  # longer than block_size + 1: cut, nothing masked
    assert r.tolist() == [3, 4, 5, 6, 7, 8] and t.tolist() == [4, 5, 6, 7, 8, 9] and v.tolist() == [1] * 6
    assert rows[12][1].tolist() == [eot, -1, -1, -1, -1, -1]


def test_loader_errors():
    with pytest.raises(ValueError, match="too few for block_size 8: need at least 9"):
        _arange_loader(8)
    with pytest.raises(ValueError, match="mode 'epoch' needs batch_size \\* world_size = 4 windows"):
        _arange_loader(20, mode="epoch")
    with pytest.raises(ValueError, match="mode 'padded' needs doc_offsets and pad_id"):
        _arange_loader(100, mode="padded")


def test_loader_from_prepared_memmap(tmp_path):
    path = _write_jsonl(tmp_path / "t.jsonl", DOCS)
    cfg = DataConfig(dataset=str(path), text_column="tweet", tokenizer="byte", cache_dir=str(tmp_path / "c"))
    data = prepare_data(cfg, progress=False)
    loader = data.loader("train", 16, 4, cfg)
    assert loader._path is not None  # the memmap is re-opened for every batch
    in_memory = TokenLoader(np.array(data.train_tokens()), 16, 4, seed=cfg.seed)
    for _ in range(3):
        (x, y, _), (x2, y2, _) = loader.next_batch(), in_memory.next_batch()
        assert torch.equal(x, x2) and torch.equal(y, y2)
    padded = data.loader("train", 64, 4, DataConfig(mode="padded"))
    x, y, _ = padded.next_batch()
    lengths = (y != -1).sum(dim=1) + 1  # tokens of each row's document (all are shorter than 64)
    texts = [data.tokenizer.decode(row[:n].tolist()) for row, n in zip(x, lengths, strict=True)]
    full = [t for t in texts if t in {d + EOT_TEXT for d in DOCS}]
    assert len(full) >= 3  # one row may be the last train document, cut by the validation split
    assert all(t in full or any(d.startswith(t) for d in DOCS) for t in texts)


def test_byte_order_mark_is_dropped(tmp_path):
    bom = "\ufeff"
    (tmp_path / "a.txt").write_text(bom + "hello")
    (tmp_path / "b.jsonl").write_text(bom + '{"text": "jsonl"}\n')
    (tmp_path / "c.csv").write_text(bom + "text\ncsv\n")
    (tmp_path / "d.json").write_text(bom + '[{"text": "json"}]')
    assert load_documents(str(tmp_path)) == ["hello", "jsonl", "csv", "json"]
    data = _prepare(tmp_path, str(tmp_path / "a.txt"))
    assert bom not in data.tokenizer.chars and data.tokenizer.vocab_size == len(set("hello")) + 2
