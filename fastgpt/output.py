"""The ``--output`` file of a command (generate's JSON lines, eval's results): checked before the work,
written whole after it.

``check_output`` runs before anything slow: a folder, a missing parent folder, or a place no file can
be created in (read-only, no permission) is a ValueError naming the flag and the path, so the user
does not wait for the work to learn it. ``write_output`` writes a regular file (or a new one)
atomically, a temporary file beside it renamed over it, so a failed write (disk full, I/O error)
leaves the old file or none, never half of one; it writes straight into a path that exists but is
not a regular file (``/dev/stdout``, a pipe, ``/dev/full``), which must not be replaced. Either way a
failure is one ValueError line.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


def check_output(path: str | Path, flag: str = "--output", before: str = "any work") -> Path:
    """``path`` (``~`` expanded), once it is known that ``write_output`` can create or replace it;
    ValueError otherwise, saying it was checked before ``before`` ran. An existing file is left as it is."""
    out = Path(path).expanduser()
    where = f"{flag} {str(path)!r}"
    if out.is_dir():
        raise ValueError(f"{where} is a folder; name a file to write (checked before {before} runs)")
    if not out.parent.is_dir():
        raise ValueError(f"{where}: the folder {str(out.parent)!r} does not exist (checked before {before} runs)")
    try:
        mode = out.stat().st_mode if out.exists() else None
        if mode is not None and not stat.S_ISREG(mode):  # a device or a pipe: written into, never replaced
            fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)  # NONBLOCK: a FIFO with no reader
            os.close(fd)
            return out
        if mode is not None and not os.access(out, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out))
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"):
            pass  # a file can be created beside it: the temporary one write_output renames over it
    except OSError as exc:
        raise ValueError(f"{where} cannot be written ({_reason(exc)}); checked before {before} runs") from None
    return out


def write_output(path: str | Path, text: str, flag: str = "--output") -> None:
    """Write ``text`` (UTF-8) to ``path``: atomically where it is, or will be, a regular file; a failure
    (disk full, I/O error, ...) is a ValueError naming the flag and the path, leaving no partial file."""
    out = Path(path).expanduser()
    data = text.encode("utf-8")
    try:
        if out.exists() and not out.is_file():  # /dev/stdout, a pipe, a device: write straight into it
            with open(out, "wb") as f:
                f.write(data)
            return
        mode = stat.S_IMODE(out.stat().st_mode) if out.exists() else 0o666 & ~_umask()
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)  # mkstemp's file is private (0600): give it the mode open() would have
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        kept = "; the file there was left as it was" if out.is_file() else "" if out.exists() else "; no file was left"
        raise ValueError(f"{flag} {str(path)!r} could not be written ({_reason(exc)}){kept}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
