"""CPU training speed: fastgpt in each dtype (and compiled) against nanoGPT, step by step in one process.

    python benchmarks/cpu.py [--shape shakespeare-char|baby] [--steps 10] [--batch B] [--data FILE]
        [--no-compile] [--quick] [--out benchmarks/results]

``--shape shakespeare-char`` (the default) is nanoGPT's ``config/train_shakespeare_char.py``: the
10.7M model (6 x 6 x 384, context 256, batch 64, dropout 0.2), here on the CPU; ``--shape baby`` its
README's CPU run (4 x 4 x 128, context 64, batch 12, no dropout). ``--batch`` changes the batch of
both. The baseline is ``benchmarks/nanogpt_baseline.py`` (nanoGPT's model and loop rebuilt, nothing
from fastgpt) as nanoGPT's README runs it on a CPU (eager, fp32), and also through ``torch.compile``
as its train.py does by default. fastgpt runs ``Trainer.train_step`` (what ``python -m fastgpt.train``
does per step) on the same shape, with nanoGPT's dropout on the embeddings and attention
probabilities too, in fp32, in bf16 autocast, and in bf16 compiled (``train.compile=true``).

Every variant takes ``WARMUP`` untimed steps (compilation happens there, and its seconds are
reported), then ``--steps`` rounds in which each takes one timed step, the order reversed every
round, so that a neighbour's load hits all alike; the median step gives tokens/s, and each is
reported as a ratio to nanoGPT eager. All train from the same seed on the same schedule, so after
the same number of steps their validation losses (over the first ``VAL_TOKENS`` tokens of the last
10% of the text, each token predicted once) should agree within the spread of dropout and bf16
rounding. Also recorded: what ``train.dtype=auto`` picks for this run, the CPU model, its bf16 flags
(``amx_bf16``, ``avx512_bf16``, ``avx2`` from /proc/cpuinfo), threads, torch and the commit. Writes
``cpu_<shape>.json`` and ``cpu_<shape>.png`` (tokens/s per variant) into ``--out``; ``--quick`` (the
baby shape, a short text, 2 steps, nothing compiled: proves the code runs) writes ``cpu_quick.*``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import nanogpt_baseline  # noqa: E402
from shakespeare_char import _commit, write_corpus  # noqa: E402

WARMUP = 2  # untimed steps of each variant: allocation, autocast caches, compilation
VAL_TOKENS = 32_768  # validation tokens each variant is scored on after training
QUICK_CHARS = 100_000
CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


def cpu_info() -> dict:
    """The CPU's model name and which of ``CPU_FLAGS`` it has (what decides bf16's speed)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {"model": name, "flags": [f for f in CPU_FLAGS if f in flags], "threads": torch.get_num_threads()}


def fastgpt_config(shape: str, data: Path, tmp: Path, batch: int | None, overrides: list[str]):
    from fastgpt.config import load_config
    from fastgpt.train.recipes import GPU

    common = [f"data.dataset={data}", f"data.cache_dir={tmp}/cache", f"train.out_dir={tmp}/out",
              "train.device=cpu", "train.sample_tokens=0", *([f"train.batch_size={batch}"] if batch else [])]
    if shape == "baby":
        return load_config(ROOT / "configs" / "baby-shakespeare.yaml", [*common, *overrides])
    # the GPU recipe is nanoGPT's shakespeare-char settings; nanoGPT drops out embeddings and attention too
    return load_config(None, [*common, "model.attn_dropout=0.2", "model.embedding_dropout=0.2", *overrides], base=GPU)


class Variant:
    """One trainer: ``step()`` is one training iteration, ``val_loss(text)`` its loss on held-out text."""

    def __init__(self, name: str, step: Callable[[int], None], val_loss: Callable[[str], float], tokens: int):
        self.name, self._step, self.val_loss, self.tokens = name, step, val_loss, tokens
        self.iter, self.times, self.warmup_s = 0, [], 0.0

    def step(self) -> float:
        start = time.perf_counter()
        self._step(self.iter)
        self.iter += 1
        return time.perf_counter() - start


def nanogpt_variant(name: str, data: Path, shape: nanogpt_baseline.Shape, compile: bool) -> Variant:
    run = nanogpt_baseline.Run(str(data), seed=1337, max_iters=5000 if shape.block == 256 else 2000,
                               shape=shape, compile=compile)
    chars = sorted(set(data.read_text()))
    index = {c: i for i, c in enumerate(chars)}

    @torch.no_grad()
    def val_loss(text: str) -> float:
        ids = torch.tensor([index[c] for c in text[: VAL_TOKENS + 1]])
        run.model.eval()
        n, block = (len(ids) - 1) // shape.block * shape.block, shape.block
        xs, ys = ids[:n].view(-1, block), ids[1 : n + 1].view(-1, block)
        losses = [run.model(x, y).item() * x.numel() for x, y in zip(xs.split(16), ys.split(16))]
        run.model.train()
        return sum(losses) / n

    return Variant(name, lambda it: run.step(it).item(), val_loss, shape.batch * shape.block)


def fastgpt_variant(name: str, cfg, env) -> tuple[Variant, str]:
    from fastgpt.eval.evaluate import evaluate_loss
    from fastgpt.train.trainer import Trainer

    trainer = Trainer(cfg, env)

    def step(it: int) -> None:
        trainer.train_step()
        trainer.iter += 1
        trainer.scheduler.step()

    def val_loss(text: str) -> float:
        tokens = np.array(trainer.data.tokenizer.encode(text)[: VAL_TOKENS + 1])
        trainer.model.eval()
        loss = evaluate_loss(trainer.model, tokens, batch_size=16)["loss"]
        trainer.model.train()
        return loss

    return Variant(name, step, val_loss, cfg.train.batch_size * cfg.model.block_size), trainer.cfg.train.dtype


def measure(variants: list[Variant], steps: int) -> None:
    for v in variants:
        start = time.perf_counter()
        for _ in range(WARMUP):
            v.step()
        v.warmup_s = time.perf_counter() - start
        print(f"  {v.name}: {WARMUP} warm-up steps in {v.warmup_s:.1f} s", flush=True)
    for r in range(steps):
        for v in variants if r % 2 == 0 else variants[::-1]:
            v.times.append(v.step())
        print(f"  round {r + 1}/{steps}: " + ", ".join(f"{v.name} {v.times[-1]:.2f} s" for v in variants), flush=True)


def plot(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    rows = result["variants"]
    fig = Figure(figsize=(7, 0.5 * len(rows) + 1.4), dpi=110)
    ax = fig.add_subplot()
    names = [r["name"] for r in rows][::-1]
    rates = [r["tokens_per_s"] for r in rows][::-1]
    colors = ["tab:orange" if n.startswith("nanogpt") else "tab:blue" for n in names]
    ax.barh(names, rates, color=colors)
    for y, r in enumerate(rows[::-1]):
        ax.text(r["tokens_per_s"], y, f" {r['vs_nanogpt']:.2f}x", va="center", fontsize=8)
    ax.set_xlabel("training tokens/s (median step)")
    cpu = result["cpu"]
    ax.set_title(f"{result['shape']} on {cpu['threads']} CPU threads ({', '.join(cpu['flags']) or 'no bf16 flags'})",
                 fontsize=9)
    ax.set_xlim(0, max(rates) * 1.18)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=nanogpt_baseline.SHAPES, default="shakespeare-char")
    p.add_argument("--steps", type=int, default=10, help="timed steps of each variant (default 10)")
    p.add_argument("--batch", type=int, default=None, help="batch size of every variant (default: the shape's)")
    p.add_argument("--data", type=Path, default=None, help="a text file (default: the embedded Shakespeare plays)")
    p.add_argument("--no-compile", action="store_true", help="leave out the compiled variants")
    p.add_argument("--quick", action="store_true", help="the baby shape, a short text, 2 steps, nothing compiled")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    if args.data is not None and not args.data.is_file():
        p.error(f"--data {str(args.data)!r} is not a file")
    if args.steps < 1 or (args.batch is not None and args.batch < 1):
        p.error("--steps and --batch must be at least 1")
    if args.quick:
        args.shape, args.steps, args.no_compile = "baby", 2, True
    shape = nanogpt_baseline.SHAPES[args.shape]
    if args.batch:
        shape = nanogpt_baseline.Shape(**{**shape.__dict__, "batch": args.batch})
    from fastgpt.train.distributed import setup, teardown

    with tempfile.TemporaryDirectory() as tmp:
        data = write_corpus(Path(tmp) / "corpus.txt", args.data, QUICK_CHARS if args.quick else None)
        text = data.read_text()
        val_text = text[int(0.9 * len(text)) :]
        env = setup("cpu")
        plan = [("fastgpt fp32", ["train.dtype=float32"]), ("fastgpt bf16", ["train.dtype=bfloat16"])]
        if not args.no_compile:
            plan.append(("fastgpt bf16 compiled", ["train.dtype=bfloat16", "train.compile=true"]))
        variants = [nanogpt_variant("nanogpt", data, shape, compile=False)]
        if not args.no_compile:
            variants.append(nanogpt_variant("nanogpt compiled", data, shape, compile=True))
        for i, (name, overrides) in enumerate(plan):
            cfg = fastgpt_config(args.shape, data, Path(tmp) / str(i), shape.batch, overrides)
            variants.append(fastgpt_variant(name, cfg, env)[0])
        auto_cfg = fastgpt_config(args.shape, data, Path(tmp) / "auto", shape.batch, ["train.dtype=auto"])
        auto_choice = fastgpt_variant("auto", auto_cfg, env)[1]  # built only for its choice; never stepped
        print(f"{args.shape}, batch {shape.batch}: train.dtype=auto picks {auto_choice}", flush=True)
        measure(variants, args.steps)
        losses = {v.name: v.val_loss(val_text) for v in variants}
        teardown()
    base = statistics.median(variants[0].times)
    rows = [{"name": v.name, "tokens_per_s": v.tokens / statistics.median(v.times),
             "median_step_s": statistics.median(v.times), "vs_nanogpt": base / statistics.median(v.times),
             "warmup_s": v.warmup_s, "val_loss": losses[v.name], "step_times_s": v.times} for v in variants]
    result = {"benchmark": "CPU training step, fastgpt vs nanoGPT (benchmarks/cpu.py)", "shape": args.shape,
              "shape_settings": shape.__dict__, "steps": args.steps, "warmup_steps": WARMUP,
              "trained_steps": WARMUP + args.steps, "val_tokens": VAL_TOKENS, "auto_dtype": auto_choice,
              "data": str(args.data) if args.data else "the embedded Shakespeare plays", "quick": args.quick,
              "cpu": cpu_info(), "torch": torch.__version__, "commit": _commit(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "variants": rows}
    for r in rows:
        print(f"{r['name']:24s} {r['tokens_per_s']:9,.0f} tokens/s  {r['vs_nanogpt']:.2f}x nanoGPT  "
              f"val loss {r['val_loss']:.4f} after {WARMUP + args.steps} steps  (warm-up {r['warmup_s']:.1f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "cpu_quick" if args.quick else f"cpu_{args.shape}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.json and .png")


if __name__ == "__main__":
    main()
