"""The multi-turn chat of ``python -m fastgpt generate --chat`` (no ``--prompt``): turns keep their history,
``/reset`` clears it, the oldest turns are dropped (with a note) to keep the prompt and the reply within
block_size, ``/exit`` and the end of the input exit 0; on a terminal (a pseudo-terminal) Ctrl-C stops a
reply, not the chat, and Ctrl-D ends it.

The checkpoints are byte-level models whose weights are set so that the greedy reply is always ``a`` (the
final norm's output is a constant vector, which only ``a``'s head row points along): a reply's length is
its token budget, and the output is predictable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastgpt import GPT, GPTConfig
from fastgpt import generate as generate_mod
from fastgpt.data.chat_template import ChatTemplate
from fastgpt.tokenizers import build_tokenizer
from fastgpt.train.checkpoint import save_checkpoint

BYTES = build_tokenizer("byte", ["x"])
A = BYTES.encode("a")[0]


def _always_a(out: Path, **shape: int | str) -> Path:
    """A checkpoint whose greedy next token is ``a`` whatever the context."""
    cfg = GPTConfig(vocab_size=BYTES.vocab_size, tie_embeddings=False, **shape)
    model = GPT(cfg)
    with torch.no_grad():
        model.ln_f.norm.weight.zero_()
        model.ln_f.norm.bias.zero_()
        model.ln_f.norm.bias[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[A, 0] = 10.0
    save_checkpoint(out, 1, model, BYTES, {"model": dataclasses.asdict(cfg)}, {"iter": 1})
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _always_a(tmp_path_factory.mktemp("chat") / "run", block_size=96, n_layer=1, n_head=2, n_embd=16)


def _prompt_text(*turns: str) -> str:
    """The default template's prompt of user messages and replies (alternating), eot after each reply."""
    text = ""
    for i, turn in enumerate(turns):
        text += f"<|user|>\n{turn}\n" if i % 2 == 0 else f"<|assistant|>\n{turn}<|endoftext|>"
    return text + "<|assistant|>\n"


def test_a_prompt_ends_each_earlier_reply_with_its_eot_as_in_training() -> None:
    template = ChatTemplate(BYTES)
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
             {"role": "user", "content": "x"}]
    ids = template.prompt(turns)
    assert BYTES.decode(ids) == _prompt_text("hi", "yo", "x")
    trained, mask = template.encode([*turns, {"role": "assistant", "content": "z"}])
    assert trained[: len(ids)] == ids and mask[len(ids)] == 1  # the reply follows the prompt, as trained


def test_turns_keep_their_history_reset_clears_it_and_the_oldest_are_dropped(
        checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    asked: list[tuple[str, int]] = []

    def replies_ok(model, prompt: list[int], max_new_tokens: int, **options):
        asked.append((BYTES.decode(prompt), max_new_tokens))
        yield from [*BYTES.encode("ok"), BYTES.eot_id, *BYTES.encode("never shown")]

    monkeypatch.setattr(generate_mod, "generate", replies_ok)
    long = "x" * 80  # alone 104 tokens: more than block_size
    lines = ["alpha", "bravo", "/reset", "delta", "gamma", long, "omega", "", "  ", "/nope", "kappa"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    args = ["--checkpoint", str(checkpoint), "--chat", "--max_new_tokens", "20", "--device", "cpu"]
    assert generate_mod.main(args) == 0
    out, err = capsys.readouterr()
    assert out == "ok\n" * 6
    # block_size 96, a reply's room min(20, 96 // 2) = 20; a turn "m" + "ok" is len(m) + 27 tokens, a new
    # message's prompt len(m) + 24: two 5-letter turns and a new one are 32 + 32 + 29 = 93 > 96 - 20, so one
    # turn is kept; the long message is not sent and leaves the history as it was
    expected = [_prompt_text("alpha"), _prompt_text("alpha", "ok", "bravo"), _prompt_text("delta"),
                _prompt_text("delta", "ok", "gamma"), _prompt_text("gamma", "ok", "omega"),
                _prompt_text("omega", "ok", "kappa")]
    assert [text for text, _ in asked] == expected, asked
    assert all(len(BYTES.encode(text)) + budget <= 96 and budget == 20 for text, budget in asked)
    notes = err.splitlines()
    assert notes[0].startswith(f"chat with {str(checkpoint)!r} (a 96-token context)")
    assert notes[1:] == [
        "(history cleared)",
        "(not sent: this message is 104 tokens with the chat template, and the model reads 96 at most (its "
        "block_size): say it in fewer words)",
        "(dropped the oldest 1 turn of the history: the model reads 96 tokens at most; 1 kept)",
        "(unknown command '/nope': /reset clears the history, /exit ends the chat)",
        "(dropped the oldest 1 turn of the history: the model reads 96 tokens at most; 1 kept)",
    ]


def _chat(checkpoint: Path, text: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastgpt", "generate", "--checkpoint", str(checkpoint), "--chat",
                           "--greedy", "--device", "cpu", *flags], input=text, capture_output=True, text=True,
                          timeout=120)


def test_a_chat_through_stdin_of_a_real_process(checkpoint: Path) -> None:
    proc = _chat(checkpoint, "alpha\nbravo\n/reset\ndelta\ngamma\nomega\n", "--max_new_tokens", "8")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stdout == "aaaaaaaa\n" * 5
    # a turn is 5 + 8 + 25 = 38 tokens, a message 29: alpha, bravo fit (67 + 8 <= 96); after /reset delta and
    # gamma do, and omega drops delta's turn (38 + 38 + 29 + 8 > 96); without the reset, delta would have
    notes = proc.stderr.splitlines()[1:]
    assert notes == ["(history cleared)",
                     "(dropped the oldest 1 turn of the history: the model reads 96 tokens at most; 1 kept)"]
    proc = _chat(checkpoint, "alpha\n/exit\nbravo\n", "--max_new_tokens", "3")
    assert proc.returncode == 0 and proc.stdout == "aaa\n" and len(proc.stderr.splitlines()) == 1, proc.stderr
    proc = _chat(checkpoint, "")  # no input at all: nothing to say
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr


def test_chat_settings_that_cannot_work_are_one_error_line(checkpoint: Path, tmp_path: Path, cli_error) -> None:
    chars = build_tokenizer("char", ["to be or not to be\n"])  # no '<', '|' or '>' for the template's markers
    cfg = GPTConfig(vocab_size=chars.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    save_checkpoint(tmp_path / "chars", 1, GPT(cfg), chars, {"model": dataclasses.asdict(cfg)}, {"iter": 1})
    line = cli_error(generate_mod.main, ["--checkpoint", str(tmp_path / "chars"), "--chat", "--device", "cpu"])
    assert line.startswith("error: --chat: this checkpoint's chat template does not encode: cannot encode '<'")
    line = cli_error(generate_mod.main, ["--checkpoint", str(checkpoint), "--chat", "--num_samples", "2"])
    assert "--num_samples applies to --prompt; the chat (--chat without --prompt) gives one reply a turn" in line


class Terminal:
    """The parent's side of a pseudo-terminal: what the child wrote, read up to each awaited text."""

    def __init__(self, fd: int) -> None:
        self.fd, self.seen, self.pos = fd, bytearray(), 0

    def wait_for(self, want: bytes, timeout: float = 60.0) -> None:
        """Read until ``want`` appears after what the last wait matched."""
        deadline = time.monotonic() + timeout
        while (at := self.seen.find(want, self.pos)) < 0:
            left = deadline - time.monotonic()
            assert left > 0, f"no {want!r} in {bytes(self.seen[-2000:])!r}"
            if select.select([self.fd], [], [], min(left, 1.0))[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                assert chunk, f"the chat ended before {want!r}: {bytes(self.seen[-2000:])!r}"
                self.seen += chunk
        self.pos = at + len(want)

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)


def test_on_a_terminal_ctrl_c_stops_the_reply_and_ctrl_d_ends_the_chat(tmp_path: Path) -> None:
    # a reply of up to 3000 tokens recomputed over the whole context each step (--no_cache): long enough to stop
    slow = _always_a(tmp_path / "slow", block_size=4096, n_layer=2, n_head=2, n_embd=64, pos_encoding="rope")
    argv = [sys.executable, "-m", "fastgpt", "generate", "--checkpoint", str(slow), "--chat", "--greedy",
            "--max_new_tokens", "3000", "--no_cache", "--device", "cpu"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pseudo-terminal is its controlling terminal (Ctrl-C is its SIGINT)
        try:
            os.execv(sys.executable, argv)
        finally:
            os._exit(127)
    term = Terminal(fd)
    try:
        term.wait_for(b">>> ")
        term.type(b"hello\n")
        term.wait_for(b"aaaa")
        term.type(b"\x03")  # Ctrl-C while the reply streams
        term.wait_for(b"(reply stopped)")
        term.wait_for(b">>> ")
        # Ctrl-C at the prompt: the line is dropped, the chat goes on. A SIGINT in the microseconds between the
        # prompt and the read that waits for a key is only seen at the next key (CPython's input()): a person
        # is never that fast, a test can be, so it waits a moment and presses again if nothing was said
        for _ in range(5):
            time.sleep(0.5)
            term.type(b"\x03")
            with contextlib.suppress(AssertionError):
                term.wait_for(b"(Ctrl-D or /exit ends the chat)", timeout=5)
                break
        else:
            raise AssertionError(f"Ctrl-C at the prompt said nothing: {bytes(term.seen[-2000:])!r}")
        term.wait_for(b">>> ")
        term.type(b"/reset\n")
        term.wait_for(b"(history cleared)")
        term.wait_for(b">>> ")
        time.sleep(0.5)  # the terminal's line editing is set up
        term.type(b"\x04")  # Ctrl-D on an empty line: the end
        deadline = time.monotonic() + 60
        while (status := os.waitpid(pid, os.WNOHANG))[0] == 0:
            assert time.monotonic() < deadline, f"still running: {bytes(term.seen[-2000:])!r}"
            with contextlib.suppress(OSError):
                if select.select([fd], [], [], 0.2)[0]:
                    term.seen += os.read(fd, 4096)
        pid = 0
        assert os.waitstatus_to_exitcode(status[1]) == 0, bytes(term.seen[-2000:])
        assert b"Traceback" not in term.seen and b"interrupted" not in term.seen
        reply = bytes(term.seen).split(b"hello", 1)[1].split(b"(reply stopped)")[0]
        assert 4 <= reply.count(b"a") < 3000  # stopped part way
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
