"""Training: the command line (``cli``), the loop (``trainer``), its checkpoints, schedules, default
recipes, metrics and torchrun set-up.

``python -m fastgpt.train`` (or ``python -m fastgpt train``) runs ``fastgpt.train.cli.main``.
"""
