"""Chat templates: a conversation -> token ids and a loss mask (training), or a prompt (generation).

A conversation is a list of messages ``{"role": "system" | "user" | "assistant", "content": str}``.
It is rendered by the tokenizer's own chat template when it carries one (``Tokenizer.chat_template``,
set from ``data.chat_template`` when the data is prepared and saved with the tokenizer), else by the
default template, whose markers are plain text that every tokenizer encodes (char and byte included)::

    <|system|>\\n{content}\\n         a system message
    <|user|>\\n{content}\\n           a user message
    <|assistant|>\\n{content}<eot>    an assistant message; <eot> is the tokenizer's end-of-text id

A generation prompt is the conversation followed by ``<|assistant|>\\n``; the reply ends at eot.
Only the assistant messages are trained on (their content and the eot after it).

A Hugging Face template (Jinja) is rendered in jinja2's sandbox (``ImmutableSandboxedEnvironment``:
the template can only read the values it is given and call ``raise_exception`` and ``strftime_now``),
with ``messages``, ``add_generation_prompt``, ``bos_token`` and ``eos_token``. Assistant message i is
the text that rendering ``messages[: i + 1]`` adds to rendering ``messages[:i]`` with the generation
prompt; a template that does not render conversations this incrementally is refused. Special tokens
in the rendered text (``<|im_end|>``, ``</s>``, ...) become their ids, as in transformers.

A template is untrusted input, so each rendering is bounded: ``range`` gives at most MAX_RANGE items,
``*`` and ``**`` refuse results over MAX_OUTPUT characters (items) or MAX_POWER digits, the rendered text
may not pass MAX_OUTPUT characters, and it may not take more than RENDER_SECONDS (checked at each
``range`` item; on the main thread, where signals are delivered, also by a SIGALRM timer for loops
over anything else). Any error a template raises becomes a ValueError.
"""

from __future__ import annotations

import datetime
import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from fastgpt.messages import cut
from fastgpt.tokenizers import META_FILE, Tokenizer, is_tokenizer_path, load_tokenizer, path_exists

ROLES = ("system", "user", "assistant")
CHAT_TEMPLATE_SETTINGS = ("auto", "default")  # or a path: a .jinja file, a tokenizer_config.json or their folder
JINJA_FILE = "chat_template.jinja"
CONFIG_FILE = "tokenizer_config.json"
MAX_RANGE = 10_000  # the most items one range() in a template may give
MAX_OUTPUT = 1 << 24  # the most characters one rendering may produce (and one ``*`` result may hold)
MAX_POWER = 4096  # the most digits (decimal, about) ``a ** b`` may have
RENDER_SECONDS = 2.0  # the longest one rendering may take


def marker(role: str) -> str:
    """The default template's text before a message of ``role``."""
    return f"<|{role}|>\n"


def resolve_template(setting: str, tokenizer_name: str) -> dict[str, str | None] | None:
    """The Jinja template ``data.chat_template=setting`` names (None: the default template).

    ``auto``: the template in the folder of ``data.tokenizer`` when it is a local tokenizer.json (or
    its folder) with a ``chat_template.jinja`` or a ``tokenizer_config.json`` holding ``chat_template``,
    or the template saved in a fastgpt tokenizer folder, else the default; ``default``: the default;
    anything else is a path to one of those files or their folder, which must hold a template.
    """
    if setting == "default":
        return None
    if setting == "auto":
        if not (is_tokenizer_path(tokenizer_name) and path_exists(tokenizer_name)):
            return None
        path = Path(tokenizer_name).expanduser()
        if (path / META_FILE).is_file():  # a fastgpt tokenizer folder: the template saved with it
            return load_tokenizer(path).chat_template
        return _read_template(path if path.is_dir() else path.parent, "data.tokenizer")
    path = Path(setting).expanduser()
    if not path_exists(setting):
        raise FileNotFoundError(f"data.chat_template={cut(setting)} does not exist; use one of "
                                f"{', '.join(CHAT_TEMPLATE_SETTINGS)} or a path to a .jinja file, a "
                                f"{CONFIG_FILE} or a folder holding one")
    if path.is_file() and path.name != CONFIG_FILE:
        return {"template": _read_text(path), "bos_token": None, "eos_token": None}
    found = _read_template(path if path.is_dir() else path.parent, "data.chat_template")
    if found is None:
        raise ValueError(f"data.chat_template={cut(setting)} holds no chat template (no {JINJA_FILE}, and no "
                         f"chat_template in {CONFIG_FILE})")
    return found


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"chat template file {str(path)!r} cannot be read: {exc}") from None


def _read_template(folder: Path, setting: str) -> dict[str, str | None] | None:
    """The template of a Hugging Face tokenizer folder and its bos/eos texts; None when it has none."""
    config: dict = {}
    if (folder / CONFIG_FILE).is_file():
        try:
            config = json.loads(_read_text(folder / CONFIG_FILE))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{setting}: {folder / CONFIG_FILE} is not valid JSON ({exc})") from None
        except RecursionError:
            raise ValueError(f"{setting}: {folder / CONFIG_FILE} is not JSON fastgpt reads: it is nested too "
                             "deeply") from None
        if not isinstance(config, dict):
            raise ValueError(f"{setting}: {folder / CONFIG_FILE} does not hold a JSON object")
    template = _read_text(folder / JINJA_FILE) if (folder / JINJA_FILE).is_file() else config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None:
        return None
    if not isinstance(template, str):
        raise ValueError(f"{setting}: the chat_template in {folder / CONFIG_FILE} is not a string")
    return {"template": template, "bos_token": _token_text(config.get("bos_token")),
            "eos_token": _token_text(config.get("eos_token"))}


def _token_text(token: object) -> str | None:
    """A tokenizer_config.json token: a string, or an object whose ``content`` is one."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None


class ChatTemplate:
    """Renders conversations for ``tokenizer``: its own Jinja template, else the default one."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.jinja = tokenizer.chat_template
        self._compiled = _compile(self.jinja["template"]) if self.jinja is not None else None
        self._specials = specials = tokenizer.special_tokens
        self._special_re = (re.compile("|".join(map(re.escape, sorted(specials, key=len, reverse=True))))
                            if specials else None)
        eos = self.jinja and self.jinja.get("eos_token")
        self.stop_ids = {tokenizer.eot_id} | ({specials[eos]} if eos in specials else set())

    def encode(self, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
        """Token ids of the conversation and a mask of the same length: 1 on assistant tokens, else 0."""
        ids: list[int] = []
        mask: list[int] = []
        for text, trained in self._segments(messages):
            part = self._encode_text(text) if isinstance(text, str) else text
            ids += part
            mask += [int(trained)] * len(part)
        return ids, mask

    def prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the conversation followed by the generation prompt (the reply comes next): the ids
        ``encode`` gives the conversation with an empty reply, less that reply's eot, so each earlier reply
        ends with its eot, as in training."""
        if self._compiled is None:
            return self.encode([*messages, {"role": "assistant", "content": ""}])[0][:-1]
        return self._encode_text(_render(self._compiled, self.jinja, messages, True))

    def _segments(self, messages: list[dict[str, str]]) -> list[tuple[str | list[int], bool]]:
        """(text or ids, trained) pieces; untrained texts that follow one another are joined."""
        pieces: list[tuple[str | list[int], bool]] = []
        if self._compiled is None:
            for m in messages:
                pieces.append((marker(m["role"]) + (m["content"] + "\n" if m["role"] != "assistant" else ""), False))
                if m["role"] == "assistant":
                    pieces += [(m["content"], True), ([self.tokenizer.eot_id], True)]
        else:
            done = ""
            for i, m in enumerate(messages):
                if m["role"] != "assistant":
                    continue
                before = _render(self._compiled, self.jinja, messages[:i], True)
                after = _render(self._compiled, self.jinja, messages[: i + 1], False)
                if not before.startswith(done) or not after.startswith(before):
                    raise ValueError("the chat template does not render conversations incrementally (a reply "
                                     "changes the text before it); use data.chat_template=default")
                pieces += [(before[len(done):], False), (after[len(before):], True)]
                done = after
            whole = _render(self._compiled, self.jinja, messages, False)
            if not whole.startswith(done):
                raise ValueError("the chat template does not render conversations incrementally; "
                                 "use data.chat_template=default")
            pieces.append((whole[len(done):], False))
        joined: list[tuple[str | list[int], bool]] = []
        for text, trained in pieces:
            if joined and not trained and not joined[-1][1] and isinstance(text, str):
                joined[-1] = (joined[-1][0] + text, False)
            elif text:
                joined.append((text, trained))
        return joined

    def _encode_text(self, text: str) -> list[int]:
        """Plain text through the tokenizer; with a Jinja template, special-token texts become their ids."""
        if self._compiled is None or self._special_re is None:
            return self.tokenizer.encode(text)
        ids, pos, specials = [], 0, self._specials
        for match in self._special_re.finditer(text):
            ids += self.tokenizer.encode(text[pos:match.start()]) if match.start() > pos else []
            ids.append(specials[match.group()])
            pos = match.end()
        return ids + (self.tokenizer.encode(text[pos:]) if pos < len(text) else [])


def render_text(messages: list[dict[str, str]], jinja: dict[str, str | None] | None = None) -> str:
    """The conversation as text (the default template leaves eot out): what a char or BPE tokenizer is
    trained on. ``jinja``: a template as ``resolve_template`` returns it; None: the default."""
    if jinja is None:
        return "".join(marker(m["role"]) + m["content"] + ("\n" if m["role"] != "assistant" else "")
                       for m in messages)
    return _render(_compile(jinja["template"]), jinja, messages, False)


class _TooCostly(Exception):
    """A rendering went past one of the bounds in the module docstring."""


def _render(compiled, jinja: dict[str, str | None], messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    compiled.environment.deadline = time.monotonic() + RENDER_SECONDS
    variables = {"messages": messages, "add_generation_prompt": add_generation_prompt,
                 "bos_token": jinja.get("bos_token") or "", "eos_token": jinja.get("eos_token") or ""}
    parts, size = [], 0
    try:
        with _alarm(RENDER_SECONDS):
            for part in compiled.generate(variables):
                size += len(part)
                if size > MAX_OUTPUT:
                    raise _TooCostly(f"it rendered more than {MAX_OUTPUT} characters")
                parts.append(part)
    except (_TooCostly, TemplateError) as exc:  # the sandbox's SecurityError and raise_exception's message included
        raise ValueError(f"the chat template failed: {exc}") from None
    except Exception as exc:  # the template's own code failed (1/0, endless recursion, ...)
        reason = " ".join(str(exc).split())[:160]
        raise ValueError(f"the chat template failed: {type(exc).__name__}: {reason}") from None
    return "".join(parts)


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise _TooCostly in the code run inside after ``seconds`` (main thread only: elsewhere, nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame) -> None:
        raise _TooCostly(f"it took more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _BoundedRange:
    """``range(*args)`` for a template: at most MAX_RANGE items, each checked against the deadline."""

    def __init__(self, environment: _Sandbox, *args: int) -> None:
        self._range, self._env = range(*args), environment
        if len(self._range) > MAX_RANGE:
            raise _TooCostly(f"range({', '.join(map(str, args))}) has more than {MAX_RANGE} items")

    def __len__(self) -> int:
        return len(self._range)

    def __iter__(self) -> Iterator[int]:
        for i in self._range:
            if time.monotonic() > self._env.deadline:
                raise _TooCostly(f"it took more than {RENDER_SECONDS:g} s")
            yield i


class _Sandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox whose ``*`` and ``**`` refuse results too large to build."""

    intercepted_binops = frozenset({"*", "**"})
    deadline = float("inf")  # set by _render before each rendering

    def call_binop(self, context, operator: str, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > MAX_OUTPUT:
                    raise _TooCostly(f"a * result would hold more than {MAX_OUTPUT} items")
        elif (isinstance(left, int) and isinstance(right, int) and abs(left) > 1
              and right * abs(left).bit_length() > MAX_POWER * 10 // 3):  # 10/3: bits per decimal digit
            raise _TooCostly(f"{left} ** {right} has more than {MAX_POWER} digits")
        return super().call_binop(context, operator, left, right)


def _compile(source: str):
    """A Jinja template compiled in the bounded sandbox (whitespace control as in transformers)."""

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def strftime_now(fmt: str) -> str:
        return datetime.datetime.now().strftime(fmt)

    env = _Sandbox(trim_blocks=True, lstrip_blocks=True)
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now,
                       range=lambda *args: _BoundedRange(env, *args))
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise ValueError(f"the chat template is not valid Jinja: {exc}") from None
