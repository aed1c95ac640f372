"""``python -m fastgpt prepare [CONFIG.yaml] [data.key=value ...]``: prepare a dataset without training.

It reads the same config and ``data.*`` overrides as ``train`` and calls the same ``prepare_data``
that ``train`` runs on first use, so a later ``train`` with these settings reuses the folder. A bar
(documents, tokens, tokens/s) shows on a terminal, else a plain progress line every
``fastgpt.data.prepare.LOG_SECONDS``; it ends with one summary line on stdout.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

from fastgpt.config import load_config
from fastgpt.data.prepare import prepare_data


def _peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastgpt prepare", description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="a YAML run config (its data section is used)")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. data.dataset=corpus.jsonl")
    args = parser.parse_args(argv)
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # no YAML file given: the first argument is an override
        config, overrides = None, [config, *overrides]
    cfg = load_config(config, overrides)
    start = time.monotonic()
    data = prepare_data(cfg.data, progress=True)
    seconds = time.monotonic() - start
    print(f"prepared {data.train_count + data.val_count:,} tokens ({data.train_count:,} train, {data.val_count:,} "
          f"val; 2 token files) in {data.dir}, {seconds:.1f} s, peak RSS {_peak_rss_mib():,.0f} MiB")
    return 0


if __name__ == "__main__":
    from fastgpt.__main__ import run

    run(main)
