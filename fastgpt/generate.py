"""Text generation: sampling with a KV cache, and ``python -m fastgpt.generate``.

``python -m fastgpt.generate --checkpoint DIR --prompt "ROMEO:" [--max_new_tokens N]
[--temperature T] [--top_k K] [--top_p P] [--greedy] [--num_samples N] [--seed S] [--no_cache]``
streams each sample to stdout.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator

import torch

from fastgpt.model import GPT
from fastgpt.train.distributed import resolve_device


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastgpt.generate", description="Sample text from a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="a run's out_dir or a ckpt-* folder")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max_new_tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", type=int, default=200)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
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

    device = resolve_device(args.device, "--device")
    model, tokenizer = load(args.checkpoint, device=device, allow_pickle=args.allow_pickle)
    prompt_ids = tokenizer.encode(args.prompt)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        sys.stdout.write(args.prompt)
        ids = generate(model, prompt_ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, greedy=args.greedy, eot_id=tokenizer.eot_id,
                       use_cache=not args.no_cache, generator=generator)
        stream_text(tokenizer, ids)
        print()
    return 0


if __name__ == "__main__":
    from fastgpt.__main__ import run

    run(main)
