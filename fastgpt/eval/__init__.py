"""Evaluation: validation loss and the CLI (``evaluate``), multiple-choice scoring (``mcq``), the
benchmark tasks (``tasks``), and the lm-evaluation-harness model (``lm_eval_adapter``).

``python -m fastgpt.eval`` (or ``python -m fastgpt eval``) runs ``fastgpt.eval.evaluate.main``.
"""
