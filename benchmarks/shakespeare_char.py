"""Quality bar: nanoGPT's CPU "baby Shakespeare" run, trained by fastgpt and by nanoGPT, several seeds.

    python benchmarks/shakespeare_char.py [--quick] [--data PATH/tinyshakespeare.txt]
        [--seeds 1 2 3 4 5] [--no-baseline] [--max_iters 2000] [--recipe] [--out benchmarks/results]

The text is ``--data`` (a .txt file; nanoGPT's numbers are for tinyshakespeare.txt), by default the
corpus ``make train`` uses: the embedded Shakespeare plays (``data.dataset=shakespeare``), written
to a temporary text file so that both trainers read the same characters. ``--quick`` is a smoke
run (about 3 minutes of CPU time, longer on a busy machine): the first ``QUICK_CHARS`` characters of the text, one seed,
``QUICK_ITERS`` iterations, ``QUICK_AB_STEPS`` interleaved steps, written as ``*_quick.{json,png}``.

For each seed, trains ``configs/baby-shakespeare.yaml`` (char tokenizer, 4 x 4 x 128, context 64,
batch 12, lr 1e-3 -> 1e-4 cosine, 2000 iterations, fp32) with ``python -m fastgpt.train``, then
the same run with ``benchmarks/nanogpt_baseline.py`` (nanoGPT's model and loop, nothing from
fastgpt), one process after the other so that both see the same machine. Each run reports the
validation loss of its last eval (20 random batches, as nanoGPT prints it) and over the whole
validation split (each token predicted once), the median time of a training step (over 10-step
intervals) and the process's wall time (start-up, data, evals and, for fastgpt, checkpoints
included; the whole-split eval excluded). Seed-to-seed spread is about 0.01 in loss, so the
summary compares means over seeds; whole runs drift by +-10% in speed from one process to the
next here, so both steps are also timed alternately in one process (``--ab-steps``).
Writes ``shakespeare_char_cpu.json`` (every run, the means and standard deviations, the ratios)
and ``shakespeare_char_cpu.png`` (validation loss against iteration, every run) (``--quick``:
``shakespeare_char_cpu_quick.*``).

``--recipe`` trains, in fastgpt's place, what ``make train`` runs on a CPU (``python -m
fastgpt.train --recipe cpu``: :data:`fastgpt.train.recipes.CPU`, its own length and eval batches)
beside nanoGPT's baby-shakespeare run: is the default better than nanoGPT's CPU recipe, and at what
wall time. No interleaved timing (the models differ). Writes ``shakespeare_char_cpu_recipe.*``.
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
from fastgpt.eval.evaluate import evaluate_loss
from fastgpt.train.recipes import CPU

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("final_val_loss", "full_val_loss", "median_step_ms", "process_wall_s")
QUICK_CHARS, QUICK_ITERS, QUICK_AB_STEPS = 200_000, 20, 20


def write_corpus(path: Path, source: Path | None, chars: int | None) -> Path:
    """``source`` (a text file), or else the embedded plays joined by blank lines, written to ``path``
    (its first ``chars`` characters only, when given)."""
    from fastgpt.data.sources import shakespeare_documents

    text = source.read_text(encoding="utf-8") if source is not None else "\n".join(shakespeare_documents())
    path.write_text(text[:chars] if chars else text, encoding="utf-8")
    return path


def _commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def _run(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(args[:3])} ... failed:\n{proc.stderr[-2000:]}")
    return proc, wall


def run_fastgpt(data: Path, seed: int, max_iters: int | None, recipe: bool = False) -> dict:
    """One fastgpt run: configs/baby-shakespeare.yaml, or (``recipe``) the CPU recipe of ``make train``;
    ``max_iters`` None keeps the recipe's own length."""
    with tempfile.TemporaryDirectory() as tmp:
        config = ["--recipe", "cpu"] if recipe else ["--config", str(ROOT / "configs" / "baby-shakespeare.yaml")]
        length = [] if max_iters is None else [f"train.max_iters={max_iters}", f"optim.lr_decay_iters={max_iters}"]
        _, wall = _run([sys.executable, "-m", "fastgpt.train", *config, f"data.dataset={data}",
                        f"data.cache_dir={tmp}/cache", f"train.out_dir={tmp}/out", f"train.seed={seed}", *length,
                        "train.sample_tokens=0"])  # nanoGPT's train.py samples nothing either
        events = [json.loads(line) for line in (Path(tmp) / "out" / "metrics.jsonl").read_text().splitlines()]
        model, tokenizer = fastgpt.load(Path(tmp) / "out", which="latest")
        text = data.read_text()
        full_val = evaluate_loss(model, np.array(tokenizer.encode(text[int(0.9 * len(text)) :])), batch_size=64)
    evals = [{"iter": e["iter"], "train": e["train_loss"], "val": e["val_loss"]} for e in events if "val_loss" in e]
    shape = CPU["train"]["batch_size"] * CPU["model"]["block_size"] if recipe else 12 * 64  # baby-shakespeare's
    tokens_per_step = shape  # batch_size x block_size
    speeds = [e["tokens_per_s"] for e in events if "tokens_per_s" in e]
    return {"seed": seed, "evals": evals, "final_val_loss": evals[-1]["val"], "full_val_loss": full_val["loss"],
            "median_step_ms": 1e3 * tokens_per_step / statistics.median(speeds), "process_wall_s": wall}


def run_nanogpt(data: Path, seed: int, max_iters: int) -> dict:
    proc, wall = _run([sys.executable, str(ROOT / "benchmarks" / "nanogpt_baseline.py"), str(data),
                       f"--seed={seed}", f"--max_iters={max_iters}"])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "seed": seed,
        "evals": out["evals"],
        "final_val_loss": out["evals"][-1]["val"],
        "full_val_loss": out["full_val_loss"],
        "median_step_ms": out["median_step_ms"],
        "process_wall_s": wall - out["full_val_eval_s"],
    }  # fastgpt's whole-split eval runs outside its process


def interleaved_steps(data: Path, steps: int) -> dict:
    """Median time of one training step of each, alternating step by step in this process.

    Whole runs drift by +-10% from one process to the next on a shared machine; alternating steps
    puts both under the same drift. fastgpt's step is ``Trainer.train_step`` and the scheduler step
    (what ``Trainer.run`` does per iteration, logging aside), nanoGPT's its loop body.
    """
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import nanogpt_baseline

    from fastgpt.config import load_config
    from fastgpt.train.distributed import setup, teardown
    from fastgpt.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(str(ROOT / "configs" / "baby-shakespeare.yaml"),
                             [f"data.dataset={data}", f"data.cache_dir={tmp}/cache", f"train.out_dir={tmp}/out"])
        trainer = Trainer(cfg, setup("cpu"))
        base = nanogpt_baseline.Run(str(data), seed=cfg.train.seed, max_iters=cfg.train.max_iters)

        def ours(it: int) -> None:
            trainer.train_step()
            trainer.iter += 1
            trainer.scheduler.step()

        def theirs(it: int) -> None:
            base.step(it).item()

        times: dict[str, list[float]] = {"fastgpt": [], "nanogpt": []}
        for it in range(steps):
            pair = [("fastgpt", ours), ("nanogpt", theirs)]
            for name, fn in pair if it % 2 else pair[::-1]:
                start = time.perf_counter()
                fn(it)
                times[name].append(time.perf_counter() - start)
        teardown()
    warm = steps // 10
    ms = {name: 1e3 * statistics.median(t[warm:]) for name, t in times.items()}
    return {"steps": steps, "fastgpt_step_ms": ms["fastgpt"], "nanogpt_step_ms": ms["nanogpt"],
            "speed": ms["nanogpt"] / ms["fastgpt"]}


def summarize(runs: list[dict]) -> dict:
    """Mean and (for two or more runs) standard deviation of each metric over the runs."""
    out = {}
    for key in METRICS:
        values = [r[key] for r in runs]
        out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None}
    return out


def plot(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot()
    for name, color in (("fastgpt", "tab:blue"), ("nanogpt", "tab:orange")):
        for i, run in enumerate(result.get(name, {}).get("runs", [])):
            evals = [e for e in run["evals"] if e["iter"] > 0]
            ax.plot(
                [e["iter"] for e in evals],
                [e["val"] for e in evals],
                "o-",
                color=color,
                alpha=0.6,
                markersize=3,
                label=(f"{name}: {result.get(f'{name}_trains', 'baby-shakespeare')}") if i == 0 else None,
            )
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation loss (its eval batches)")
    ax.set_title("Shakespeare characters on CPU, one line per seed", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.92)
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None,
                   help="a text file (default: the embedded Shakespeare plays that make train uses)")
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run: {QUICK_CHARS:,} characters, one seed, {QUICK_ITERS} iterations")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 1 2 3 4 5 (--quick: 1)")
    p.add_argument("--no-baseline", action="store_true", help="train fastgpt only")
    p.add_argument("--max_iters", type=int, default=None, help=f"default: 2000 (--quick: {QUICK_ITERS})")
    p.add_argument("--ab-steps", type=int, default=None,
                   help=f"steps of each in the interleaved timing (0: none; default 400, --quick: {QUICK_AB_STEPS})")
    p.add_argument("--recipe", action="store_true",
                   help="train make train's CPU recipe (fastgpt.train.recipes.CPU, its own length) instead of "
                        "baby-shakespeare; nanoGPT still trains its baby-shakespeare settings")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    if args.data is not None and not args.data.is_file():
        sys.exit(f"error: --data {str(args.data)!r} does not exist (pass a text file, e.g. tinyshakespeare.txt)")
    args.seeds = args.seeds or ([1] if args.quick else [1, 2, 3, 4, 5])
    own_length = args.recipe and not args.quick and args.max_iters is None  # the recipe's own max_iters
    args.max_iters = args.max_iters or (QUICK_ITERS if args.quick else 2000)
    args.fastgpt_iters = None if own_length else args.max_iters
    args.ab_steps = (QUICK_AB_STEPS if args.quick else 400) if args.ab_steps is None else args.ab_steps
    if args.recipe:
        args.ab_steps = 0  # the interleaved timing compares one model's steps; here the models differ
    with tempfile.TemporaryDirectory() as tmp:
        data = write_corpus(Path(tmp) / "corpus.txt", args.data, QUICK_CHARS if args.quick else None)
        run_all(args, data)


def run_all(args: argparse.Namespace, data: Path) -> None:
    names = ("fastgpt",) if args.no_baseline else ("fastgpt", "nanogpt")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for seed in args.seeds:
        for name in names:
            if name == "fastgpt":
                run = run_fastgpt(data, seed, args.fastgpt_iters, args.recipe)
            else:
                run = run_nanogpt(data, seed, args.max_iters)
            runs[name].append(run)
            print(
                f"{name:8s} seed {seed}: val loss {run['final_val_loss']:.4f} (last eval), "
                f"{run['full_val_loss']:.4f} (whole split); {run['median_step_ms']:.1f} ms/step, "
                f"wall {run['process_wall_s']:.1f} s",
                flush=True,
            )
    result = {
        "benchmark": f"nanoGPT baby Shakespeare (char, 4x4x128, T=64, B=12, {args.max_iters} iters, fp32, CPU)",
        "fastgpt_trains": "make train's CPU recipe" if args.recipe else "baby-shakespeare",
        "data": str(args.data) if args.data else "the embedded Shakespeare plays (data.dataset=shakespeare)",
        "quick": args.quick,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "commit": _commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seeds": args.seeds,
    }
    for name in names:
        result[name] = {"summary": summarize(runs[name]), "runs": runs[name]}
    print(f"\nmean over seeds {args.seeds} (std):")
    for name in names:
        s = result[name]["summary"]
        print(f"{name:8s} " + ", ".join(f"{k} {s[k]['mean']:.4g} ({s[k]['std'] or 0:.2g})" for k in METRICS))
    if "nanogpt" in runs:
        ours, base = result["fastgpt"]["summary"], result["nanogpt"]["summary"]
        result["fastgpt_vs_nanogpt"] = {
            "full_val_loss_diff": ours["full_val_loss"]["mean"] - base["full_val_loss"]["mean"],
            "final_val_loss_diff": ours["final_val_loss"]["mean"] - base["final_val_loss"]["mean"],
            "speed_per_step": base["median_step_ms"]["mean"] / ours["median_step_ms"]["mean"],
            "speed_wall": base["process_wall_s"]["mean"] / ours["process_wall_s"]["mean"],
        }
        if args.ab_steps:
            ab = interleaved_steps(data, args.ab_steps)
            result["interleaved_steps"] = ab
            result["fastgpt_vs_nanogpt"]["speed_per_step_interleaved"] = ab["speed"]
            print(f"interleaved in one process, {ab['steps']} steps each: fastgpt {ab['fastgpt_step_ms']:.2f} ms, "
                  f"nanoGPT {ab['nanogpt_step_ms']:.2f} ms per step")
        print(
            "fastgpt vs nanoGPT: "
            + ", ".join(
                f"{k} {v:+.4f}" if "diff" in k else f"{k} {v:.3f}x" for k, v in result["fastgpt_vs_nanogpt"].items()
            )
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"shakespeare_char_cpu{'_recipe' if args.recipe else ''}{'_quick' if args.quick else ''}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / f"{stem}.png")


if __name__ == "__main__":
    main()
