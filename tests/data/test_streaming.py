"""Sources are read incrementally and preparation holds one part at a time: the Python memory
(tracemalloc: strings, lists and NumPy arrays) peaks far below the size of the corpus. Each test
fails when a whole file (or every part's tokens) is read into memory at once."""

from __future__ import annotations

import csv
import json
import tracemalloc

import numpy as np
import pytest

import fastgpt.data.prepare as prepare
import fastgpt.data.sources as sources
from fastgpt.data import DataConfig, prepare_data
from fastgpt.data.sources import iter_documents
from fastgpt.tokenizers import EOT_TEXT

DOCS = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 7) for i in range(40_000)]
SIZE = sum(map(len, DOCS))  # 7.5 MB of text
PEAK = 2 << 20  # a reader may hold this much of it
PER_DOC = 64  # preparation keeps each document's length (int64), and a few copies of the array


def _write(path, fmt: str) -> None:
    if fmt == "txt":
        path.write_text(EOT_TEXT.join(DOCS))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(DOCS)))
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([["text", "n"], *([d, i] for i, d in enumerate(DOCS))])
    else:
        pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
        pq.write_table(pa.table({"text": DOCS}), path, row_group_size=2_000)  # 10 row groups


def _peak(run) -> tuple[object, int]:
    tracemalloc.start()
    try:
        out = run()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "parquet"])
def test_each_format_streams(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(sources, "_READ_BYTES", 1 << 16)
    monkeypatch.setattr(sources, "_PARQUET_ROWS", 500)
    path = tmp_path / f"corpus.{fmt}"
    _write(path, fmt)

    def count() -> tuple[int, int]:  # documents and characters, nothing kept
        n = chars = 0
        for doc in iter_documents(str(path)):
            assert doc == DOCS[n]
            n, chars = n + 1, chars + len(doc)
        return n, chars

    (n, chars), peak = _peak(count)
    assert (n, chars) == (len(DOCS), SIZE)
    assert peak < PEAK, f"{fmt}: {peak / 2**20:.1f} MiB held while reading {SIZE / 2**20:.1f} MiB"


def test_txt_blocks_cut_separators_and_characters(tmp_path, monkeypatch):
    """Blocks of 7 bytes cut ``<|endoftext|>`` and two-byte characters; the documents are those of
    one whole read, and a bad byte is reported at its offset in the file."""
    monkeypatch.setattr(sources, "_READ_BYTES", 7)
    docs = ["héllo wörld", "ünïcode ☃ snow", "x", "  last one ü"]
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbf" + f"{EOT_TEXT} \n{EOT_TEXT}\n".join(docs).encode())  # blank parts between
    assert list(iter_documents(str(path))) == [docs[0], "\n" + docs[1], "\n" + docs[2], "\n" + docs[3]]
    data = "é".encode() * 20 + b"\xff" + b"rest"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"is not UTF-8 text \(byte 0xff at offset 40\)"):
        list(iter_documents(str(path)))


def test_broken_jsonl_line_is_named_after_earlier_lines_streamed(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[:5]) + '{"text": "cut\n')
    docs = iter_documents(str(path))
    assert [next(docs) for _ in range(5)] == DOCS[:5]
    with pytest.raises(ValueError, match=r"t.jsonl: line 6 is not valid JSON"):
        next(docs)


def test_prepare_holds_one_part(tmp_path, monkeypatch):
    """The byte tokenizer on 7.5 MB in parts of 256 KB: the token files are what one whole pass writes
    (every byte, an eot after each document) while Python memory stays under PEAK plus PER_DOC bytes
    per document (3.4 MB; the text is 7.5 MB, its tokens 15 MB)."""
    monkeypatch.setattr(prepare, "_PART_CHARS", 1 << 18)
    monkeypatch.setattr(prepare, "_CHUNK_CHARS", 1 << 15)
    path = tmp_path / "corpus.jsonl"
    _write(path, "jsonl")
    cfg = DataConfig(dataset=str(path), tokenizer="byte", cache_dir=str(tmp_path / "cache"), num_workers=1)
    data, peak = _peak(lambda: prepare_data(cfg, progress=False))
    assert peak < PEAK + PER_DOC * len(DOCS), f"{peak / 2**20:.1f} MiB held while preparing {SIZE / 2**20:.1f} MiB"
    tokens = np.concatenate([data.train_tokens(), data.val_tokens()])
    assert len(tokens) == SIZE + len(DOCS)  # ASCII: a byte per character, and an eot per document
    assert data.tokenizer.decode(tokens.tolist()) == "".join(d + EOT_TEXT for d in DOCS)
    assert data.manifest["documents"] == len(DOCS) and not (data.dir / "partial").exists()
