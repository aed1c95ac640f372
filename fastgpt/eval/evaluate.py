"""``python -m fastgpt.eval --checkpoint DIR [--tasks t1,t2] [--data task=FILE ...] [--limit N]
[--batch_size B] [--output results.json] [--device auto] [--dtype float32]``

Evaluates a checkpoint on validation loss and on multiple-choice benchmarks and prints a table;
``--output`` also writes the results as JSON, keyed by task.

* ``val_loss``: mean next-token loss, perplexity, bits per byte and per character
  (``fastgpt.eval.bits_per_byte``: comparable across tokenizers) on the validation split of the checkpoint's
  own run (the prepared files it trained on, still in its cache, else its ``data`` section prepared
  again: ``fastgpt.eval.run_data``, which also states what eval reads of a checkpoint), or on any
  source the data pipeline reads given as ``--data val_loss=FILE`` (all of it). The tokens are cut
  into consecutive windows of ``block_size``, so each is predicted once.
* the benchmarks of ``fastgpt.eval.tasks`` (hellaswag, arc_easy, ..., blimp): ``acc`` and ``acc_norm``
  by log-likelihood (``fastgpt.eval.mcq``), on the hub data set or a local JSONL file
  (``--data hellaswag=hellaswag_val.jsonl``).

Without ``--tasks`` it runs the tasks given ``--data`` files, or ``val_loss`` when there are none.
``--limit N`` takes N questions (val_loss: N windows) spread evenly over each set. Every benchmark is
read and encoded before anything runs: questions the checkpoint's tokenizer cannot encode (a char
vocabulary without some letter) are skipped and counted per task (on stderr, in the table and as
``skipped`` in the JSON); a task none of whose questions encodes is an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastgpt.device import resolve_device
from fastgpt.eval.bits_per_byte import TokenLengths, bits_per
from fastgpt.messages import ArgumentParser, cut
from fastgpt.model import GPT
from fastgpt.output import check_output, write_output
from fastgpt.progress import progress_bar
from fastgpt.tokenizers import Tokenizer

VAL_LOSS = "val_loss"


@torch.no_grad()
def evaluate_loss(
    model: GPT, tokens: np.ndarray, batch_size: int = 8, limit: int | None = None, progress: bool = False,
    tokenizer: Tokenizer | None = None,
) -> dict[str, float | int]:
    """``{"loss", "perplexity", "tokens"}`` of the token stream ``tokens`` (N,), and with ``tokenizer``
    also ``bits_per_byte`` and ``bits_per_char`` of the text the scored tokens stand for
    (``fastgpt.eval.bits_per_byte``; left out when they stand for no text).

    The stream is cut into consecutive windows of ``block_size`` predictions (the last one
    shorter); each token after the first is predicted once, from its window's earlier tokens.
    ``limit`` keeps that many windows, spread evenly.
    """
    from fastgpt.eval.tasks import spread

    T = model.config.block_size
    if not model.config.causal:
        raise ValueError("val_loss is a next-token loss, which a bidirectional model (model.causal=false) cheats "
                         "on: it sees the tokens it predicts")
    if len(tokens) < 2:
        raise ValueError(f"need at least 2 tokens to measure a loss, got {len(tokens)}")
    starts = [i * T for i in spread(math.ceil((len(tokens) - 1) / T), limit)]
    device = model.wte.weight.device
    lengths = TokenLengths(tokenizer) if tokenizer is not None else None
    total, count, n_bytes, n_chars = 0.0, 0, 0, 0
    was_training = model.training
    model.eval()
    try:
        for b in progress_bar(range(0, len(starts), batch_size), progress, desc=VAL_LOSS, unit="batch"):
            x = torch.zeros(len(starts[b : b + batch_size]), T, dtype=torch.long)
            y = torch.full_like(x, -1)  # -1: past the end of the stream, not scored
            for r, s in enumerate(starts[b : b + batch_size]):
                window = torch.from_numpy(np.asarray(tokens[s : s + T + 1], dtype=np.int64))
                x[r, : len(window) - 1], y[r, : len(window) - 1] = window[:-1], window[1:]
            logits, _ = model(x.to(device))
            y = y.to(device)
            total += F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=-1, reduction="sum").item()
            count += int((y >= 0).sum())
            if lengths is not None:
                scored_bytes, scored_chars = lengths.count(y)
                n_bytes, n_chars = n_bytes + scored_bytes, n_chars + scored_chars
    finally:
        model.train(was_training)
    loss = total / count
    out = {"loss": loss, "perplexity": math.exp(loss), "tokens": count}
    if n_bytes > 0:
        out.update(bits_per_byte=bits_per(total, n_bytes), bits_per_char=bits_per(total, n_chars), bytes=n_bytes)
    return out


def loss_tokens(checkpoint: str | Path, tokenizer: Tokenizer, source: str | None,
                cache_dir: str | None = None) -> np.ndarray:
    """The tokens ``val_loss`` scores: ``source`` read whole and encoded by ``tokenizer`` (an eot
    after each document), or the validation split of the checkpoint's run (``fastgpt.eval.run_data``)."""
    from fastgpt.data import load_documents
    from fastgpt.eval.run_data import run_val_tokens

    if source is None:
        return run_val_tokens(checkpoint, tokenizer, cache_dir)
    ids: list[int] = []
    for doc in tokenizer.encode_batch(load_documents(source)):
        ids.extend(doc)
        ids.append(tokenizer.eot_id)
    return np.asarray(ids, dtype=np.int64)


def parse_data(entries: list[str]) -> dict[str, str]:
    """``["hellaswag=path.jsonl", ...]`` -> ``{"hellaswag": "path.jsonl"}``; task names are checked."""
    from fastgpt.eval.tasks import TASKS

    data = {}
    for entry in entries:
        task, sep, path = entry.partition("=")
        if not sep or not task or not path:
            raise ValueError(f"--data {cut(entry)} must look like task=path (e.g. hellaswag=hellaswag_val.jsonl)")
        if task != VAL_LOSS and task not in TASKS:
            raise ValueError(f"unknown task {cut(task)} in --data; tasks: {', '.join([VAL_LOSS, *TASKS])}")
        data[task] = path
    return data


def format_table(results: dict[str, dict[str, float | int]]) -> str:
    """One line per metric of each task, with how many questions (or tokens) it covers and, when
    questions were skipped (they do not encode), a line counting them."""
    lines = [f"{'task':<16}{'metric':<14}{'value':>10}{'n':>10}"]
    for task, metrics in results.items():
        n = metrics.get("n", metrics.get("tokens"))
        shown = [(k, v) for k, v in metrics.items() if k not in ("n", "tokens", "bytes", "skipped")]
        for i, (name, value) in enumerate(shown):
            lines.append(f"{task if i == 0 else '':<16}{name:<14}{value:>10.4f}{n if i == 0 else '':>10}")
        if metrics.get("skipped"):
            lines.append(f"{'':<16}{'skipped':<14}{metrics['skipped']:>10}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    from fastgpt.eval.tasks import TASKS

    p = ArgumentParser(prog="python -m fastgpt.eval", description="Evaluate a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="a run's out_dir (its best checkpoint) or a ckpt-* folder")
    p.add_argument("--tasks", help=f"comma-separated: {', '.join([VAL_LOSS, *TASKS])}")
    p.add_argument("--data", action="append", default=[], metavar="TASK=FILE",
                   help="a local file for a task (repeatable): JSONL for benchmarks, any dataset for val_loss")
    p.add_argument("--limit", type=int, help="questions per task (val_loss: windows), spread over the set")
    p.add_argument("--batch_size", type=int, default=16, help="sequences per forward pass")
    p.add_argument("--output", help="write the results as JSON here")
    p.add_argument("--cache_dir", help="where val_loss prepares the run's validation split again when its own "
                                       "prepared files are gone (default: its data.cache_dir if inside the current "
                                       "folder, else data_cache)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps | xpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="autocast dtype on CUDA")
    p.add_argument("--allow_pickle", action="store_true",
                   help="also read a checkpoint of DCP shards only (train.parallel=fsdp), whose pickled metadata "
                        "can run code: only for runs of your own")
    return p


def main(argv: list[str] | None = None) -> int:
    from fastgpt.checkpoint import load
    from fastgpt.eval.mcq import encodable, evaluate_mcq
    from fastgpt.eval.tasks import get_task, load_items

    args = _parser().parse_args(argv)
    if args.limit is not None and args.limit < 1 or args.batch_size < 1:
        raise ValueError(f"--limit and --batch_size must be >= 1, got {args.limit} and {args.batch_size}")
    if args.output:
        check_output(args.output, before="any task")  # not after the tasks ran: a folder, /proc/x, no folder
    data = parse_data(args.data)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else list(data) or [VAL_LOSS]
    for task in tasks:
        if task != VAL_LOSS:
            get_task(task)  # unknown names fail before the model loads
    device = resolve_device(args.device, "--device")
    model, tokenizer = load(args.checkpoint, device=device, allow_pickle=args.allow_pickle)
    dtype = getattr(torch, args.dtype)
    autocast = (torch.autocast(model.wte.weight.device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())
    questions, skipped = {}, {}
    for task in tasks:  # every benchmark is read and encoded before anything is scored
        if task != VAL_LOSS:
            items = load_items(task, data.get(task), args.limit)
            questions[task], skipped[task], reason = encodable(tokenizer, items)
            what = f"do not encode with the checkpoint's tokenizer ({tokenizer.name}): {reason}"
            if not questions[task]:
                raise ValueError(f"{task}: all {len(items)} questions {what}")
            if skipped[task]:
                print(f"{task}: {skipped[task]} of {len(items)} questions skipped, they {what}", file=sys.stderr)
    results: dict[str, dict[str, float | int]] = {}
    for task in tasks:
        with autocast:
            if task == VAL_LOSS:
                tokens = loss_tokens(args.checkpoint, tokenizer, data.get(VAL_LOSS), args.cache_dir)
                results[task] = evaluate_loss(model, tokens, args.batch_size, args.limit, progress=True,
                                              tokenizer=tokenizer)
            else:
                results[task] = evaluate_mcq(model, tokenizer, questions[task], args.batch_size, progress=True,
                                             desc=task)
                results[task].update({"skipped": skipped[task]} if skipped[task] else {})
    print(format_table(results))
    if args.output:
        write_output(args.output, json.dumps(results, indent=1) + "\n")  # atomic; a full disk is one line
    return 0

