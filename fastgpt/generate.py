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
from torch import Tensor

from fastgpt.model import GPT
from fastgpt.train.distributed import resolve_device

MIN_TEMPERATURE = 1e-6  # below it sampling is the argmax (and dividing by it would overflow float32)


def sample_next(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
                greedy: bool, generator: torch.Generator | None) -> Tensor:
    """Pick the next token from logits (B, vocab) -> (B, 1)."""
    if greedy or temperature < MIN_TEMPERATURE:
        return logits.argmax(dim=-1, keepdim=True)
    # the best token at 0 before dividing: a tiny temperature then gives -inf, never inf - inf = nan
    logits = logits.float()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop_sorted[:, 0] = False  # the most likely token always stays (a top_p below float32's range drops all)
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


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

    The context is the last ``block_size`` tokens (a longer prompt is cropped from the left).
    With ``use_cache`` the prompt is encoded once and each step feeds only the new token; once the
    sequence outgrows block_size every step recomputes its window, so the tokens are the same as
    without the cache.
    """
    if not prompt:
        raise ValueError("the prompt encodes to no tokens; give at least one character")
    block = model.config.block_size
    device = model.wte.weight.device
    tokens = list(prompt)
    cache = None
    for _ in range(max_new_tokens):
        window = tokens[-block:]
        if use_cache and cache is not None and cache[0].pos < block:
            feed = torch.tensor([tokens[-1:]], device=device)
        else:
            cache = model.new_cache(batch=1) if use_cache else None
            feed = torch.tensor([window], device=device)
        logits, _ = model(feed, cache=cache)
        nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, greedy, generator).item()
        tokens.append(nxt)
        yield nxt
        if eot_id is not None and nxt == eot_id:
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
    """Write the decoded tokens to ``out`` as ``ids`` arrive; return them."""
    generated: list[int] = []
    shown = ""
    for tok in ids:
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
