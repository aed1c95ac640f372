"""Quality bar: nanoGPT's CPU "baby Shakespeare" run, trained by fastgpt, timed and scored.

    python benchmarks/shakespeare_char.py [--data ../shared/data/tinyshakespeare.txt]
        [--baseline baseline.json] [--out benchmarks/results] [--max_iters 2000]

Trains ``configs/baby-shakespeare.yaml`` (char tokenizer, 4 x 4 x 128, context 64, batch 12,
lr 1e-3 -> 1e-4 cosine, 2000 iterations, fp32) on tinyshakespeare and writes
``shakespeare_char_cpu.json``: the validation loss of the last eval (20 random batches, as
nanoGPT reports it) and over the whole validation split (each token predicted once, with
``fastgpt.eval``), the process's wall time and the time per training step, next to a nanoGPT run
on the same machine when ``--baseline`` gives that run's JSON
(``{"process_wall_s", "train_step_s", "iters", "full_val_loss", "evals": [{"iter", "val"}, ...]}``).
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

import numpy as np
import torch

import fastgpt
from fastgpt.eval import evaluate_loss

ROOT = Path(__file__).resolve().parents[1]


def _commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def run_fastgpt(data: Path, max_iters: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-m", "fastgpt.train", "--config", str(ROOT / "configs" / "baby-shakespeare.yaml"),
                f"data.dataset={data}", f"data.cache_dir={tmp}/cache", f"train.out_dir={tmp}/out",
                f"train.max_iters={max_iters}", f"optim.lr_decay_iters={max_iters}",
                "train.sample_tokens=0"]  # nanoGPT's train.py samples nothing either
        start = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"training failed:\n{proc.stderr[-2000:]}")
        events = [json.loads(line) for line in (Path(tmp) / "out" / "metrics.jsonl").read_text().splitlines()]
        model, tokenizer = fastgpt.load(Path(tmp) / "out", which="latest")
        tokens = np.array(tokenizer.encode(data.read_text()[int(0.9 * len(data.read_text())):]))
        full_val = evaluate_loss(model, tokens, batch_size=64)["loss"]
    evals = [{"iter": e["iter"], "train": e["train_loss"], "val": e["val_loss"]} for e in events if "val_loss" in e]
    speeds = [e["tokens_per_s"] for e in events if "tokens_per_s" in e]
    tokens_per_step = 12 * 64  # batch_size x block_size of configs/baby-shakespeare.yaml
    return {"process_wall_s": wall, "evals": evals, "final_val_loss": evals[-1]["val"], "full_val_loss": full_val,
            "median_step_ms": 1e3 * tokens_per_step / statistics.median(speeds),
            "sample": proc.stdout.strip()[-400:]}


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
    print(f"fastgpt: val loss {ours['final_val_loss']:.4f} (20 batches), {ours['full_val_loss']:.4f} (whole split); "
          f"wall {ours['process_wall_s']:.1f} s, {ours['median_step_ms']:.1f} ms/step")
    if args.baseline:
        base = json.loads(args.baseline.read_text())
        base["final_val_loss"] = base["evals"][-1]["val"]
        base["median_step_ms"] = 1e3 * base["train_step_s"] / base["iters"]
        result["nanogpt"] = base
        result["speed_vs_nanogpt"] = {
            "wall": base["process_wall_s"] / ours["process_wall_s"],
            "step": base["median_step_ms"] / ours["median_step_ms"],
        }
        print(f"nanoGPT: val loss {base['final_val_loss']:.4f} (20 batches), {base['full_val_loss']:.4f} (whole "
              f"split); wall {base['process_wall_s']:.1f} s, {base['median_step_ms']:.1f} ms/step "
              f"-> fastgpt speed / nanoGPT's: {result['speed_vs_nanogpt']['wall']:.2f} (wall), "
              f"{result['speed_vs_nanogpt']['step']:.2f} (per step)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shakespeare_char_cpu.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
