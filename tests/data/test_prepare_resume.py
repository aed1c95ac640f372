"""A data preparation killed with kill -9 keeps its tokenizer and finished parts; the rerun does
only the rest and writes exactly what one uninterrupted preparation writes.

Each preparation runs in its own process (the kill is real). The parts are made small
(``_PART_CHARS``) so that a small corpus has many.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from fastgpt.data.partial import FOLDER

DOCS = [f"Line {i}: to be or not to be, that is question {i * 13} of the fox." for i in range(300)]
PARTS = 10  # 300 documents of ~65 characters in parts of ~2,000: 10 parts per source

_CHILD = """
import json, os, signal, sys
import fastgpt.data.partial as partial
import fastgpt.data.prepare as prepare
from fastgpt.data import DataConfig

prepare._PART_CHARS, prepare._CHUNK_CHARS = 2000, 500
kill_after = int(sys.argv[3])
counts = {"tokenizers_built": 0, "parts_tokenized": 0}
build = prepare.build_tokenizer

def counted_build(*args, **kwargs):
    counts["tokenizers_built"] += 1
    return build(*args, **kwargs)

prepare.build_tokenizer = counted_build
write = partial._write_whole

def write_then_maybe_die(path, fn):
    write(path, fn)
    if path.name.endswith(".lengths.npy"):  # a part is whole once its second file is in place
        counts["parts_tokenized"] += 1
        if counts["parts_tokenized"] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

partial._write_whole = write_then_maybe_die
cfg = DataConfig(dataset=sys.argv[1].split(","), text_column="text", tokenizer="bpe", vocab_size=320,
                 cache_dir=sys.argv[2], num_workers=2)
data = prepare.prepare_data(cfg, progress=False)
print(json.dumps({**counts, "dir": str(data.dir)}))
"""


def _prepare(sources: list[Path], cache: Path, kill_after: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CHILD, ",".join(map(str, sources)), str(cache), str(kill_after)],
                          capture_output=True, text=True, timeout=300)


def _sources(tmp_path: Path) -> list[Path]:
    paths = []
    for name, docs in (("a", DOCS), ("b", [d.upper() for d in DOCS])):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        paths.append(path)
    return paths


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_a_killed_preparation_resumes_where_it_stopped(tmp_path: Path) -> None:
    sources = _sources(tmp_path)
    clean = _prepare(sources, tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr[-3000:]
    whole = json.loads(clean.stdout)
    assert whole["tokenizers_built"] == 1 and whole["parts_tokenized"] == 2 * PARTS

    cache = tmp_path / "cache"
    killed = _prepare(sources, cache, kill_after=PARTS + 3)  # inside the second source
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (folder,) = cache.iterdir()
    assert not (folder / "manifest.json").exists()
    kept = sorted(p.name for p in (folder / FOLDER).glob("*.lengths.npy"))
    assert len(kept) == PARTS + 3, kept

    rerun = _prepare(sources, cache)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = json.loads(rerun.stdout)
    assert resumed["tokenizers_built"] == 0  # the trained BPE was kept
    assert resumed["parts_tokenized"] == PARTS - 3  # only what the killed one had not finished
    assert Path(resumed["dir"]) == folder and not (folder / FOLDER).exists()
    assert folder.name == Path(whole["dir"]).name
    assert _files(folder) == _files(Path(whole["dir"]))  # tokens, boundaries, tokenizer, manifest


def test_a_damaged_part_is_tokenized_again(tmp_path: Path) -> None:
    sources = _sources(tmp_path)[:1]
    cache = tmp_path / "cache"
    killed = _prepare(sources, cache, kill_after=4)
    assert killed.returncode == -signal.SIGKILL
    (folder,) = cache.iterdir()
    parts = sorted((folder / FOLDER).glob("*.tokens.npy"))
    assert len(parts) == 4
    parts[0].write_bytes(parts[0].read_bytes()[:100])  # cut short
    tokens = np.load(parts[1])
    np.save(parts[1], tokens[:-1])  # one token short of its documents' lengths
    (folder / FOLDER / "digest").write_text("another settings hash")  # so nothing kept belongs here...
    rerun = _prepare(sources, cache)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads(rerun.stdout)["parts_tokenized"] == PARTS  # ...and everything is redone
    clean = _prepare(sources, tmp_path / "clean")
    assert _files(folder) == _files(Path(json.loads(clean.stdout)["dir"]))

    killed = _prepare(sources, cache / "again", kill_after=4)
    (folder,) = (cache / "again").iterdir()
    parts = sorted((folder / FOLDER).glob("*.tokens.npy"))
    parts[0].write_bytes(parts[0].read_bytes()[:100])
    np.save(parts[1], np.load(parts[1])[:-1])
    rerun = _prepare(sources, cache / "again")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads(rerun.stdout)["parts_tokenized"] == PARTS - 2  # the two damaged parts, and the rest
    assert _files(folder) == _files(Path(json.loads(clean.stdout)["dir"]))
