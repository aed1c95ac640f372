"""Text generation: sampling with a KV cache, and ``python -m fastgpt.generate``.

``python -m fastgpt.generate --checkpoint DIR --prompt "ROMEO:" [--max_new_tokens N]
[--temperature T] [--top_k K] [--top_p P] [--greedy] [--num_samples N] [--seed S] [--no_cache]``
streams each sample to stdout.

``--chat`` renders the prompt as a user message through the checkpoint's chat template
(``fastgpt.data.chat_template``) and prints only the reply. ``--prompt_file FILE`` (one prompt a line,
blank lines skipped) writes a ``{"prompt", "response"}`` JSON line per prompt, in order, to ``--output
OUT.jsonl`` (else stdout); prompts of the same length in tokens are generated together, up to
``--batch_size`` at a time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from fastgpt.data.chat_template import ChatTemplate
from fastgpt.device import resolve_device
from fastgpt.model import GPT
from fastgpt.output import check_output, write_output


@torch.no_grad()
def generate(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    eot_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` token ids continuing ``prompt``; stops after ``eot_id``.

    One sequence of ``GPT.stream`` (its context, cache and sampling); the model's mode is left as it is.
    """
    if not prompt:
        raise ValueError("the prompt encodes to no tokens; give at least one character")
    idx = torch.tensor([prompt], device=model.wte.weight.device)
    for nxt in model.stream(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            greedy=greedy, use_cache=use_cache, generator=generator):
        token = nxt.item()
        yield token
        if eot_id is not None and token == eot_id:
            return


@torch.no_grad()
def generate_batch(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    stop_ids: set[int] = frozenset(),
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Continue prompts of one length together: a (B, L) forward for the prompts, then (B, 1) steps.

    Each continuation (up to ``max_new_tokens`` ids) ends after its first id in ``stop_ids``; the batch
    stops when all have. ``GPT.stream`` runs the steps, as for ``generate``, so greedy continuations are
    the same tokens as ``generate``'s (and as a batch of one).
    """
    if not prompts or len({len(p) for p in prompts}) != 1 or not prompts[0]:
        raise ValueError("generate_batch needs prompts of one length, at least one token each")
    out: list[list[int]] = [[] for _ in prompts]
    running = list(range(len(prompts)))
    idx = torch.tensor(prompts, device=model.wte.weight.device)  # (B, L)
    for nxt in model.stream(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            greedy=greedy, generator=generator):
        ids = nxt[:, 0].tolist()
        for b in running:
            out[b].append(ids[b])
        running = [b for b in running if ids[b] not in stop_ids]
        if not running:
            break
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastgpt.generate", description="Sample text from a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="a run's out_dir or a ckpt-* folder")
    p.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    p.add_argument("--chat", action="store_true",
                   help="the prompt is a user message rendered by the chat template; print only the reply")
    p.add_argument("--prompt_file", help="a text file of prompts, one a line: a JSON line per prompt out")
    p.add_argument("--output", help="write the {prompt, response} JSON lines to this file (default: stdout)")
    p.add_argument("--batch_size", type=int, default=16, help="--prompt_file: prompts generated together")
    p.add_argument("--max_new_tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", type=int, default=200)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps | xpu")
    p.add_argument("--no_cache", action="store_true", help="recompute the whole context every step")
    p.add_argument("--allow_pickle", action="store_true",
                   help="also read a checkpoint of DCP shards only (train.parallel=fsdp), whose pickled metadata "
                        "can run code: only for runs of your own")
    return p


def stream_text(tokenizer, ids: Iterator[int], out=sys.stdout) -> list[int]:
    """Write the decoded tokens to ``out`` as ``ids`` arrive, up to an eot (not written); return them."""
    generated: list[int] = []
    shown = ""
    for tok in ids:
        if tok == tokenizer.eot_id:
            break
        generated.append(tok)
        text = tokenizer.decode(generated)
        if text.endswith("\ufffd"):  # a multi-byte character is still incomplete
            continue
        out.write(text[len(shown):])
        out.flush()
        shown = text
    out.write(tokenizer.decode(generated)[len(shown):])
    return generated


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.max_new_tokens < 0 or args.num_samples < 1 or not 0 <= args.temperature < math.inf:
        raise ValueError(f"--max_new_tokens must be >= 0, --num_samples >= 1 and --temperature a finite number "
                         f">= 0 (got {args.max_new_tokens}, {args.num_samples}, {args.temperature})")
    if args.top_k is not None and args.top_k < 1 or args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top_k must be >= 1 and --top_p in (0, 1] (got {args.top_k}, {args.top_p})")
    from fastgpt.train.checkpoint import load

    prompts = _prompts(args)  # before the model loads: a missing file is a quick error
    device = resolve_device(args.device, "--device")
    model, tokenizer = load(args.checkpoint, device=device, allow_pickle=args.allow_pickle)
    if args.chat or args.prompt_file or args.output:
        return _replies(args, prompts, model, tokenizer, device)
    prompt_ids = tokenizer.encode(prompts[0])
    generator = torch.Generator(device=device).manual_seed(args.seed)
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        sys.stdout.write(prompts[0])
        ids = generate(model, prompt_ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, greedy=args.greedy, eot_id=tokenizer.eot_id,
                       use_cache=not args.no_cache, generator=generator)
        stream_text(tokenizer, ids)
        print()
    return 0


def _prompts(args: argparse.Namespace) -> list[str]:
    """The prompts asked for; ValueError/FileNotFoundError for a missing or empty file, or an --output that
    cannot be written."""
    if args.prompt_file is not None and args.prompt is not None:
        raise ValueError("give --prompt TEXT or --prompt_file FILE, not both")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.output is not None:
        check_output(args.output)  # a folder, a missing folder, /proc/x: said now, not after the work
    if (args.prompt_file or args.output) and args.num_samples != 1:
        raise ValueError("--num_samples applies to --prompt printed to stdout; --prompt_file and --output give "
                         "one response per prompt")
    if args.prompt_file is None:
        return [args.prompt if args.prompt is not None else "\n"]
    file = Path(args.prompt_file).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"--prompt_file {args.prompt_file!r} does not exist or is not a file")
    try:
        prompts = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"--prompt_file {args.prompt_file!r} is not UTF-8 text") from None
    if not prompts:
        raise ValueError(f"--prompt_file {args.prompt_file!r} has no prompts (every line is blank)")
    return prompts


def _replies(args: argparse.Namespace, prompts: list[str], model: GPT, tokenizer, device: torch.device) -> int:
    """--chat and --prompt_file: each prompt's response, printed alone or as {prompt, response} JSON lines."""
    template = ChatTemplate(tokenizer)
    stop_ids = template.stop_ids if args.chat else {tokenizer.eot_id}
    encoded = []
    for i, text in enumerate(prompts):
        try:
            ids = template.prompt([{"role": "user", "content": text}]) if args.chat else tokenizer.encode(text)
        except ValueError as exc:
            where = f"--prompt_file {args.prompt_file!r} prompt {i + 1}" if args.prompt_file else "--prompt"
            raise ValueError(f"{where}: {exc}") from None
        if not ids:
            raise ValueError(f"prompt {i + 1} encodes to no tokens; give at least one character")
        encoded.append(ids)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy,
                   stop_ids=stop_ids, generator=generator)
    if args.prompt_file is None and args.output is None:  # --chat --prompt TEXT: the replies alone
        for n in range(args.num_samples):
            if args.num_samples > 1:
                print(f"--- sample {n + 1} ---")
            ids = generate_batch(model, encoded, args.max_new_tokens, **options)[0]
            print(tokenizer.decode(ids[:-1] if ids and ids[-1] in stop_ids else ids))
        return 0
    replies: list[str] = [""] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    for group in by_length.values():
        for start in range(0, len(group), args.batch_size):
            batch = group[start : start + args.batch_size]
            outs = generate_batch(model, [encoded[i] for i in batch], args.max_new_tokens, **options)
            for i, ids in zip(batch, outs, strict=True):
                replies[i] = tokenizer.decode(ids[:-1] if ids and ids[-1] in stop_ids else ids)
    lines = "".join(json.dumps({"prompt": p, "response": r}, ensure_ascii=False) + "\n"
                    for p, r in zip(prompts, replies, strict=True))
    if args.output is None:
        sys.stdout.write(lines)
    else:
        write_output(args.output, lines)  # atomic: a full disk leaves no half file
    return 0


if __name__ == "__main__":
    from fastgpt.__main__ import run

    run(main)
