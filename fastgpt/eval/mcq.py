"""Multiple-choice scoring by log-likelihood, the way lm-evaluation-harness scores its tasks.

An item has a context, N choices and the index of the right one. Choice i is the continuation
``delimiter + choices[i]`` of its context; its score is the summed log-probability of the
continuation's tokens given the context's. ``acc`` takes the choice with the highest sum;
``acc_norm`` divides each sum by the choice's length in characters first, so long choices are
not punished for having more tokens.

Tokens: the context and the continuation are encoded separately and concatenated (whitespace at
the end of a context moves to the start of its continuation, where BPE tokenizers expect it).
An empty context is replaced by the end-of-text token, which starts every document the model
saw in training. A context + continuation longer than ``block_size + 1`` tokens is cropped from
the left, so the continuation keeps its nearest context; a continuation that alone exceeds
``block_size`` tokens is scored on its last ``block_size`` tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastgpt.model import GPT
from fastgpt.progress import progress_bar
from fastgpt.tokenizers import Tokenizer


@dataclass
class MCQItem:
    """One question: for each choice i, ``delimiter + choices[i]`` is scored after its context.

    ``context`` is one string, or one per choice (winogrande puts the choice into the context and
    scores the same continuation after each). With an empty context the delimiter is left out.
    """

    context: str | list[str]
    choices: list[str]
    label: int
    delimiter: str = " "

    def __post_init__(self) -> None:
        if len(self.choices) < 2 or not all(isinstance(c, str) and c for c in self.choices):
            raise ValueError(f"a question needs at least 2 non-empty choices, got {self.choices!r}")
        if isinstance(self.context, list) and len(self.context) != len(self.choices):
            raise ValueError(f"{len(self.context)} contexts for {len(self.choices)} choices; give one per choice")
        if not isinstance(self.label, int) or not 0 <= self.label < len(self.choices):
            raise ValueError(f"label {self.label!r} is not the index of one of the {len(self.choices)} choices")

    def pairs(self) -> list[tuple[str, str]]:
        """(context, continuation) text of every choice."""
        contexts = self.context if isinstance(self.context, list) else [self.context] * len(self.choices)
        return [(ctx, (self.delimiter if ctx else "") + choice) for ctx, choice in zip(contexts, self.choices)]


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation), see the module docstring."""
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    ctx = tokenizer.encode(stripped) if stripped else []
    return ctx or [tokenizer.eot_id], tokenizer.encode(continuation)


def encodable(tokenizer: Tokenizer, items: Sequence[MCQItem]) -> tuple[list[MCQItem], int, str | None]:
    """The items whose every (context, continuation) encodes with ``tokenizer``, how many were left
    out, and why the first of those was (None when none was)."""
    kept, reason = [], None
    for item in items:
        try:
            for context, continuation in item.pairs():
                encode_pair(tokenizer, context, continuation)
        except ValueError as exc:
            reason = reason or str(exc)
            continue
        kept.append(item)
    return kept, len(items) - len(kept), reason


@torch.no_grad()
def score_tokens(
    model: GPT,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "scoring",
) -> list[tuple[float, bool]]:
    """For each (context ids, continuation ids): (sum of the continuation's log-probs, is_greedy).

    ``is_greedy`` is True when every continuation token is the model's most likely next token.
    Requests run ``batch_size`` at a time, longest first, right-padded; contexts must be
    non-empty. The model runs in eval mode (its mode is restored afterwards).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    block = model.config.block_size
    rows: list[tuple[list[int], int]] = []  # (tokens of at most block + 1, how many of the last are scored)
    for ctx, cont in requests:
        if not ctx or not cont:
            raise ValueError("every request needs a non-empty context and continuation (in tokens)")
        tokens = [*ctx, *cont][-(block + 1):]
        rows.append((tokens, min(len(cont), len(tokens) - 1)))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    device = model.wte.weight.device
    results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
    was_training = model.training
    model.eval()
    try:
        for start in progress_bar(range(0, len(order), batch_size), progress, desc=desc, unit="batch"):
            batch = order[start : start + batch_size]
            T = max(len(rows[i][0]) for i in batch) - 1
            x = torch.zeros(len(batch), T, dtype=torch.long)  # inputs, right-padded with id 0
            y = torch.full((len(batch), T), -1, dtype=torch.long)  # scored targets, -1 elsewhere
            for r, i in enumerate(batch):
                tokens, n = rows[i]
                x[r, : len(tokens) - 1] = torch.tensor(tokens[:-1])
                y[r, len(tokens) - 1 - n : len(tokens) - 1] = torch.tensor(tokens[-n:])
            x, y = x.to(device), y.to(device)
            logits, _ = model(x)  # (B, T, vocab)
            scored = y >= 0
            picked = logits[scored].float()  # (N, vocab): only the scored positions, N = scored.sum()
            targets = y[scored]  # (N,)
            row = scored.nonzero()[:, 0]  # (N,) the request each scored position belongs to
            logprob = torch.zeros(len(batch), device=device, dtype=torch.float64)
            logprob.index_add_(0, row, -F.cross_entropy(picked, targets, reduction="none").double())
            misses = torch.zeros(len(batch), device=device, dtype=torch.long)
            misses.index_add_(0, row, (picked.argmax(-1) != targets).long())
            for r, i in enumerate(batch):
                results[i] = (logprob[r].item(), misses[r].item() == 0)
    finally:
        model.train(was_training)
    return results


def score_choices(
    model: GPT, tokenizer: Tokenizer, items: Sequence[MCQItem], batch_size: int = 16, progress: bool = False,
    desc: str = "scoring",
) -> list[list[float]]:
    """Summed log-probability of every choice of every item: ``scores[item][choice]``."""
    requests = [encode_pair(tokenizer, ctx, cont) for item in items for ctx, cont in item.pairs()]
    flat = iter(score_tokens(model, requests, batch_size, progress, desc))
    return [[next(flat)[0] for _ in item.choices] for item in items]


def evaluate_mcq(
    model: GPT, tokenizer: Tokenizer, items: Sequence[MCQItem], batch_size: int = 16, progress: bool = False,
    desc: str = "scoring",
) -> dict[str, float | int]:
    """``{"acc", "acc_norm", "n"}`` over ``items`` (see the module docstring); ties go to the first choice."""
    if not items:
        raise ValueError("no questions to evaluate")
    scores = score_choices(model, tokenizer, items, batch_size, progress, desc)
    acc = acc_norm = 0
    for item, s in zip(items, scores):
        normed = [v / len(choice) for v, choice in zip(s, item.choices)]
        acc += _argmax(s) == item.label
        acc_norm += _argmax(normed) == item.label
    return {"acc": acc / len(items), "acc_norm": acc_norm / len(items), "n": len(items)}


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)
