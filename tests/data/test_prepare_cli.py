"""``python -m fastgpt prepare``: prepares what ``train`` would, ends with one summary line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fastgpt.__main__ import main, run
from fastgpt.data import DataConfig, prepare_data


def test_prepare_writes_the_folder_train_reuses(tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 50)
    args = [f"data.dataset={corpus}", f"data.cache_dir={tmp_path / 'cache'}"]
    with pytest.raises(SystemExit) as stop:
        run(main, ["prepare", *args])
    assert stop.value.code == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"prepared 2,051 tokens \(1,846 train, 205 val; 2 token files\) in .+, [\d.]+ s, "
                        r"peak RSS [\d,]+ MiB", line), line
    (folder,) = (tmp_path / "cache").iterdir()
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    again = prepare_data(DataConfig(dataset=str(corpus), cache_dir=str(tmp_path / "cache")), progress=False)
    assert again.dir == folder and (folder / "manifest.json").stat().st_mtime_ns == stamp  # reused


def test_prepare_errors_are_one_line(tmp_path: Path, cli_error) -> None:
    line = cli_error(main, ["prepare", f"data.dataset={tmp_path / 'missing.txt'}"])
    assert line.startswith("error: dataset ") and "no such file or folder" in line
