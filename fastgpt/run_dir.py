"""A run folder (``train.out_dir``) as something read safely and written by one run at a time.

* ``pointed`` resolves the ``latest``/``best`` pointer files: they may only name a ``ckpt-NNNNNN``
  folder directly inside the run folder (no ``../``, no absolute path, no symlink leading out).
* ``checkpoints`` lists the run's checkpoint folders, so that a reader can take the newest complete
  one when a pointer is missing (a run killed after renaming ``ckpt-N`` into place but before
  writing its first pointer).
* ``write_pointer`` replaces a pointer atomically; ``record`` notes in ``.checkpoints`` each checkpoint
  the run is about to save; ``prune`` deletes those of them no pointer keeps, and what interrupted saves
  of them left, by the exact names the run writes: a folder of the user's (``ckpt-backup``,
  ``ckpt-000030-keep``, ``.ckpt-mine``, a ``ckpt-NNNNNN`` the run never saved) is never touched.
  ``later_checkpoints`` and ``rewind`` serve a run resumed from an earlier checkpoint.
* ``holds_run`` tells whether a folder holds a run a new (not resumed) run would overwrite;
  ``unsaved_run``, whether that run was stopped before its first checkpoint.
* ``RunLock`` is the ``.lock`` file naming the pid of the run training into the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path

from fastgpt.config import folder_error

CKPT_NAME = re.compile(r"ckpt-\d{6,}")
# what a save of ckpt-NNNNNN writes before renaming it into place: tempfile.mkdtemp(prefix=".ckpt-NNNNNN-")
# (8 characters of tempfile's alphabet) or, sharded, checkpoint.staging_dir's ".ckpt-NNNNNN-staged"
TEMP_CKPT = re.compile(r"\.(ckpt-\d{6,})-(?:staged|[a-z0-9_]{8})")
LOCK = ".lock"
POINTERS = ("latest", "best")
RECORD = ".checkpoints"  # the checkpoints this run saved (one name a line): the only ones prune deletes
# write_file's temporary files (tempfile.mkstemp(prefix=".latest-"), ...)
TEMP_FILE = re.compile(r"\.(?:latest|best|checkpoints)-[a-z0-9_]{8}")
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


def unsaved_run(run: Path) -> bool:
    """True when ``run`` holds a run stopped before its first checkpoint: the ``config.yaml`` (and
    ``metrics.jsonl``) a run writes once its first step went through, but no checkpoint folder and no
    pointer. ``--resume`` starts such a run again from its saved config."""
    return ((run / "config.yaml").is_file() and not checkpoints(run)
            and not any((run / p).exists() or (run / p).is_symlink() for p in POINTERS))


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
    write_file(out, which, name + "\n")


def write_file(out: Path, file: str, text: str) -> None:
    """Replace ``out/file`` with ``text`` atomically (a temporary file beside it, flushed, renamed over it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{file.lstrip('.')}-", dir=out)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out / file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _listed(out: Path) -> set[str] | None:
    """The names ``out/.checkpoints`` lists; None when there is none (a run saved before the record
    existed) or it is unreadable."""
    try:
        return {n for n in (out / RECORD).read_text(errors="replace").split() if CKPT_NAME.fullmatch(n)}
    except OSError:
        return None


def recorded(out: Path) -> set[str]:
    """The checkpoints that are the run's: those ``out/.checkpoints`` lists and those its pointers name."""
    ours = _listed(out) or set()
    for pointer in POINTERS:
        try:
            target = pointed(out, pointer)
        except ValueError:
            continue
        ours |= {target.name} if target is not None else set()
    return ours


def record(out: Path, step: int) -> None:
    """Note ``ckpt-{step}`` as the run's before any of its files exist (and what the pointers name now,
    before the save moves them), so that ``prune`` may delete it, or what an interrupted save of it
    left, once no pointer keeps it."""
    _write_record(out, recorded(out) | {f"ckpt-{step:06d}"})


def _write_record(out: Path, names: set[str]) -> None:
    write_file(out, RECORD, "".join(f"{n}\n" for n in sorted(names, key=lambda n: int(n[5:]))))


def prune(out: Path, newest: int) -> None:
    """Delete the run's checkpoints (recorded, or named by a pointer) that are neither ``best`` nor among
    the ``newest`` up to ``latest`` (those after it belong to a run resumed from an earlier one), what
    interrupted saves of them left (temporary folders) and ``write_file``'s temporary files. Only the
    names the run writes match (``CKPT_NAME``, ``TEMP_CKPT``, ``TEMP_FILE``, in full): anything else in
    ``out``, and a ``ckpt-NNNNNN`` the run never saved, is the user's and stays."""
    keep, named = set(), set()
    for pointer in POINTERS:
        try:
            target = pointed(out, pointer)
        except ValueError:  # a pointer this run did not write: prune nothing
            return
        named |= {target.name} if target is not None else set()
        if pointer == "latest" and target is not None:
            kept = [c for c in checkpoints(out) if step_of(c) <= step_of(target)]
            keep |= {c.name for c in kept[-newest:]}
    keep |= named
    ours = recorded(out)
    for entry in out.iterdir():
        temp = TEMP_CKPT.fullmatch(entry.name)
        if temp is not None and temp[1] in ours and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name in ours and entry.name not in keep and inside(out, entry.name) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif TEMP_FILE.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
    left = {n for n in ours if (out / n).is_dir()}  # the names of failed saves and pruned checkpoints go
    if left != _listed(out):
        with contextlib.suppress(OSError):  # a full disk: the next prune writes it
            _write_record(out, left)


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
