"""``python -m fastgpt.eval``: see ``fastgpt.eval.evaluate``."""

from fastgpt.__main__ import run
from fastgpt.eval.evaluate import main

if __name__ == "__main__":
    run(main)
