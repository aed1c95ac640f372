"""The multiple-choice benchmarks a training run scores at each eval (``eval.mcq_benchmarks``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fastgpt.config import EvalConfig
from fastgpt.eval.mcq import MCQItem, encodable, evaluate_mcq
from fastgpt.eval.tasks import get_task, load_items
from fastgpt.tokenizers import Tokenizer

if TYPE_CHECKING:
    from torch import nn


def check_benchmarks(cfg: EvalConfig) -> None:
    """Raise ValueError for an unknown task name (on every rank, before any data loads)."""
    for task in cfg.mcq_benchmarks:
        get_task(task)


def train_setting(task: str) -> str:
    """How ``python -m fastgpt.train`` is given a local file for ``task``."""
    return f"'eval.data={{{task}: path.jsonl}}'"


def load_benchmarks(cfg: EvalConfig, tokenizer: Tokenizer, tokenizer_name: str,
                    say: Callable[[str], None]) -> dict[str, list[MCQItem]]:
    """``cfg.num_samples`` questions of each ``cfg.mcq_benchmarks`` task, less those that do not encode
    with ``tokenizer`` (``data.tokenizer=tokenizer_name``), which ``say`` counts per task; a task none
    of whose questions encodes is a ValueError."""
    benchmarks = {}
    for task in cfg.mcq_benchmarks:
        items = load_items(task, cfg.data.get(task), cfg.num_samples, setting=train_setting)
        kept, skipped, reason = encodable(tokenizer, items)
        what = f"do not encode with data.tokenizer={tokenizer_name!r} ({reason})"
        if not kept:
            raise ValueError(f"eval.mcq_benchmarks: {task}: all {len(items)} questions {what}")
        if skipped:
            say(f"eval.mcq_benchmarks: {task}: {skipped} of {len(items)} questions skipped, they {what}")
        benchmarks[task] = kept
    return benchmarks


def score_benchmarks(model: nn.Module, tokenizer: Tokenizer, benchmarks: dict[str, list[MCQItem]],
                     batch_size: int) -> dict[str, float]:
    """``{task}_acc`` and ``{task}_acc_norm`` of every benchmark (``fastgpt.eval.mcq``)."""
    scores = {}
    for task, items in benchmarks.items():
        result = evaluate_mcq(model, tokenizer, items, batch_size)
        scores[f"{task}_acc"], scores[f"{task}_acc_norm"] = result["acc"], result["acc_norm"]
    return scores
