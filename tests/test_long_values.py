"""A megabyte value given to a CLI (a config override, a flag, a path) gives one short ``error:`` line: the
value is shown by ``fastgpt.messages.cut`` (its start, its end and its length), never whole.

Each case names a different place that reports the value; the line must stay under ``SHORT`` characters,
well below the ``LONGEST_ERROR`` that ``fastgpt.__main__.run`` cuts any line to, so a place that prints
the value whole fails here even though the last-resort cut would shorten it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_run import tiny_args

from fastgpt import __main__ as top
from fastgpt import generate as generate_mod
from fastgpt.__main__ import run
from fastgpt.eval import evaluate as eval_mod
from fastgpt.messages import LONGEST_ERROR, cut
from fastgpt.train import cli as train_mod

BIG = "x" * 1_000_000
SHOWN = "(1,000,000 chars)"  # how cut() counts the value it elides
SHORT = LONGEST_ERROR - 100  # a line the last-resort cut shortened is longer, and counts the whole line

TRAIN_CASES = {  # override -> what the line names
    "model.pos_encoding": (f"model.pos_encoding={BIG}", "error: model.pos_encoding='xxx"),
    "train.dtype": (f"train.dtype={BIG}", "error: train.dtype='xxx"),
    "train.device": (f"train.device={BIG}", "error: train.device='xxx"),
    "data.mode": (f"data.mode={BIG}", "error: data.mode must be one of"),
    "train.max_iters": (f"train.max_iters={BIG}", "error: train.max_iters must be int, got 'xxx"),
    "eval.data": (f"eval.data={BIG}", "error: eval.data must be a mapping, got 'xxx"),
    "train.lora_targets": (f"train.lora_targets=[{BIG}]", "error: train.lora_targets item='xxx"),
    "train.freeze": (f"train.freeze=[{BIG}]", "error: train.freeze pattern 'xxx"),
    "model.preset": (f"model.preset={BIG}", "error: unknown preset 'xxx"),
    "data.tokenizer": (f"data.tokenizer={BIG}", "error: unknown tokenizer 'xxx"),
    "data.dataset": (f"data.dataset={BIG}", "error: dataset 'xxx"),
    "data.chat_template": (f"data.chat_template={BIG}", "error: data.chat_template='xxx"),
    "unknown key": (f"train.{BIG}=1", "error: unknown config key train.xxx"),
    "unknown section": (f"{BIG}.key=1", "error: unknown config section 'xxx"),
}


def _check(line: str, start: str) -> None:
    assert line.startswith(start), line[:300]
    assert SHOWN in line and len(line) < SHORT, f"{len(line):,} chars: {line[:300]}"


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_a_long_override_gives_a_short_line(corpus: Path, tmp_path: Path, cli_error, monkeypatch,
                                             case: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # data.dataset: the hub client fails at once, network or not
    override, start = TRAIN_CASES[case]
    extra = []
    if case == "data.chat_template":  # the template is read in SFT only
        (tmp_path / "chat.jsonl").write_text('{"prompt": "hi", "response": "ok"}\n' * 20)
        extra = ["data.mode=sft", f"data.dataset={tmp_path / 'chat.jsonl'}"]
    _check(cli_error(train_mod.main, tiny_args(corpus, tmp_path / "out", *extra, override)), start)


def test_a_long_value_changed_on_resume_gives_a_short_line(trained: Path, corpus: Path, tmp_path: Path,
                                                            cli_error) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    line = cli_error(train_mod.main, ["--resume", *tiny_args(corpus, out, f"data.dataset={BIG}")])
    _check(line, "error: data.dataset cannot change when resuming (the run has ")
    line = cli_error(train_mod.main, [f"--resume={BIG}", *tiny_args(corpus, out)])
    _check(line, f"error: {str(out)!r} has no complete checkpoint 'xxx")


def test_long_flags_give_a_short_line(trained: Path, cli_error) -> None:
    base = ["--checkpoint", str(trained)]
    _check(cli_error(generate_mod.main, [*base, "--device", BIG]), "error: --device='xxx")
    _check(cli_error(eval_mod.main, [*base, "--tasks", BIG]), "error: unknown task 'xxx")
    _check(cli_error(eval_mod.main, [*base, "--data", BIG]), "error: --data 'xxx")
    _check(cli_error(eval_mod.main, [*base, "--data", f"{BIG}=file.jsonl"]), "error: unknown task 'xxx")
    _check(cli_error(top.main, [BIG]), "error: unknown command 'xxx")


@pytest.mark.parametrize("path", ["/tmp/" + "d" * 1_000_000, "d" * 300], ids=["a megabyte path", "a long name"])
def test_a_path_too_long_for_a_file_name_is_one_short_line(trained: Path, tmp_path: Path, cli_error,
                                                           path: str) -> None:
    # the OS refuses it (ENAMETOOLONG) wherever it is first looked up: a checkpoint, an output, a config
    for main, argv in [(generate_mod.main, ["--checkpoint", path]),
                       (eval_mod.main, ["--checkpoint", str(trained), "--output", path]),
                       (train_mod.main, ["--config", path])]:
        line = cli_error(main, argv)  # the path as the OS was given it: generate's ends in /model.safetensors
        assert line.startswith(f"error: {cut(path, 300)[:100]}") and "is too long for a file name" in line, line[:300]
        assert len(line) < 400


def test_any_error_line_is_cut_to_the_longest_allowed(capsys) -> None:
    message = f"a message quoting {BIG} and saying what to do"

    def main(argv: list[str] | None) -> int:
        raise ValueError(message)

    with pytest.raises(SystemExit) as stop:
        run(main, [])
    line = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and line.startswith("error: a message quoting xxx") and len(line) < LONGEST_ERROR + 50
    assert line.endswith(f"and saying what to do ({len(message):,} chars)")


def test_cut_keeps_short_values_as_repr() -> None:
    assert cut("cuda:0") == "'cuda:0'" and cut(3) == "3" and cut(["a", 1]) == "['a', 1]"
    assert cut("a" * 100) == f"{'a' * 40!r}...{'a' * 20!r} (100 chars)"
    assert cut(["a" * 100]) == f"{str(['a' * 100])[:40]}...{str(['a' * 100])[-20:]} (104 chars)"


@pytest.mark.parametrize("argv", [
    ["train", "--recipe", "x" * 100_000],
    ["generate", "--checkpoint", "c", "--max_new_tokens", "9" * 100_000 + "x"],
    ["eval", "--checkpoint", "c", "--dtype", "y" * 100_000],
], ids=["train-choice", "generate-int", "eval-choice"])
def test_argparse_errors_are_cut_too(argv: list[str], tmp_path: Path) -> None:
    """argparse's own error lines quote the value given, at any length (100,000: one argument's limit is 128 KiB)."""
    done = subprocess.run([sys.executable, "-m", "fastgpt", *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "error:" in line and len(line) < 1100 and "chars)" in line, line[:300]
