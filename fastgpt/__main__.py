"""``python -m fastgpt <command> [args]``: every command-line tool of fastgpt, from one table.

Each command is also its own module (``python -m fastgpt.train ...``); both run the same ``main``.
A user error (a ValueError, a missing file, a path too long for a file name, ...) prints one ``error: ...``
line, at most ``LONGEST_ERROR`` characters, and exits with 2.
"""

from __future__ import annotations

import errno
import importlib
import sys
from collections.abc import Callable

from fastgpt.messages import LONGEST_ERROR, cut, cut_path

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)

# command -> (module holding its main(argv), what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("fastgpt.train.cli", "train a model (a YAML config plus section.key=value overrides)"),
    "prepare": ("fastgpt.data.cli", "tokenize a dataset into the cache without training (data.* keys)"),
    "generate": ("fastgpt.generate", "sample text from a checkpoint"),
    "eval": ("fastgpt.eval.evaluate", "validation loss and multiple-choice benchmarks of a checkpoint"),
    "export": ("fastgpt.hf.export", "write a checkpoint as a Hugging Face model folder"),
    "convert": ("fastgpt.train.convert", "write a sharded (FSDP) checkpoint as a single-file one"),
    "lm_eval": ("fastgpt.eval.lm_eval_adapter", "lm-evaluation-harness with a fastgpt checkpoint as --model"),
    "info": ("fastgpt.info", "versions, devices, and which op backends are usable here"),
}


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Call ``main(argv)``; a user error prints ``error: ...`` on stderr and exits 2, Ctrl-C exits 130."""
    try:
        code = main(argv)
    except USER_ERRORS as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {cut(message, LONGEST_ERROR, quote=False)}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:  # a path typed too long for a file name, wherever it was looked up
            raise
        print(f"error: {cut_path(exc.filename)} is too long for a file name ({exc.strerror})", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m fastgpt <command> [args]   (python -m fastgpt <command> --help for its options)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its command's ``main`` with the remaining arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        raise ValueError(f"unknown command {cut(command)}; commands: {', '.join(COMMANDS)}")
    try:
        module = importlib.import_module(COMMANDS[command][0])
    except ModuleNotFoundError as exc:  # an optional extra (lm-eval for lm_eval) is not installed
        raise ValueError(str(exc)) from None
    return module.main(rest)


if __name__ == "__main__":
    run(main)
