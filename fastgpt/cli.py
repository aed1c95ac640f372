"""What every command-line entry point shares: user errors as one line and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Call ``main(argv)``; a user error prints ``error: ...`` on stderr and exits 2, Ctrl-C exits 130."""
    try:
        code = main(argv)
    except USER_ERRORS as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
