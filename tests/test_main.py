"""``python -m fastgpt <command>``: one table of commands, each also reachable as its own module."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fastgpt.__main__ import COMMANDS, main, usage

EXPECTED = ("train", "prepare", "generate", "eval", "export", "convert", "lm_eval", "info")


def test_help_lists_every_command(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == usage()
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == list(EXPECTED) == list(COMMANDS)


@pytest.mark.parametrize("command", [c for c in EXPECTED if c != "lm_eval"])
def test_every_command_answers_help(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:  # argparse exits 0 after printing the help
        main([command, "--help"])
    assert stop.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_unknown_command_is_one_error_line(cli_error) -> None:
    line = cli_error(main, ["trian"])
    assert "unknown command 'trian'" in line and "train" in line


def test_command_errors_keep_their_one_line(cli_error, tmp_path) -> None:
    line = cli_error(main, ["generate", "--checkpoint", str(tmp_path / "nothing")])
    assert "does not exist" in line


def test_python_dash_m_fastgpt_and_the_module_agree() -> None:
    via_table = subprocess.run([sys.executable, "-m", "fastgpt", "info"], capture_output=True, text=True, timeout=120)
    via_module = subprocess.run([sys.executable, "-m", "fastgpt.info"], capture_output=True, text=True, timeout=120)
    assert via_table.returncode == via_module.returncode == 0, via_table.stderr + via_module.stderr
    assert via_table.stdout == via_module.stdout
