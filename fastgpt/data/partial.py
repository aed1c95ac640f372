"""What an interrupted data preparation keeps: its tokenizer and the parts it finished tokenizing.

A preparation works in its cache folder, whose name carries the hash of every setting
(:func:`fastgpt.data.prepare.prepare_data`). Under ``<folder>/partial/`` it saves the tokenizer
once built (a trained BPE can take minutes) and each finished part of the token stream, every
file written whole and flushed before it is renamed into place. When a preparation is killed,
the next one with the same settings finds them and redoes only the rest; a part that does not
read back as what it should be is tokenized again. ``partial/`` is removed once the manifest
marks the folder done. Parts are NumPy ``.npy`` arrays read with ``allow_pickle=False`` and the
tokenizer is JSON: nothing in the folder is executed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fastgpt.tokenizers import META_FILE, Tokenizer, load_tokenizer

FOLDER = "partial"
_DIGEST = "digest"  # the settings' hash these files belong to
_TOKENIZER = "tokenizer"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(directory: Path) -> None:
    """Flush every file in ``directory`` (not in its subfolders) and then the folder (its entries) to disk."""
    for path in [*sorted(p for p in directory.iterdir() if p.is_file()), directory]:
        _fsync(path)


def _write_whole(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` into a temporary name beside ``path``, flush it to disk, then rename it to ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


class Partial:
    """The finished pieces of one preparation in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory / FOLDER

    @classmethod
    def start(cls, directory: Path, digest: str) -> Partial:
        """Empty ``directory`` except for pieces saved under ``digest``, and record ``digest``.

        Raises ``OSError`` when the folder cannot be made or cleared.
        """
        keep = cls(directory)
        marker = keep.dir / _DIGEST
        kept = marker.is_file() and marker.read_text() == digest
        if directory.is_dir():
            for child in directory.iterdir():
                if kept and child == keep.dir:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        keep.dir.mkdir(parents=True, exist_ok=True)
        if not kept:
            _write_whole(marker, lambda p: p.write_text(digest))
        return keep

    def tokenizer(self, build: Callable[[], Tokenizer]) -> Tokenizer:
        """The saved tokenizer, or ``build()``'s, saved before it is returned."""
        folder = self.dir / _TOKENIZER
        if (folder / META_FILE).is_file():
            try:
                return load_tokenizer(folder)
            except (OSError, ValueError):  # unreadable: build it again
                shutil.rmtree(folder)
        tokenizer = build()
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save(tmp)
        fsync_folder(tmp)
        os.replace(tmp, folder)
        _fsync(self.dir)
        return tokenizer

    def tokens(
        self, name: str, dtype: np.dtype, documents: int, tokenize: Callable[[], tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Part ``name``'s (tokens, document lengths): saved ones that fit, or ``tokenize()``'s, then saved.

        Saved arrays are used only when the tokens have ``dtype``, there are ``documents`` lengths
        and they add up to the number of tokens.
        """
        files = self.dir / f"{name}.tokens.npy", self.dir / f"{name}.lengths.npy"
        try:
            tokens, lengths = (np.load(f, allow_pickle=False) for f in files)
            if (
                tokens.dtype == dtype
                and tokens.ndim == lengths.ndim == 1
                and lengths.dtype == np.int64
                and len(lengths) == documents
                and int(lengths.sum()) == len(tokens)
            ):
                return tokens, lengths
        except (OSError, ValueError, EOFError):  # missing, or cut short by a crash before the rename
            pass
        tokens, lengths = tokenize()
        for file, array in zip(files, (tokens, lengths), strict=True):
            _write_whole(file, lambda p, a=array: _save_npy(p, a))
        return tokens, lengths

    def finish(self) -> None:
        """Remove the pieces (the folder's manifest now says it is done)."""
        shutil.rmtree(self.dir, ignore_errors=True)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # np.save(path) would append ".npy" to the temporary name
        np.save(f, array, allow_pickle=False)
