"""What an interrupted data preparation keeps: its tokenizer and the parts it finished tokenizing.

A preparation works in its cache folder, whose name carries the hash of every setting
(:func:`fastgpt.data.prepare.prepare_data`). Under ``<folder>/partial/`` it saves the tokenizer
once built (a trained BPE can take minutes) and each finished part of the token stream, every
file written whole and flushed before it is renamed into place. When a preparation is killed,
the next one with the same settings finds them and redoes only the rest; a part that does not
read back as what it should be is tokenized again. ``partial/`` is removed once the manifest
marks the folder done. Parts are NumPy ``.npy`` arrays read with ``allow_pickle=False`` and the
tokenizer is JSON: nothing in the folder is executed.

A write that fails (a full disk: NumPy's short write raises an ``OSError`` without an errno) inside
``Partial.writing`` becomes one ``ValueError`` naming the folder; everything but the finished pieces
is removed first, so no half-written file is left beside them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from fastgpt.tokenizers import META_FILE, Tokenizer, load_tokenizer

FOLDER = "partial"
_DIGEST = "digest"  # the settings' hash these files belong to
_TOKENIZER = "tokenizer"
_TMP = ".tmp"  # the suffix of a piece being written (``_write_whole``)
DISK_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS)


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
    tmp = path.with_name(path.name + _TMP)
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
        tmp = folder.with_name(folder.name + _TMP)
        with self.writing():
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
        with self.writing():
            for file, array in zip(files, (tokens, lengths), strict=True):
                _write_whole(file, lambda p, a=array: _save_npy(p, a))
        return tokens, lengths

    def saved_tokens(self, name: str) -> np.ndarray:
        """The tokens of part ``name`` (saved by ``tokens``), memory-mapped, shape (N,)."""
        return np.load(self.dir / f"{name}.tokens.npy", mmap_mode="r", allow_pickle=False)

    @contextlib.contextmanager
    def writing(self, disk_only: bool = False) -> Iterator[None]:
        """Writes into the folder: an ``OSError`` removes everything but the finished pieces and raises one
        ``ValueError`` naming the folder and why. With ``disk_only`` (the block also reads its sources)
        only a full or failing disk's: errno in ``DISK_FAILURES``, or a plain OSError with none (NumPy's
        short write; a FileNotFoundError with a message of ours has none either, and is left alone)."""
        try:
            yield
        except OSError as exc:
            if disk_only and exc.errno not in DISK_FAILURES and not (exc.errno is None and type(exc) is OSError):
                raise
            error = _write_error(self.dir.parent, exc)
            self._drop_unfinished()
            raise error from None

    def _drop_unfinished(self) -> None:
        """Remove what a failed write left: every file of the folder but ``partial/``, and the pieces
        ``partial/`` was still writing (``*.tmp``). A rerun with the same settings takes the rest."""
        for path in [*self.dir.parent.iterdir(), *(self.dir.iterdir() if self.dir.is_dir() else ())]:
            if path == self.dir or path.parent == self.dir and not path.name.endswith(_TMP):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def finish(self) -> None:
        """Remove the pieces (the folder's manifest now says it is done)."""
        shutil.rmtree(self.dir, ignore_errors=True)


def _write_error(directory: Path, exc: OSError) -> ValueError:
    """The one line for a write into ``directory`` that failed with ``exc``."""
    detail = exc.strerror or str(exc).strip() or type(exc).__name__
    try:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT) or shutil.disk_usage(directory).free < 1 << 20
    except OSError:
        full = False
    why = "the disk is full" if full else "the write failed"
    return ValueError(f"data.cache_dir: cannot write the prepared data in {str(directory)!r} ({why}: "
                      f"{detail[:200]}); the parts finished so far are kept in its {FOLDER}/ folder, and a rerun "
                      "with more free space continues from them")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # np.save(path) would append ".npy" to the temporary name
        np.save(f, array, allow_pickle=False)
