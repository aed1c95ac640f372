"""Dataset preparation: text -> token files in a cache folder, reused while nothing changed.

``prepare_data`` streams the documents of every source (``fastgpt.data.sources``), builds the
tokenizer, tokenizes in parallel, puts an eot id after every document and writes, into
``<cache_dir>/<name>-<hash>/``:

* ``train.bin`` / ``val.bin``: the token streams, uint16 when every id fits, else uint32;
* ``train_docs.npy`` / ``val_docs.npy``: int64 document boundaries (``D + 1`` offsets);
* the tokenizer (``Tokenizer.save``) and, last, ``manifest.json``.

While it works, ``partial/`` (:mod:`fastgpt.data.partial`) keeps the built tokenizer and each
tokenized part, so a preparation killed halfway resumes where it stopped when run again. A write
that fails (a full disk) is one ``ValueError`` naming the folder; the finished parts stay, nothing
half-written does.

The hash covers the sources (file sizes and mtimes, package versions), the tokenizer settings,
``text_column``, ``weights``, ``val_fraction``, ``sample_ratio``, ``seed`` and ``FORMAT_VERSION``;
a folder is reused only when its manifest exists and carries that hash. Preparation is meant to
run in one process (rank 0) while the others wait.

Memory is bounded by the settings, not by the corpus: documents are streamed into parts of about
``_PART_CHARS`` characters, each tokenized and saved in ``partial/`` before the next is read, and the
token files are then written from the saved parts, a part at a time. What stays in memory for the
whole corpus is one int64 length per document (for the split, the mixing and the boundaries).
``sample_ratio`` reads each source twice (once to count its documents); the char and bpe tokenizers
are trained on one more pass over the sources (bpe holds its training text).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastgpt.config import DataConfig, folder_error
from fastgpt.data.loader import DOC_MODES, TokenLoader
from fastgpt.data.partial import Partial, fsync_folder
from fastgpt.data.sft import cache_settings, loss_mask, write_sft
from fastgpt.data.sources import iter_documents, source_fingerprint
from fastgpt.progress import progress_bar
from fastgpt.tokenizers import HF_FILE, META_FILE, Tokenizer, build_tokenizer, load_tokenizer, path_exists

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_CHUNK_CHARS = 1 << 20  # documents are tokenized in chunks of about this many characters
_PART_CHARS = 1 << 26  # and kept, for a rerun after an interruption, in parts of about this many
LOG_SECONDS = 30.0  # off a terminal, a progress line this often


@dataclass
class PreparedData:
    """A prepared dataset folder: token files, tokenizer and manifest."""

    dir: Path
    tokenizer: Tokenizer
    manifest: dict

    @classmethod
    def open(cls, directory: str | os.PathLike) -> PreparedData:
        """The prepared dataset in ``directory``."""
        directory = Path(directory)
        if not (directory / MANIFEST).is_file():
            raise FileNotFoundError(f"{directory} is not a prepared dataset: {MANIFEST} is missing")
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except RecursionError:  # json's decoder on deeply nested arrays or objects
            raise ValueError(f"{directory / MANIFEST} is nested too deeply to read") from None
        if not isinstance(manifest, dict):
            raise ValueError(f"{directory / MANIFEST} is not a JSON object")
        return cls(directory, load_tokenizer(directory), manifest)

    @property
    def dtype(self) -> np.dtype:
        """uint16 or uint32, the dtype of the token files."""
        return np.dtype(self.manifest["dtype"])

    @property
    def train_count(self) -> int:
        """Tokens in ``train.bin``."""
        return self.manifest["train_tokens"]

    @property
    def val_count(self) -> int:
        """Tokens in ``val.bin``."""
        return self.manifest["val_tokens"]

    def _tokens(self, split: str) -> np.ndarray:
        _check_split(split)
        if self.manifest[f"{split}_tokens"] == 0:
            return np.empty(0, dtype=self.dtype)  # an empty file cannot be memory-mapped
        return np.memmap(self.dir / f"{split}.bin", dtype=self.dtype, mode="r")

    def train_tokens(self) -> np.ndarray:
        """The training token stream, memory-mapped, shape (N,)."""
        return self._tokens("train")

    def val_tokens(self) -> np.ndarray:
        """The validation token stream, memory-mapped, shape (N,)."""
        return self._tokens("val")

    def doc_offsets(self, split: str) -> np.ndarray:
        """Document boundaries of ``split`` ("train" or "val"), int64, shape (D + 1,)."""
        _check_split(split)
        return np.load(self.dir / f"{split}_docs.npy", mmap_mode="r")

    def eval_block_size(self, split: str, block_size: int) -> int | None:
        """The window length a loss estimate on ``split`` uses: ``block_size``, or ``count - 1`` for a
        split of fewer than ``block_size + 1`` tokens; None for a validation split that
        ``data.val_fraction=0`` left empty. A split of 1 or 0 tokens otherwise is a ValueError."""
        count = self.train_count if split == "train" else self.val_count
        if count > block_size:
            return block_size
        fraction = self.manifest["settings"]["val_fraction"]
        if split == "val" and fraction == 0:
            return None
        if count < 2:
            raise ValueError(f"data.val_fraction={fraction} leaves {count} {split} token(s) of "
                             f"{self.train_count + self.val_count}, too few for a loss (need 2); use more data, "
                             "a larger data.val_fraction, or data.val_fraction=0 for no validation")
        return count - 1

    def loader(self, split: str, block_size: int, batch_size: int, cfg: DataConfig, **kwargs) -> TokenLoader:
        """A ``TokenLoader`` over ``split`` with ``cfg``'s mode, seed and special-token weight.

        ``kwargs`` go to ``TokenLoader`` (``device``, ``rank``, ``world_size``).
        """
        if (cfg.mode == "sft") != (self.manifest.get("mode") == "sft"):
            raise ValueError(f"data.mode={cfg.mode!r} cannot read {self.dir}, prepared "
                             f"{'for' if cfg.mode != 'sft' else 'without'} data.mode=sft")
        return TokenLoader(
            self._tokens(split), block_size, batch_size, mode=cfg.mode, seed=cfg.seed,
            doc_offsets=self.doc_offsets(split) if cfg.mode in DOC_MODES else None,
            pad_id=self.tokenizer.pad_id, special_ids=self.tokenizer.special_ids,
            special_token_weight=cfg.special_token_weight,
            loss_mask=loss_mask(self.dir, split, self.manifest[f"{split}_tokens"]) if cfg.mode == "sft" else None,
            **kwargs,
        )  # fmt: skip

    def epoch_rows(self, split: str, block_size: int, mode: str) -> int:
        """Rows of ``block_size + 1`` tokens in one pass over ``split``: documents in the padded and sft
        modes, else windows."""
        if mode in DOC_MODES:
            return len(self.doc_offsets(split)) - 1
        return max(0, self.manifest[f"{split}_tokens"] - 1) // block_size


def _check_split(split: str) -> None:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")


def _cache_key(cfg: DataConfig) -> dict:
    """Everything that determines the prepared files; its hash names the cache folder."""
    tokenizer: dict = {"name": cfg.tokenizer}
    if cfg.tokenizer == "bpe":
        tokenizer.update(vocab_size=cfg.vocab_size, simplify=cfg.simplify)
    elif path_exists(cfg.tokenizer):
        path = Path(cfg.tokenizer).expanduser()
        stat = (path / (META_FILE if (path / META_FILE).is_file() else HF_FILE) if path.is_dir() else path).stat()
        tokenizer.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    return {
        "version": FORMAT_VERSION,
        "sources": [source_fingerprint(s) for s in cfg.sources],
        "tokenizer": tokenizer,
        "text_column": cfg.text_column,
        "weights": cfg.weights,
        "val_fraction": cfg.val_fraction,
        "sample_ratio": cfg.sample_ratio,
        "seed": cfg.seed,
        **({"sft": cache_settings(cfg)} if cfg.mode == "sft" else {}),
    }


def _folder_name(cfg: DataConfig, digest: str) -> str:
    """A readable folder name: first source, tokenizer, hash."""
    parts = [Path(cfg.sources[0]).stem[:60], *(["mix"] if len(cfg.sources) > 1 else []), Path(cfg.tokenizer).stem[:60]]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts)) + f"-{digest}"  # under 255 bytes: the hash tells apart


def _reusable(directory: Path, digest: str) -> PreparedData | None:
    """The prepared dataset in ``directory`` if its manifest carries ``digest`` and its files are whole."""
    try:
        data = PreparedData.open(directory)
    except (FileNotFoundError, ValueError):  # no manifest, an unreadable one, or a broken tokenizer
        return None
    if data.manifest.get("hash") != digest or data.manifest.get("version") != FORMAT_VERSION:
        return None
    for split in ("train", "val"):
        file = directory / f"{split}.bin"
        if not file.is_file() or file.stat().st_size != data.manifest[f"{split}_tokens"] * data.dtype.itemsize:
            return None
    return data


def _sampled(source: str, cfg: DataConfig, index: int) -> Iterator[str]:
    """The documents of ``source`` that ``sample_ratio`` keeps, streamed in their original order: a
    ``ratio`` fraction of them (at least one), chosen by ``(seed, index)``. Sampling reads the source
    once more first, to count its documents."""
    if cfg.sample_ratio == 1.0:
        yield from iter_documents(source, cfg.text_column)
        return
    count = sum(1 for _ in iter_documents(source, cfg.text_column))
    k = max(1, round(count * cfg.sample_ratio))
    keep = np.sort(np.random.default_rng([cfg.seed, index]).choice(count, size=k, replace=False))
    wanted = iter(keep.tolist())
    next_kept = next(wanted)
    for j, doc in enumerate(iter_documents(source, cfg.text_column)):
        if j == next_kept:
            yield doc
            if (next_kept := next(wanted, None)) is None:
                return


def _chunks(docs: Iterable[str], chars: int) -> Iterator[list[str]]:
    """Consecutive groups of documents of about ``chars`` characters each (a longer document alone)."""
    current, size = [], 0
    for doc in docs:
        current.append(doc)
        size += len(doc)
        if size >= chars:
            yield current
            current, size = [], 0
    if current:
        yield current


class _Progress:
    """Documents and tokens done: a tqdm bar on a terminal, else a plain line every ``LOG_SECONDS``."""

    def __init__(self, enabled: bool) -> None:
        self.bar = progress_bar(enabled=enabled, unit="tok", unit_scale=True, desc="tokenizing")
        self.log = enabled and self.bar.disable
        self.docs = self.tokens = 0
        self.start = self.logged = time.monotonic()

    def add(self, docs: int, tokens: int) -> None:
        self.docs, self.tokens = self.docs + docs, self.tokens + tokens
        self.bar.update(tokens)
        self.bar.set_postfix(docs=f"{self.docs:,}", refresh=False)
        if self.log and (now := time.monotonic()) - self.logged >= LOG_SECONDS:
            self.logged = now
            print(f"prepare: {self.docs:,} docs, {self.tokens:,} tokens, "
                  f"{self.tokens / max(now - self.start, 1e-9):,.0f} tokens/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


def _tokenize(docs: Iterable[str], tokenizer: Tokenizer, dtype: np.dtype, workers: int, progress: _Progress,
              partial: Partial, source: int) -> tuple[list[tuple[str, int]], np.ndarray]:
    """Tokenize the stream ``docs``, each document followed by eot, into parts saved in ``partial``:
    the parts' (name, documents) and every document's length in tokens, shape (D,).

    The stream is cut into parts of about ``_PART_CHARS`` characters; a part an earlier, interrupted
    preparation finished is read from ``partial`` instead. Only one part's documents and tokens are in
    memory at a time; the tokens stay on disk until ``_write`` streams them into the token files.
    """

    def encode(chunk: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded, flat = tokenizer.encode_batch(chunk), []
        for ids in encoded:
            flat.extend(ids)
            flat.append(tokenizer.eot_id)
        lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int64, count=len(encoded))
        return np.array(flat, dtype=dtype), lengths

    names, lengths = [], []
    # the tokenizers' encoders release the GIL, so threads tokenize chunks in parallel
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def tokenize(part_docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
            done = list(pool.map(encode, _chunks(part_docs, _CHUNK_CHARS)))
            return np.concatenate([d[0] for d in done]), np.concatenate([d[1] for d in done])

        for j, part_docs in enumerate(_chunks(docs, _PART_CHARS)):
            names.append((f"source{source}-part{j}", len(part_docs)))
            tokens, part_lengths = partial.tokens(names[-1][0], dtype, len(part_docs), lambda d=part_docs: tokenize(d))
            lengths.append(part_lengths)
            progress.add(len(part_docs), len(tokens))
    return names, np.concatenate(lengths) if lengths else np.empty(0, dtype=np.int64)


def _mix(lengths: list[np.ndarray], weights: list[float], seed: int) -> list[np.ndarray]:
    """How many tokens of each document to keep so that source i holds a ``weights[i]`` share of the tokens.

    The source with the fewest tokens per unit of weight is kept whole; no document is repeated.
    Each other source keeps whole documents, drawn in a seeded random order, up to its share; the
    document that crosses it is cut there and ends with eot (so a source that is one long document,
    a ``.txt`` file, keeps its first tokens), which makes the shares exact to a token. Returns, per
    source, the tokens kept of each of its documents (0 for one left out), shape (D,).
    """
    share = np.asarray(weights, dtype=np.float64) / sum(weights)
    total = min(int(n.sum()) / s for n, s in zip(lengths, share, strict=True))
    mixed = []
    for i, (doc_lengths, s) in enumerate(zip(lengths, share, strict=True)):
        want = round(s * total)
        if want >= doc_lengths.sum():
            mixed.append(doc_lengths)
            continue
        order = np.random.default_rng([seed, i]).permutation(len(doc_lengths))
        ends = np.cumsum(doc_lengths[order])
        whole = int(np.searchsorted(ends, want, side="right"))  # the documents that fit entirely
        take = np.zeros(len(doc_lengths), dtype=np.int64)
        take[order[:whole]] = doc_lengths[order[:whole]]
        cut = order[whole]
        take[cut] = want - (ends[whole - 1] if whole else 0)
        if take[cut] < 2:  # no room for a token and its eot
            take[cut] = 0
        mixed.append(take)
    return mixed


def _bounds(kept: np.ndarray, val_fraction: float) -> tuple[int, np.ndarray, np.ndarray]:
    """(train tokens, train boundaries, val boundaries) of one source whose documents keep ``kept``
    tokens each: val is the last ``val_fraction`` of its tokens."""
    kept = kept[kept > 0]
    n = int(kept.sum())
    cut = n - int(n * val_fraction)
    bounds = np.concatenate([[0], np.cumsum(kept)])
    train_bounds = np.unique(np.concatenate([bounds[bounds <= cut], [cut]]))
    val_bounds = np.unique(np.concatenate([[0], bounds[bounds >= cut] - cut]))
    return cut, train_bounds, val_bounds


def _kept_tokens(tokens: np.ndarray, lengths: np.ndarray, take: np.ndarray, eot_id: int) -> np.ndarray:
    """The first ``take[d]`` tokens of each document d of a part; a document cut short ends with eot."""
    if np.array_equal(take, lengths):
        return np.asarray(tokens)
    position = np.arange(len(tokens)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    kept = tokens[position < np.repeat(take, lengths)]
    ends = np.cumsum(take)[(take > 0) & (take < lengths)] - 1
    kept[ends] = eot_id
    return kept


def _write(directory: Path, partial: Partial, parts: list[list[tuple[str, int]]], lengths: list[np.ndarray],
           kept: list[np.ndarray], val_fraction: float, eot_id: int) -> dict[str, int]:
    """Stream the sources' kept tokens from ``partial`` into ``train.bin`` and ``val.bin`` (a source's
    train tokens after the previous source's, likewise for val), a part at a time, and write
    ``<split>_docs.npy``; the token counts by split."""
    files = {split: open(directory / f"{split}.bin", "wb") for split in ("train", "val")}
    offsets: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    written = {"train": 0, "val": 0}
    try:
        for names, doc_lengths, take in zip(parts, lengths, kept, strict=True):
            cut, train_bounds, val_bounds = _bounds(take, val_fraction)
            offsets["train"].append(train_bounds + written["train"])
            offsets["val"].append(val_bounds + written["val"])
            done, first = 0, 0  # tokens of this source written, its first document in the next part
            for name, count in names:
                tokens = partial.saved_tokens(name)
                part = _kept_tokens(tokens, doc_lengths[first:first + count], take[first:first + count], eot_id)
                first += count
                head = max(0, min(len(part), cut - done))  # the part's tokens before the source's val cut
                part[:head].tofile(files["train"])
                part[head:].tofile(files["val"])
                done += len(part)
            written["train"] += cut
            written["val"] += done - cut
    finally:
        for f in files.values():
            f.close()
    for split in ("train", "val"):
        docs = np.unique(np.concatenate(offsets[split])) if offsets[split] else np.zeros(1, dtype=np.int64)
        np.save(directory / f"{split}_docs.npy", docs.astype(np.int64))
    return {f"{split}_tokens": count for split, count in written.items()}


def data_digest(cfg: DataConfig) -> str:
    """The hash of ``cfg``'s settings and sources now: it names the cache folder (the manifest's ``hash``)."""
    return hashlib.sha256(json.dumps(_cache_key(cfg), sort_keys=True).encode()).hexdigest()[:16]


def find_prepared(cfg: DataConfig, digest: str) -> PreparedData | None:
    """The whole prepared dataset of hash ``digest`` in ``cfg.cache_dir``, or None; reads only, writes nothing."""
    return _reusable(Path(cfg.cache_dir) / _folder_name(cfg, digest), digest)


def prepare_data(cfg: DataConfig, progress: bool = True) -> PreparedData:
    """Tokenize ``cfg``'s sources into a cache folder (or reuse a matching one) and open it."""
    key = _cache_key(cfg)
    digest = data_digest(cfg)
    directory = Path(cfg.cache_dir) / _folder_name(cfg, digest)
    if reused := _reusable(directory, digest):
        Partial(directory).finish()  # left by a preparation killed after its manifest
        return reused
    try:
        partial = Partial.start(directory, digest)
    except OSError as exc:
        raise folder_error("data.cache_dir", cfg.cache_dir, exc) from None
    if cfg.mode == "sft":  # JSONL examples: tokens, an example per document, and a loss mask
        with partial.writing(disk_only=True):  # it reads the examples too: only a disk's failure is a write's
            tokenizer, dtype, counts = write_sft(cfg, directory)
        return _commit(directory, tokenizer, {"hash": digest, "version": FORMAT_VERSION, "mode": "sft",
                                              "dtype": dtype.name, **counts,
                                              "documents": counts["train_rows"] + counts["val_rows"],
                                              "settings": key}, partial)

    for source in cfg.sources:  # before a tokenizer is trained on them
        if next(iter_documents(source, cfg.text_column), None) is None:
            raise ValueError(f"dataset {source!r} has no text")
    streams = [lambda i=i, source=source: _sampled(source, cfg, i) for i, source in enumerate(cfg.sources)]
    tokenizer = partial.tokenizer(lambda: build_tokenizer(cfg.tokenizer, (d for docs in streams for d in docs()),
                                                          cfg.vocab_size, cfg.simplify))
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    workers = cfg.num_workers or os.cpu_count() or 1
    shown = _Progress(progress)
    try:
        tokenized = [_tokenize(docs(), tokenizer, dtype, workers, shown, partial, i) for i, docs in enumerate(streams)]
    finally:
        shown.close()
    parts, lengths = [t[0] for t in tokenized], [t[1] for t in tokenized]
    kept = _mix(lengths, cfg.weights, cfg.seed) if cfg.weights is not None and len(lengths) > 1 else lengths
    with partial.writing():
        counts = _write(directory, partial, parts, lengths, kept, cfg.val_fraction, tokenizer.eot_id)
    manifest = {
        "hash": digest, "version": FORMAT_VERSION,
        "dtype": dtype.name, **counts, "documents": int(sum((k > 0).sum() for k in kept)), "settings": key,
    }  # fmt: skip
    return _commit(directory, tokenizer, manifest, partial)


def _commit(directory: Path, tokenizer: Tokenizer, manifest: dict, partial: Partial) -> PreparedData:
    """Save the tokenizer and, last, the manifest (with the tokenizer's fields), which marks the folder
    done; then drop what ``partial`` kept."""
    manifest = {**manifest, "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size,
                "eot_id": tokenizer.eot_id, "pad_id": tokenizer.pad_id}
    with partial.writing():
        tokenizer.save(directory)
        tmp = directory / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        fsync_folder(directory)  # token files, tokenizer and manifest on disk before the rename commits them
        os.replace(tmp, directory / MANIFEST)  # the manifest appears last and whole: it marks the folder done
        fsync_folder(directory)  # and the rename itself
    partial.finish()
    return PreparedData(directory, tokenizer, manifest)
