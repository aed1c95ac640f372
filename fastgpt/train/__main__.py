"""``python -m fastgpt.train``: see ``fastgpt.train.trainer``."""

from fastgpt.__main__ import run
from fastgpt.train.trainer import main

if __name__ == "__main__":
    run(main)
