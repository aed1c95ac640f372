"""Run every benchmark in sequence, then merge their summaries: one command for a GPU session.

    python benchmarks/run_all.py [--quick] [--full] [--skip-compile] [--out DIR] [--only attn,train]
                                 [--total SECONDS]

Each benchmark runs in its own process (a crash or an out-of-memory in one leaves the others
and the GPU clean); then summary.py merges the newest results in DIR and prints the README table.
Exits 1 when a benchmark failed or was killed, 0 otherwise.

Default GPU run on one H100: ~6-9 minutes in all (estimates; see each script's docstring). Under
a hard limit (10 minutes a command), pass ``--total 480``: each script then gets a --budget share
of the time left (so it stops starting new measurements in time and still writes its files; the
summary shapes are measured first), and is killed 90 s past its share.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import summary
from summary import DEFAULT_OUT

HERE = Path(__file__).resolve().parent
BENCHES = ("attn", "rms_norm", "adamw", "train", "dispatch")
# shares of --total (expected runtimes)
WEIGHTS = {"attn": 0.35, "rms_norm": 0.2, "adamw": 0.15, "train": 0.27, "dispatch": 0.03}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {', '.join(BENCHES)}")
    parser.add_argument("--total", type=float, default=None, metavar="SECONDS",
                        help="time for all of them: each gets a --budget share (by its expected runtime) of what "
                             "is left, and is killed 90 s past it")
    args = parser.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in BENCHES]
    if unknown:
        print(f"error: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    flags = [f for f, on in (("--quick", args.quick), ("--full", args.full), ("--skip-compile", args.skip_compile))
             if on]
    status: dict[str, tuple[int | str, float]] = {}
    t0 = time.perf_counter()
    for i, bench in enumerate(chosen):
        cmd = [sys.executable, str(HERE / f"{bench}.py"), *flags, "--out", str(args.out)]
        timeout = None
        if args.total is not None:
            left = args.total - (time.perf_counter() - t0)
            share = WEIGHTS[bench] / sum(WEIGHTS[b] for b in chosen[i:])
            budget = max(20.0, left * share - 30)  # 30 s for the ceilings, the files, a last compile
            cmd += ["--budget", f"{budget:.0f}"]
            timeout = budget + 90
        print(f"\n===== {bench}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        try:
            rc: int | str = subprocess.run(cmd, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        status[bench] = (rc, time.perf_counter() - start)
        print(f"===== {bench}: exit {rc} after {status[bench][1]:.0f} s", flush=True)
    print("\n===== summary")
    summary.main(["--results", str(args.out), *(["--include-quick"] if args.quick else [])])
    print("\n" + "  ".join(f"{b}: {'ok' if rc == 0 else rc} ({t:.0f} s)" for b, (rc, t) in status.items()))
    return 0 if all(rc == 0 for rc, _ in status.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
