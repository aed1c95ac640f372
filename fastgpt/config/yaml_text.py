"""YAML as fastgpt reads it (config files, overrides, a checkpoint's config.yaml): plain data only.

``yaml.safe_load`` builds no objects, but it still expands aliases (380 bytes of ``*a`` references
became 6 GB) and recurses once per nesting level. Here an alias is refused, nesting deeper than
``MAX_DEPTH`` is refused, and files are read only when they are regular files of at most ``MAX_BYTES``
(a FIFO would block, ``/dev/zero`` never ends). Every refusal is a ``ValueError`` naming the text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # a config is a few KB
MAX_DEPTH = 50  # a config nests two levels (section, key) plus a list or two


class _Loader(yaml.SafeLoader):
    """safe_load's loader without aliases and with bounded nesting."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not read in fastgpt configs; write the value out")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.YAMLError(f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse(text: str) -> Any:
    """The data in ``text``; raises ``yaml.YAMLError`` (its own, or for an alias or deep nesting)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def read_text(path: Path, what: str) -> str:
    """The text of ``path`` (``what`` names it in errors): a regular UTF-8 file of at most MAX_BYTES."""
    try:
        if path.is_dir():
            raise ValueError(f"{what} {str(path)!r} is a folder, not a file")
        if not path.is_file():
            raise ValueError(f"{what} {str(path)!r} is not a regular file")
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:  # no permission, ...
        raise ValueError(f"{what} {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise ValueError(f"{what} {str(path)!r} is larger than {MAX_BYTES >> 20} MB; a config is a few KB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {str(path)!r} is not UTF-8 text (byte at offset {exc.start})") from None
