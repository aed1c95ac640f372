"""``python -m fastgpt.train``: see ``fastgpt.train.cli``."""

from fastgpt.__main__ import run
from fastgpt.train.cli import main

if __name__ == "__main__":
    run(main)
