"""Quality bar: nanoGPT's CPU "baby Shakespeare" run, trained by fastgpt, timed and scored.

    python benchmarks/shakespeare_char.py [--data ../shared/data/tinyshakespeare.txt]
        [--baseline baseline.json] [--out benchmarks/results] [--max_iters 2000]

Trains ``configs/baby-shakespeare.yaml`` (char tokenizer, 4 x 4 x 128, context 64, batch 12,
lr 1e-3 -> 1e-4 cosine, 2000 iterations, fp32) on tinyshakespeare and writes
``shakespeare_char_cpu.json``: final validation loss, wall time and median tokens/s, next to the
numbers of a nanoGPT run on the same machine when ``--baseline`` gives that run's JSON
(``{"wall_s": ..., "evals": [{"iter": ..., "val": ...}, ...]}``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def run_fastgpt(data: Path, max_iters: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-m", "fastgpt.train", "--config", str(ROOT / "configs" / "baby-shakespeare.yaml"),
                f"data.dataset={data}", f"data.cache_dir={tmp}/cache", f"train.out_dir={tmp}/out",
                f"train.max_iters={max_iters}", f"optim.lr_decay_iters={max_iters}"]
        start = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"training failed:\n{proc.stderr[-2000:]}")
        events = [json.loads(line) for line in (Path(tmp) / "out" / "metrics.jsonl").read_text().splitlines()]
    evals = [{"iter": e["iter"], "train": e["train_loss"], "val": e["val_loss"]} for e in events if "val_loss" in e]
    speeds = [e["tokens_per_s"] for e in events if "tokens_per_s" in e]
    return {"wall_s": wall, "evals": evals, "final_val_loss": evals[-1]["val"],
            "median_tokens_per_s": statistics.median(speeds), "sample": proc.stdout.strip()[-400:]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "tinyshakespeare.txt")
    p.add_argument("--baseline", type=Path, help="JSON of a nanoGPT run with the same settings on this machine")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--max_iters", type=int, default=2000)
    args = p.parse_args()
    if not args.data.is_file():
        sys.exit(f"error: {args.data} does not exist (pass --data PATH/tinyshakespeare.txt)")
    ours = run_fastgpt(args.data.resolve(), args.max_iters)
    result = {
        "benchmark": "nanoGPT baby Shakespeare (char, 4x4x128, T=64, B=12, 2000 iters, fp32, CPU)",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "commit": _commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "fastgpt": ours,
    }
    print(f"fastgpt: final val loss {ours['final_val_loss']:.4f}, wall {ours['wall_s']:.1f} s, "
          f"median {ours['median_tokens_per_s']:.0f} tokens/s")
    if args.baseline:
        base = json.loads(args.baseline.read_text())
        base["final_val_loss"] = base["evals"][-1]["val"]
        result["nanogpt"] = base
        result["wall_ratio_nanogpt_over_fastgpt"] = base["wall_s"] / ours["wall_s"]
        print(f"nanoGPT: final val loss {base['final_val_loss']:.4f}, wall {base['wall_s']:.1f} s "
              f"-> fastgpt is {result['wall_ratio_nanogpt_over_fastgpt']:.2f}x nanoGPT's speed")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shakespeare_char_cpu.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
