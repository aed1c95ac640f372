"""Shared benchmark plumbing: runtime set-up, timing, the machine's ceilings, tables and result files.

Every benchmark script (``attn.py``, ``rms_norm.py``, ``adamw.py``, ``train.py``) does:

    args = parse_args(__doc__)          # --quick, --full, --skip-compile, --budget, --out
    env = init_runtime(args)            # picks the device; sets TRITON_INTERPRET=1 for --quick on CPU
    ceilings = measure_ceilings(env)    # bf16 matmul TFLOP/s and device copy GB/s, this run
    ...bench(fn, env)...                # median ms: do_bench on CUDA, perf_counter on CPU
    finish(env, "attn", rows, summary, ceilings, plot)   # table, JSON + CSV + PNG under --out

Timing: on CUDA, ``triton.testing.do_bench`` (median, ``grad_to_none``), which writes a 256 MB
buffer before every timed call, so L2 (50 MB on H100) never serves the previous call's inputs or
outputs; the flush is outside the timed region. On CPU, the median of a few ``time.perf_counter``
calls (only to prove the scripts run: CPU numbers mean nothing).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from summary import DEFAULT_OUT, ROOT, SUMMARY_TARGETS

from fastgpt.train.metrics import peak_bf16_flops

# our kernels' providers; "triton-eager" and the like are ours too
OUR_PROVIDERS = ("triton", "cuda")
# how our kernel modules word a refusal of unsupported inputs: "<op> (<backend>): <reason>"
_REFUSAL = re.compile(r"^\w+ \((triton|cuda)\): ")

# do_bench windows (ms): sweeps use short ones, the shapes behind the summary keys the defaults
SWEEP_WINDOW = (10, 30)
HEADLINE_WINDOW = (25, 100)


@dataclass
class Env:
    """Where and how this run measures."""

    device: torch.device
    quick: bool
    full: bool
    compile: bool
    out: Path
    interpreted: bool  # Triton kernels run in the CPU interpreter
    budget_s: float | None = None  # stop starting new measurements after this many seconds
    start: float = field(default_factory=time.perf_counter)
    info: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)  # our providers that crashed

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def skip(self, provider: str, reason: str, where: str = "") -> None:
        """Record (and print once per provider and reason) that a provider did not run."""
        reason = " ".join(str(reason).split())[:400]
        if not any(s["provider"] == provider and s["reason"] == reason for s in self.skipped):
            print(f"  skip {provider}{' at ' + where if where else ''}: {reason}", flush=True)
        self.skipped.append({"provider": provider, "reason": reason, "where": where})

    def out_of_time(self, provider: str, where: str = "") -> bool:
        """True (with a note) once the --budget is spent: the sweeps put the summary shapes first."""
        if self.budget_s is None or time.perf_counter() - self.start < self.budget_s:
            return False
        self.skip(provider, f"--budget of {self.budget_s:.0f} s spent", where)
        return True


def parse_args(doc: str | None, argv: list[str] | None = None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (CPU: reference + Triton-interpreter providers) to prove the script runs")
    parser.add_argument("--full", action="store_true", help="the whole sweep (slower; see the script's docstring)")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile providers")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"result folder (default {DEFAULT_OUT})")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="start no new measurement after this many seconds (the rest is noted as skipped)")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def init_runtime(args: argparse.Namespace) -> Env:
    """Pick the device and, for --quick without CUDA, the Triton interpreter.

    Must run before anything imports triton: TRITON_INTERPRET is read when triton is imported.
    Without CUDA and without --quick it exits 2 (the full sizes would take hours on a CPU).
    """
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        print("error: these benchmarks need a CUDA GPU; run with --quick for the CPU smoke run", file=sys.stderr)
        sys.exit(2)
    if not cuda:
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            print("warning: triton was imported before TRITON_INTERPRET=1 could be set", file=sys.stderr)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    env = Env(device=device, quick=args.quick, full=args.full and not args.quick,
              compile=not args.skip_compile and not args.quick, out=args.out,
              interpreted=os.environ.get("TRITON_INTERPRET") == "1", budget_s=args.budget)
    env.info = device_info(device)
    torch.manual_seed(0)
    print(f"# {env.info['device']} | torch {env.info['torch']} | triton {env.info['triton']} | "
          f"CUDA {env.info['cuda']} | commit {env.info['commit'][:12]}{' (dirty)' if env.info['dirty'] else ''}"
          f"{' | QUICK' if env.quick else ''}{' | triton interpreter' if env.interpreted else ''}", flush=True)
    if not env.compile:
        env.skip("*-compile", "--quick" if args.quick else "--skip-compile")
    return env


def _run(cmd: list[str]) -> str | None:
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def device_info(device: torch.device) -> dict[str, Any]:
    """The stamp every result file carries."""
    try:
        from importlib.metadata import version

        triton_version = version("triton")
    except Exception:
        triton_version = "not installed"
    info: dict[str, Any] = {
        "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda or "none",
        "python": platform.python_version(), "commit": _run(["git", "rev-parse", "HEAD"]) or "unknown",
        "dirty": bool(_run(["git", "status", "--porcelain", "--untracked-files=no"])),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={device.index}"])
        info.update(device=props.name, driver=driver or "unknown", sm_count=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1),
                    l2_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
                    capability=f"{props.major}.{props.minor}",
                    peak_bf16_tflops=(peak_bf16_flops(props.name) or 0) / 1e12 or None)
    else:
        info.update(device=f"cpu ({platform.processor() or platform.machine()})", driver="none",
                    threads=torch.get_num_threads(), peak_bf16_tflops=None)
    return info


# ------------------------------------------------------------------------------------- timing
def bench(fn: Callable[[], Any], env: Env, grad_to_none: Iterable[torch.Tensor] | None = None,
          headline: bool = False, cpu_reps: int = 3) -> float:
    """Median milliseconds of ``fn()``.

    CUDA: ``triton.testing.do_bench`` (L2 flushed before each call, grads set to None before each
    call so a backward allocates rather than accumulates). CPU: one warm-up call, then the median of
    ``cpu_reps`` ``perf_counter`` timings (one call in all under the Triton interpreter).
    """
    grads = list(grad_to_none or [])
    if env.cuda:
        import triton.testing

        warmup, rep = HEADLINE_WINDOW if headline else SWEEP_WINDOW
        return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grads or None,
                                             return_mode="median"))
    reps = 1 if env.interpreted else cpu_reps
    if not env.interpreted:
        fn()
    times = []
    for _ in range(reps):
        for t in grads:
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def is_ours(provider: str) -> bool:
    return provider.split("-")[0] in OUR_PROVIDERS


def cannot_run_here(exc: BaseException) -> bool:
    """True when ``exc`` says a provider cannot run here (its backend is unavailable, our kernel
    refuses the inputs with its reason, the GPU is out of memory), not that it is broken."""
    from fastgpt.ops import BackendUnavailable

    if isinstance(exc, (BackendUnavailable, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(exc, ValueError) and _REFUSAL.match(str(exc)) is not None


def guarded(env: Env, provider: str, where: str, fn: Callable[[], Any]) -> Any | None:
    """``fn()``, or None when it raises; the script goes on with the other providers.

    A baseline's exception, or one of ours that :func:`cannot_run_here`, is a note (``skipped``).
    Any other exception of our providers (triton, cuda) is a crash: its traceback is printed, it
    is recorded in ``env.failures`` and :func:`finish` then exits 1.
    """
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - sorted below into notes and crashes
        reason = f"{type(exc).__name__}: {exc}"
        if is_ours(provider) and not cannot_run_here(exc):
            traceback.print_exc()
            print(f"  FAILED {provider} at {where}: {' '.join(reason.split())[:400]}", flush=True)
            env.failures.append({"provider": provider, "reason": reason, "where": where})
        else:
            if os.environ.get("FASTGPT_BENCH_TRACEBACK") == "1":
                traceback.print_exc()
            env.skip(provider, reason, where)
        release_memory()
        return None


def exit_if_failed(env: Env) -> None:
    """Exit 1, naming them, when any of our providers crashed."""
    if env.failures:
        crashed = ", ".join(f"{f['provider']} at {f['where']}" for f in env.failures)
        print(f"error: our providers crashed: {crashed}", file=sys.stderr, flush=True)
        sys.exit(1)


def time_modes(env: Env, provider: str, where: str, forward: Callable[[], torch.Tensor], dout: torch.Tensor,
               grads: list[torch.Tensor], headline: bool, bwd: str = "time") -> dict[str, tuple[float, bool]]:
    """{mode: (median ms, derived)} for fwd, fwd+bwd and bwd; empty when the forward fails.

    bwd="time" times ``out.backward(dout, retain_graph=True)`` on one saved forward; "derive" sets
    bwd = (fwd+bwd) - fwd, for compiled graphs (AOTAutograd donates the saved buffers to the
    backward, which then refuses retain_graph); "skip" leaves it out (the Triton interpreter).
    """
    ms: dict[str, tuple[float, bool]] = {}
    t = guarded(env, provider, where, lambda: bench(forward, env, headline=headline))
    if t is None:
        return ms  # a provider that cannot run forward cannot run the rest
    ms["fwd"] = (t, False)
    t = guarded(env, provider, where, lambda: bench(lambda: forward().backward(dout), env, grad_to_none=grads,
                                                     headline=headline))
    if t is not None:
        ms["fwd+bwd"] = (t, False)
    if bwd == "time":
        def backward_only() -> float:
            out = forward()
            return bench(lambda: out.backward(dout, retain_graph=True), env, grad_to_none=grads, headline=headline)

        t = guarded(env, provider, f"{where} bwd", backward_only)
        if t is not None:
            ms["bwd"] = (t, False)
    elif bwd == "derive" and "fwd+bwd" in ms:
        ms["bwd"] = (max(ms["fwd+bwd"][0] - ms["fwd"][0], 1e-6), True)
    return ms


def release_memory() -> None:
    """Free what the last provider left on the GPU (a no-op on CPU, where gc.collect is just slow)."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def raise_recompile_limit(limit: int = 64) -> None:
    """Sweeps compile one static graph per shape; dynamo's default limit (8) would fall back to eager."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(limit, getattr(dynamo_config, name)))


# ------------------------------------------------------------------------------------ ceilings
def measure_ceilings(env: Env) -> dict[str, Any]:
    """The machine's two limits, measured now: bf16 matmul TFLOP/s and device-to-device copy GB/s.

    matmul: C = A @ B, 8192^3 bf16 (random normal data: zeros would run cooler and faster),
    2 * 8192^3 FLOPs. copy: ``dst.copy_(src)`` of 1 GiB, counting 2 GiB (read + written).
    CPU (--quick): 256^3 fp32 and 32 MiB, only so the fraction columns are exercised.
    """
    n, dtype = (8192, torch.bfloat16) if env.cuda else (256, torch.float32)
    nbytes = 2**30 if env.cuda else 2**25
    matmul_tflops = 2 * n**3 / (_time_matmul(env, n, dtype) * 1e-3) / 1e12
    copy_gbps = 2 * nbytes / (_time_copy(env, nbytes) * 1e-3) / 1e9
    release_memory()
    out = {"matmul_tflops": matmul_tflops, "matmul": f"{n}^3 {str(dtype).removeprefix('torch.')}",
           "copy_gbps": copy_gbps, "copy_bytes": nbytes}
    print(f"# ceilings: matmul {matmul_tflops:.1f} TFLOP/s ({out['matmul']}), "
          f"copy {copy_gbps:.0f} GB/s ({nbytes / 2**20:.0f} MiB, read + written)", flush=True)
    return out


def _time_matmul(env: Env, n: int, dtype: torch.dtype) -> float:
    a = torch.randn(n, n, device=env.device, dtype=dtype)
    b = torch.randn(n, n, device=env.device, dtype=dtype)
    return bench(lambda: torch.matmul(a, b), env, headline=True)


def _time_copy(env: Env, nbytes: int) -> float:
    src = torch.randn(nbytes // 4, device=env.device)
    dst = torch.empty_like(src)
    return bench(lambda: dst.copy_(src), env, headline=True)


# ------------------------------------------------------------------------------------ rows
def add_ratios(rows: list[dict[str, Any]], group_keys: tuple[str, ...], metric: str = "value") -> None:
    """Set ``vs_best_baseline`` (metric / the best non-ours provider's, same group) on every row."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in group_keys), []).append(row)
    for members in groups.values():
        baselines = [r for r in members if not r["ours"]]
        best = max(baselines, key=lambda r: r[metric], default=None)
        for row in members:
            row["best_baseline"] = best["provider"] if best else None
            row["vs_best_baseline"] = row[metric] / best[metric] if best else None


def find_row(rows: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def best_ours(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The fastest of our providers among the rows matching ``match``."""
    ours = [r for r in find_row(rows, **match) if r["ours"]]
    return min(ours, key=lambda r: r["ms"], default=None)


def speed_ratio(rows: list[dict[str, Any]], baseline: str, **match: Any) -> float | None:
    """Baseline time / our best time at ``match`` (None when either is missing)."""
    ours = best_ours(rows, **match)
    base = find_row(rows, provider=baseline, **match)
    return base[0]["ms"] / ours["ms"] if ours and base else None


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """A plain-text table; ``columns`` are (row key, header)."""
    if not rows:
        print("(no measurements)")
        return
    cells = [[_fmt(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(columns)]
    print("  ".join(h.rjust(w) for (_, h), w in zip(columns, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))
    sys.stdout.flush()


# ------------------------------------------------------------------------------------ files
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def finish(env: Env, bench_name: str, rows: list[dict[str, Any]], summary: dict[str, float | None],
           ceilings: dict[str, Any], plot: Callable[[Any, list[dict[str, Any]]], None] | None,
           extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``<bench>-<gpu>-<date>.{json,csv,png}`` under ``env.out``; print the summary keys; then
    exit 1 if any of our providers crashed (:func:`exit_if_failed`)."""
    env.out.mkdir(parents=True, exist_ok=True)
    gpu = _slug(env.info["device"].split(" (")[0])
    stamp = dt.datetime.fromisoformat(env.info["date"]).strftime("%Y%m%d-%H%M%S")
    stem = env.out / f"{bench_name}-{gpu}-{stamp}{'-quick' if env.quick else ''}"
    paths = {"json": stem.with_suffix(".json"), "csv": stem.with_suffix(".csv"), "png": stem.with_suffix(".png")}
    doc = {
        "bench": bench_name, **env.info, "quick": env.quick, "full": env.full, "argv": sys.argv[1:],
        "ceilings": ceilings, "summary": summary,
        "targets": {k: SUMMARY_TARGETS[k][0] for k in summary},
        "rows": rows, "skipped": env.skipped, "failures": env.failures, **(extra or {}),
    }
    paths["json"].write_text(json.dumps(doc, indent=1, default=str) + "\n")
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 7.5), dpi=40 if env.quick else 100)  # --quick: a cheap, low-res plot
    if plot is not None and rows:
        plot(fig, rows)
    else:
        fig.text(0.5, 0.5, "no measurements", ha="center")
    fig.suptitle(f"{bench_name}: {env.info['device']} | torch {env.info['torch']} | triton {env.info['triton']} | "
                 f"{env.info['commit'][:10]} | {env.info['date'][:10]}{' | QUICK (tiny sizes)' if env.quick else ''}",
                 fontsize=10)
    if not env.quick:
        fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(paths["png"])
    plt.close(fig)
    print("\n## summary")
    for key, value in summary.items():
        target = SUMMARY_TARGETS[key][0]
        met = None if value is None else value >= target
        verdict = "n/a" if met is None else "met" if met else "not met"
        print(f"{key:36s} {_fmt(value):>8s}  (target >= {target}; {verdict})")
    print("\nwrote " + ", ".join(str(p) for p in paths.values()), flush=True)
    exit_if_failed(env)
    return paths


def line_panel(ax: Any, rows: list[dict[str, Any]], x: str, y: str, title: str, ylabel: str,
               ceiling: float | None = None, ceiling_label: str = "") -> None:
    """One axis: ``y`` against ``x`` per provider (ours solid, baselines dashed), log2 x."""
    for provider in dict.fromkeys(r["provider"] for r in rows):
        pts = sorted((r[x], r[y]) for r in rows if r["provider"] == provider and r.get(y) is not None)
        if pts:
            ours = next(r["ours"] for r in rows if r["provider"] == provider)
            ax.plot(*zip(*pts), "o-" if ours else "s--", label=provider, linewidth=2 if ours else 1, markersize=4)
    if ceiling:
        ax.axhline(ceiling, color="gray", linestyle=":", label=ceiling_label)
    ax.set_xscale("log", base=2)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
