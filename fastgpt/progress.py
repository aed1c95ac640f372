"""Progress bars that show only on a terminal.

Piped (``| tee``), redirected (``nohup``, a file) or under CI, stderr gets no bar, and so none of the
carriage returns a bar redraws itself with; only the lines the command prints itself. Every bar in
fastgpt (tokenizing, evaluating, training) is made here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def on_terminal() -> bool:
    """True when stderr, where the bars and the logs go, is a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(iterable: Iterable | None = None, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr when ``enabled`` and stderr is a terminal; else a disabled one, which still
    iterates and counts (``bar.disable`` is True) but writes nothing. ``kwargs`` go to tqdm."""
    return tqdm(iterable, disable=not (enabled and on_terminal()), file=sys.stderr, **kwargs)
