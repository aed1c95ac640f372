"""``--output`` of generate and eval that cannot be written: one ``error:`` line and exit 2 (real processes).

* a folder, a missing parent folder and a place no file can be created (``/proc``) are refused before any
  work: the same command with a checkpoint that does not exist names the output, not the checkpoint;
* ``/dev/full`` fails only when written, after the work: one line naming it, no traceback;
* a write that fails halfway (a file size limit, ``RLIMIT_FSIZE``: a real EFBIG from the kernel) leaves the
  file that was there whole and no temporary file beside it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_faults import TIMEOUT, _error

import fastgpt


def _command(name: str, checkpoint: Path, output: Path | str, tmp_path: Path) -> list[str]:
    """generate (a prompt file, 2 new tokens each) or eval (a 2-question task file) writing ``output``."""
    if name == "generate":
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("the king\n" * 40)
        return ["generate", "--checkpoint", str(checkpoint), "--prompt_file", str(prompts), "--max_new_tokens", "2",
                "--device", "cpu", "--output", str(output)]  # fmt: skip
    task = tmp_path / "hellaswag.jsonl"
    task.write_text("".join(json.dumps({"context": "the king", "choices": [" and", " queen"], "label": i}) + "\n"
                            for i in (0, 1)))
    return ["eval", "--checkpoint", str(checkpoint), "--data", f"hellaswag={task}", "--device", "cpu",
            "--output", str(output)]  # fmt: skip


COMMANDS = ["generate", "eval"]
UNWRITABLE = {
    "a folder": (lambda tmp: tmp, "is a folder"),
    "a missing folder": (lambda tmp: tmp / "no" / "out.json", "does not exist"),
    "a read-only place": (lambda tmp: Path("/proc/fastgpt-out.json"), "cannot be written"),
}


@pytest.mark.parametrize("case", list(UNWRITABLE))
@pytest.mark.parametrize("command", COMMANDS)
def test_an_unwritable_output_is_refused_before_the_work(tmp_path: Path, command: str, case: str) -> None:
    make, reason = UNWRITABLE[case]
    output = make(tmp_path)
    # a checkpoint that does not exist: an error about it would mean the output was checked after loading
    line = _error(*_command(command, tmp_path / "no-such-run", output, tmp_path), cwd=tmp_path)
    assert line.startswith(f"error: --output {str(output)!r}") and reason in line, line
    assert "checked before" in line


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
@pytest.mark.parametrize("command", COMMANDS)
def test_a_full_device_is_one_error_line(trained: Path, tmp_path: Path, command: str) -> None:
    line = _error(*_command(command, trained, "/dev/full", tmp_path), cwd=tmp_path)
    assert line == "error: --output '/dev/full' could not be written (No space left on device)"


def _file_size_limit(limit: int):
    """Run the child with files limited to ``limit`` bytes: a longer write fails with EFBIG (Python ignores
    SIGXFSZ), the way a full disk fails a write partway."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("command", COMMANDS)
def test_a_failed_write_leaves_the_old_file_whole(trained: Path, tmp_path: Path, command: str) -> None:
    output = tmp_path / "results.json"
    old = "the results of an earlier run\n"
    output.write_text(old)
    argv = _command(command, trained, output, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(fastgpt.__file__).parents[1]),
           "FASTGPT_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    # generate writes 40 lines (~1.4 kB), eval ~80 bytes: both more than the limit
    done = subprocess.run([sys.executable, "-m", "fastgpt", *argv], capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=tmp_path, env=env, preexec_fn=_file_size_limit(50))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines[-1] == (f"error: --output {str(output)!r} could not be written (File too large); the file there "
                         "was left as it was")
    assert output.read_text() == old
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_the_output_is_written_whole_with_the_usual_mode(trained: Path, tmp_path: Path, command: str) -> None:
    output = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "fastgpt", *_command(command, trained, output, tmp_path)],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(Path(fastgpt.__file__).parents[1])})
    assert done.returncode == 0, done.stderr[-2000:]
    text = output.read_text()
    assert (len(text.splitlines()) == 40) if command == "generate" else "hellaswag" in json.loads(text)
    umask = os.umask(0)
    os.umask(umask)
    assert output.stat().st_mode & 0o777 == 0o666 & ~umask
