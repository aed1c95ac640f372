"""KV-cache speedup of generation: tokens/s with and without the cache, same tokens.

    python benchmarks/generate.py [--quick] [--preset toygpt-medium] [--tokens 256] [--out benchmarks/results]

Builds a randomly initialized preset (weights do not change the cost), generates ``--tokens``
tokens greedily from a short prompt with ``use_cache=True`` and ``False``, checks that both give
the same tokens, and writes ``generate-<device>.json`` with both rates and their ratio.
``--quick``: the smallest preset (toygpt-small) and 16 tokens, a smoke run of a few seconds that
writes ``generate-<device>-quick.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from fastgpt import GPT
from fastgpt.generate import generate

ROOT = Path(__file__).resolve().parents[1]


def tokens_per_s(model: GPT, prompt: list[int], n: int, use_cache: bool) -> tuple[float, list[int]]:
    if model.wte.weight.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = list(generate(model, prompt, n, greedy=True, use_cache=use_cache))
    if model.wte.weight.is_cuda:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="toygpt-small, 16 tokens: a smoke run")
    p.add_argument("--preset", default=None, help="default: gpt2 on a GPU, toygpt-medium on CPU")
    p.add_argument("--tokens", type=int, default=None, help="default: 512 on a GPU, 128 on CPU")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    preset = args.preset or ("toygpt-small" if args.quick else "gpt2" if device == "cuda" else "toygpt-medium")
    n = args.tokens or (16 if args.quick else 512 if device == "cuda" else 128)
    torch.manual_seed(0)
    model = GPT.from_preset(preset, device=device).eval()
    prompt = torch.randint(0, model.config.vocab_size, (16,)).tolist()
    tokens_per_s(model, prompt, 8, True)  # warm-up
    cached, a = tokens_per_s(model, prompt, n, use_cache=True)
    uncached, b = tokens_per_s(model, prompt, n, use_cache=False)
    if a != b:
        raise SystemExit("the KV cache changed the generated tokens")
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    result = {"device": name, "torch": torch.__version__, "preset": preset, "prompt_tokens": len(prompt),
              "new_tokens": n, "cached_tokens_per_s": cached, "uncached_tokens_per_s": uncached,
              "speedup": cached / uncached, "quick": args.quick,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    print(f"{preset} on {name}: {cached:.1f} tokens/s with the KV cache, {uncached:.1f} without "
          f"-> {cached / uncached:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"generate-{'gpu' if device == 'cuda' else 'cpu'}{'-quick' if args.quick else ''}.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
