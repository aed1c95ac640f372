"""Values shown in error messages, kept short: a user's value (a config override, a CLI argument, a
file's content) can be a megabyte long, and an error line should stay one readable line."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

LONGEST_ERROR = 1000  # characters of an error line; a longer one keeps its start and end


def cut(value: Any, keep: int = 80, quote: bool = True) -> str:
    """``repr(value)`` (``str(value)`` when not ``quote``), its middle elided when longer than ``keep``
    characters: ``'abcd'...'yz' (1,000,000 chars)``. A string keeps its quotes on both pieces."""
    if isinstance(value, str) and quote:
        if len(value) <= keep:
            return repr(value)
        return f"{value[:keep // 2]!r}...{value[-keep // 4:]!r} ({len(value):,} chars)"
    text = repr(value) if quote else str(value)
    if len(text) <= keep:
        return text
    return f"{text[:keep // 2]}...{text[-keep // 4:]} ({len(text):,} chars)"


def cut_path(path: Any) -> str:
    """``repr(str(path))``, cut as ``cut`` does but only past 300 characters: a path a user typed is shown
    whole, and a megabyte one (never a real file) is not."""
    return cut(str(path), 300)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose error line (an invalid choice, a bad number) is cut to
    ``LONGEST_ERROR`` characters: argparse quotes the value given, whatever its length."""

    def error(self, message: str) -> NoReturn:
        self.print_usage()
        self.exit(2, f"{self.prog}: error: {cut(message, LONGEST_ERROR, quote=False)}\n")
