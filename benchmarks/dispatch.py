"""What ``backend="auto"`` costs per call in eager mode: its choice against calling torch's kernel directly.

    python benchmarks/dispatch.py [--quick] [--out DIR] [--calls N]

For ``ops.rms_norm`` and ``ops.flash_attention`` on small inputs (where a call's Python work is
not hidden behind the kernel), times three ways of running the same torch kernel, alternating
between them in one process: ``direct`` (``fastgpt.ops.torch_path``, no dispatch: the baseline),
``torch`` (``backend="torch"``) and ``auto`` (``backend="auto"`` after its first call, which
checks, measures and caches). On CPU, ``FASTGPT_AUTO_SLOW=1`` is set so that auto has kernel
candidates and runs its support checks, as it does on a GPU; torch wins there, so every provider
runs the same kernel and the difference is dispatch alone. Reports microseconds per call (median
of 5 rounds of ``--calls`` calls) and each provider's time over ``direct``'s. Writes
``dispatch-<device>-<date>.json`` under ``--out``. About 10 s on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import common
import torch


def per_call_us(fns: dict[str, Callable[[], object]], calls: int, sync: Callable[[], None]) -> dict[str, float]:
    """Median over 5 rounds of microseconds per call, the providers alternating round by round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(5):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: statistics.median(t) for name, t in times.items()}


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def main() -> None:
    args = common.parse_args(__doc__, extra=lambda p: p.add_argument("--calls", type=_positive, default=200,
                                                                     help="calls per round (default 200)"))
    args.quick = args.quick or not torch.cuda.is_available()  # this benchmark's sizes are small everywhere
    env = common.init_runtime(args)
    if not env.cuda:
        os.environ["FASTGPT_AUTO_SLOW"] = "1"
    from fastgpt import ops
    from fastgpt.ops import torch_path

    dev = env.device
    dtype = torch.bfloat16 if env.cuda else torch.float32
    x, w = torch.randn(8, 128, device=dev, dtype=dtype), torch.ones(128, device=dev, dtype=dtype)
    q = torch.randn(1, 4, 32, 32, device=dev, dtype=dtype)
    cases = {
        "rms_norm (8 x 128)": {
            "direct": lambda: torch_path.rms_norm(x, w, 1e-6),
            "torch": lambda: ops.rms_norm(x, w, 1e-6, backend="torch"),
            "auto": lambda: ops.rms_norm(x, w, 1e-6, backend="auto"),
        },
        "flash_attention (1 x 4 x 32 x 32)": {
            "direct": lambda: torch_path.flash_attention(q, q, q, True),
            "torch": lambda: ops.flash_attention(q, q, q, True, backend="torch"),
            "auto": lambda: ops.flash_attention(q, q, q, True, backend="auto"),
        },
    }
    sync = (lambda: torch.cuda.synchronize(dev)) if env.cuda else (lambda: None)
    rows = []
    for case, fns in cases.items():
        us = per_call_us(fns, args.calls, sync)
        for provider, value in us.items():
            rows.append(
                {
                    "op": case,
                    "provider": provider,
                    "us_per_call": value,
                    "over_direct_us": value - us["direct"],
                    "vs_direct": value / us["direct"],
                }
            )
    common.print_table(
        rows,
        [
            ("op", "op"),
            ("provider", "provider"),
            ("us_per_call", "us/call"),
            ("over_direct_us", "+us vs direct"),
            ("vs_direct", "time / direct"),
        ],
    )
    print("auto's choices: " + "; ".join(f"{k} -> {v}" for k, v in ops.autotune_choices().items()))
    env.out.mkdir(parents=True, exist_ok=True)
    stem = f"dispatch-{env.device.type}-{env.info['date'][:19].replace(':', '')}"
    path = env.out / f"{stem}.json"
    path.write_text(
        json.dumps(
            {"bench": "dispatch", **env.info, "calls": args.calls, "rows": rows, "choices": ops.autotune_choices()},
            indent=1,
            default=str,
        )
        + "\n"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
