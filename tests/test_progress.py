"""Progress bars show on a terminal only."""

from __future__ import annotations

import io
import sys

import pytest

from fastgpt.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal,enabled,shown", [(True, True, True), (True, False, False), (False, True, False)])
def test_a_bar_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch, terminal: bool, enabled: bool,
                                  shown: bool) -> None:
    stderr = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    with progress_bar(range(3), enabled, desc="work") as bar:
        assert bar.disable is not shown
        assert list(bar) == [0, 1, 2]
    assert ("work" in stderr.getvalue()) is shown and ("\r" in stderr.getvalue()) is shown
