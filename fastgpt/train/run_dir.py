"""A run folder (``train.out_dir``) as something read safely and written by one run at a time.

* ``pointed`` resolves the ``latest``/``best`` pointer files: they may only name a ``ckpt-NNNNNN``
  folder directly inside the run folder (no ``../``, no absolute path, no symlink leading out).
* ``checkpoints`` lists the run's checkpoint folders, so that a reader can take the newest complete
  one when a pointer is missing (a run killed after renaming ``ckpt-N`` into place but before
  writing its first pointer).
* ``write_pointer`` replaces a pointer atomically; ``prune`` deletes the checkpoints no pointer keeps;
  ``later_checkpoints`` and ``rewind`` serve a run resumed from an earlier checkpoint.
* ``holds_run`` tells whether a folder holds a run a new (not resumed) run would overwrite.
* ``RunLock`` is the ``.lock`` file naming the pid of the run training into the folder.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path

from fastgpt.config import folder_error

CKPT_NAME = re.compile(r"ckpt-\d{6,}")
LOCK = ".lock"
POINTERS = ("latest", "best")
RUN_FILES = ("latest", "best", "metrics.jsonl", "config.yaml")


def inside(run: Path, name: str) -> Path | None:
    """``run/name`` when ``name`` is a checkpoint folder name (``ckpt-NNNNNN``) and that folder, symlinks
    resolved, lies directly inside ``run``; else None."""
    if not CKPT_NAME.fullmatch(name):
        return None
    target = run / name
    if target.is_symlink() or target.resolve().parent != run.resolve():
        return None
    return target


def pointed(run: Path, which: str) -> Path | None:
    """The folder the pointer ``run/which`` names (None when there is no pointer); ValueError when the
    pointer is a symlink, unreadable, or names anything but a ``ckpt-NNNNNN`` folder inside ``run``."""
    pointer = run / which
    if pointer.is_symlink():
        raise ValueError(f"the pointer {str(pointer)!r} is a symlink; a run's pointers are plain files")
    try:
        text = pointer.read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"the pointer {str(pointer)!r} is unreadable ({exc.strerror or exc})") from None
    target = inside(run, text)
    if target is None:
        raise ValueError(f"the pointer {str(pointer)!r} names {text[:80]!r}, not a ckpt-NNNNNN folder inside "
                         f"{str(run)!r}; refusing to follow it")
    return target


def step_of(folder: Path) -> int:
    return int(folder.name.removeprefix("ckpt-"))


def checkpoints(run: Path) -> list[Path]:
    """The run's checkpoint folders (``ckpt-NNNNNN`` inside it, no symlinks), oldest first."""
    try:
        entries = list(run.iterdir())
    except OSError:
        return []
    found = [inside(run, e.name) for e in entries if CKPT_NAME.fullmatch(e.name)]
    return sorted((f for f in found if f is not None and f.is_dir()), key=step_of)


def holds_run(run: Path) -> bool:
    """True when ``run`` holds files of a training run: checkpoints, pointers, metrics, a config."""
    return run.is_dir() and (any((run / f).exists() for f in RUN_FILES) or bool(checkpoints(run)))


def later_checkpoints(out_dir: str | Path, ckpt: Path) -> list[Path]:
    """The checkpoints of the run in ``out_dir`` saved after ``ckpt`` (none when ``ckpt`` is not one of them)."""
    out = Path(out_dir)
    if inside(out, ckpt.name) is None:
        return []
    return [c for c in checkpoints(out) if step_of(c) > step_of(ckpt)]


def rewind(out_dir: str | Path, ckpt: Path) -> None:
    """Point ``latest`` at ``ckpt``, and ``best`` too when it names a later checkpoint: a run continued
    from ``ckpt`` then never names, nor keeps as best, what the abandoned later steps saved."""
    out = Path(out_dir)
    write_pointer(out, "latest", ckpt.name)
    best = pointed(out, "best")
    if best is None or step_of(best) > step_of(ckpt):
        write_pointer(out, "best", ckpt.name)


def write_pointer(out: Path, which: str, name: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{which}-", dir=out)
    with os.fdopen(fd, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / which)


def prune(out: Path, newest: int) -> None:
    """Delete the checkpoints that are neither ``best`` nor among the ``newest`` up to ``latest`` (those
    after it belong to a run resumed from an earlier one), and what interrupted saves left (temporary
    folders, pointers)."""
    keep = set()
    for pointer in POINTERS:
        try:
            target = pointed(out, pointer)
        except ValueError:  # a pointer this run did not write: prune nothing
            return
        keep |= {target.name} if target is not None else set()
        if pointer == "latest" and target is not None:
            kept = [c for c in checkpoints(out) if step_of(c) <= step_of(target)]
            keep |= {c.name for c in kept[-newest:]}
    for entry in out.iterdir():
        stale_ckpt = entry.name.startswith("ckpt-") and entry.name not in keep
        if entry.is_dir() and (stale_ckpt or entry.name.startswith(".ckpt-")):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_file() and entry.name.startswith(tuple(f".{p}-" for p in POINTERS)):
            entry.unlink(missing_ok=True)


class RunLock:
    """``out_dir/.lock``: an exclusive ``flock`` on it, and the pid of the process holding it inside.

    The kernel drops the lock when its process ends, however it ends, so the lock of a dead run is
    free to take; ``acquire`` refuses (ValueError, naming the pid) while a live process holds it.
    """

    def __init__(self, run: Path) -> None:
        self.path = run / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:  # the first thing a run writes into out_dir
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise folder_error("train.out_dir", str(self.path.parent), exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ValueError(f"train.out_dir={str(self.path.parent)!r} is in use by another training run "
                                 f"(pid {owner}, see {self.path}); wait for it to end or use another "
                                 "train.out_dir") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # its holder released (deleted) it meanwhile
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # before closing: no one can lock this file any more
            os.close(self.fd)
            self.fd = None
