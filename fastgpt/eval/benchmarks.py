"""The multiple-choice benchmarks a training run scores at each eval (``eval.mcq_benchmarks``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastgpt.config import EvalConfig
from fastgpt.eval.mcq import MCQItem, encode_pair, evaluate_mcq
from fastgpt.eval.tasks import get_task, load_items
from fastgpt.tokenizers import Tokenizer

if TYPE_CHECKING:
    from torch import nn


def check_benchmarks(cfg: EvalConfig) -> None:
    """Raise ValueError for an unknown task name (on every rank, before any data loads)."""
    for task in cfg.mcq_benchmarks:
        get_task(task)


def load_benchmarks(cfg: EvalConfig, tokenizer: Tokenizer, tokenizer_name: str) -> dict[str, list[MCQItem]]:
    """``cfg.num_samples`` questions of each ``cfg.mcq_benchmarks`` task, each checked to encode with
    ``tokenizer`` (``data.tokenizer=tokenizer_name``)."""
    benchmarks = {task: load_items(task, cfg.data.get(task), cfg.num_samples) for task in cfg.mcq_benchmarks}
    for task, items in benchmarks.items():
        try:
            for item in items:
                for context, continuation in item.pairs():
                    encode_pair(tokenizer, context, continuation)
        except ValueError as exc:
            raise ValueError(f"eval.mcq_benchmarks: {task} does not encode with data.tokenizer="
                             f"{tokenizer_name!r}: {exc}") from None
    return benchmarks


def score_benchmarks(model: nn.Module, tokenizer: Tokenizer, benchmarks: dict[str, list[MCQItem]],
                     batch_size: int) -> dict[str, float]:
    """``{task}_acc`` and ``{task}_acc_norm`` of every benchmark (``fastgpt.eval.mcq``)."""
    scores = {}
    for task, items in benchmarks.items():
        result = evaluate_mcq(model, tokenizer, items, batch_size)
        scores[f"{task}_acc"], scores[f"{task}_acc_norm"] = result["acc"], result["acc_norm"]
    return scores
