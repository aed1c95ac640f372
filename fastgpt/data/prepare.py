"""Dataset preparation: text -> token files in a cache folder, reused while nothing changed.

``prepare_data`` reads the documents of every source (``fastgpt.data.sources``), builds the
tokenizer, tokenizes in parallel, puts an eot id after every document and writes, into
``<cache_dir>/<name>-<hash>/``:

* ``train.bin`` / ``val.bin``: the token streams, uint16 when every id fits, else uint32;
* ``train_docs.npy`` / ``val_docs.npy``: int64 document boundaries (``D + 1`` offsets);
* the tokenizer (``Tokenizer.save``) and, last, ``manifest.json``.

The hash covers the sources (file sizes and mtimes, package versions), the tokenizer settings,
``text_column``, ``weights``, ``val_fraction``, ``sample_ratio``, ``seed`` and ``FORMAT_VERSION``;
a folder is reused only when its manifest exists and carries that hash. Preparation is meant to
run in one process (rank 0) while the others wait. Documents and tokens are held in memory
while a dataset is prepared.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fastgpt.config import DataConfig
from fastgpt.data.loader import TokenLoader
from fastgpt.data.sources import load_documents, source_fingerprint
from fastgpt.tokenizers import HF_FILE, Tokenizer, build_tokenizer, load_tokenizer, path_exists

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_CHUNK_CHARS = 1 << 20  # documents are tokenized in chunks of about this many characters


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
        manifest = json.loads((directory / MANIFEST).read_text())
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

    def loader(self, split: str, block_size: int, batch_size: int, cfg: DataConfig, **kwargs) -> TokenLoader:
        """A ``TokenLoader`` over ``split`` with ``cfg``'s mode, seed and special-token weight.

        ``kwargs`` go to ``TokenLoader`` (``device``, ``rank``, ``world_size``).
        """
        return TokenLoader(
            self._tokens(split), block_size, batch_size, mode=cfg.mode, seed=cfg.seed,
            doc_offsets=self.doc_offsets(split) if cfg.mode == "padded" else None,
            pad_id=self.tokenizer.pad_id, special_ids=self.tokenizer.special_ids,
            special_token_weight=cfg.special_token_weight, **kwargs,
        )  # fmt: skip


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
        stat = (path / HF_FILE if path.is_dir() else path).stat()
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


def _sample(docs: list[str], ratio: float, seed: list[int]) -> list[str]:
    """A ``ratio`` fraction of ``docs`` (at least one), chosen by ``seed``, in their original order."""
    if ratio == 1.0:
        return docs
    k = max(1, round(len(docs) * ratio))
    keep = np.sort(np.random.default_rng(seed).choice(len(docs), size=k, replace=False))
    return [docs[i] for i in keep]


def _chunks(docs: list[str]) -> list[list[str]]:
    """Consecutive groups of documents of about ``_CHUNK_CHARS`` characters each."""
    chunks, current, size = [], [], 0
    for doc in docs:
        current.append(doc)
        size += len(doc)
        if size >= _CHUNK_CHARS:
            chunks.append(current)
            current, size = [], 0
    return chunks + ([current] if current else [])


def _tokenize(docs: list[str], tokenizer: Tokenizer, dtype: np.dtype, workers: int, bar: tqdm) -> tuple:
    """Tokens of ``docs``, each followed by eot, shape (N,); and each document's length, shape (D,)."""

    def encode(chunk: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded, flat = tokenizer.encode_batch(chunk), []
        for ids in encoded:
            flat.extend(ids)
            flat.append(tokenizer.eot_id)
        lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int64, count=len(encoded))
        return np.array(flat, dtype=dtype), lengths

    parts = []
    # the tokenizers' encoders release the GIL, so threads tokenize chunks in parallel
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for chunk, part in zip(chunks := _chunks(docs), pool.map(encode, chunks), strict=True):
            parts.append(part)
            bar.update(sum(len(d) for d in chunk))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _mix(streams: list[tuple], weights: list[float], seed: int) -> list[tuple]:
    """Subsample whole documents so that source i holds a ``weights[i]`` share of the tokens.

    The source with the fewest tokens per unit of weight is kept whole; no document is repeated.
    """
    share = np.asarray(weights, dtype=np.float64) / sum(weights)
    total = min(len(tokens) / s for (tokens, _), s in zip(streams, share, strict=True))
    mixed = []
    for i, ((tokens, lengths), s) in enumerate(zip(streams, share, strict=True)):
        order = np.random.default_rng([seed, i]).permutation(len(lengths))
        k = min(int(np.searchsorted(np.cumsum(lengths[order]), s * total)) + 1, len(lengths))
        keep = np.zeros(len(lengths), dtype=bool)
        keep[order[:k]] = True
        mixed.append((tokens[np.repeat(keep, lengths)], lengths[keep]))
    return mixed


def _split(tokens: np.ndarray, lengths: np.ndarray, val_fraction: float) -> tuple:
    """(train tokens, train boundaries, val tokens, val boundaries): val is the last fraction."""
    cut = len(tokens) - int(len(tokens) * val_fraction)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    train_bounds = np.unique(np.concatenate([bounds[bounds <= cut], [cut]]))
    val_bounds = np.unique(np.concatenate([[0], bounds[bounds >= cut] - cut]))
    return tokens[:cut], train_bounds, tokens[cut:], val_bounds


def _write(directory: Path, split: str, tokens: list[np.ndarray], bounds: list[np.ndarray]) -> int:
    """Write ``split``'s sources one after the other: ``<split>.bin`` and ``<split>_docs.npy``."""
    stream = np.concatenate(tokens)
    stream.tofile(directory / f"{split}.bin")
    shifts = np.cumsum([0] + [len(t) for t in tokens[:-1]])
    offsets = np.unique(np.concatenate([b + s for b, s in zip(bounds, shifts, strict=True)]))
    np.save(directory / f"{split}_docs.npy", offsets.astype(np.int64))
    return len(stream)


def _fsync_folder(directory: Path) -> None:
    """Flush every file in ``directory`` and then the folder (its entries) to disk."""
    for path in [*sorted(p for p in directory.iterdir() if p.is_file()), directory]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def prepare_data(cfg: DataConfig, progress: bool = True) -> PreparedData:
    """Tokenize ``cfg``'s sources into a cache folder (or reuse a matching one) and open it."""
    key = _cache_key(cfg)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    directory = Path(cfg.cache_dir) / _folder_name(cfg, digest)
    if reused := _reusable(directory, digest):
        return reused
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)

    docs = [
        _sample(load_documents(source, cfg.text_column), cfg.sample_ratio, [cfg.seed, i])
        for i, source in enumerate(cfg.sources)
    ]
    for source, source_docs in zip(cfg.sources, docs, strict=True):
        if not any(source_docs):
            raise ValueError(f"dataset {source!r} has no text")
    texts = [d for source_docs in docs for d in source_docs]
    tokenizer = build_tokenizer(cfg.tokenizer, texts, cfg.vocab_size, cfg.simplify)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    workers = cfg.num_workers or os.cpu_count() or 1
    with tqdm(total=sum(map(len, texts)), unit="char", unit_scale=True, desc="tokenizing", disable=not progress) as bar:
        streams = [_tokenize(source_docs, tokenizer, dtype, workers, bar) for source_docs in docs]
    if cfg.weights is not None and len(streams) > 1:
        streams = _mix(streams, cfg.weights, cfg.seed)
    splits = [_split(tokens, lengths, cfg.val_fraction) for tokens, lengths in streams]
    counts = {
        f"{split}_tokens": _write(directory, split, [s[i] for s in splits], [s[i + 1] for s in splits])
        for split, i in (("train", 0), ("val", 2))
    }
    tokenizer.save(directory)
    manifest = {
        "hash": digest, "version": FORMAT_VERSION, "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id, "pad_id": tokenizer.pad_id,
        "dtype": dtype.name, **counts, "documents": sum(len(lengths) for _, lengths in streams), "settings": key,
    }  # fmt: skip
    tmp = directory / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    _fsync_folder(directory)  # token files, tokenizer and manifest on disk before the rename commits them
    os.replace(tmp, directory / MANIFEST)  # the manifest appears last and whole: it marks the folder done
    _fsync_folder(directory)  # and the rename itself
    return PreparedData(directory, tokenizer, manifest)
