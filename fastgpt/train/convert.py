"""``python -m fastgpt convert --checkpoint DIR --out DIR2``

Writes a run's latest checkpoint (sharded by ``train.parallel=fsdp``, or not) as one folder holding
``model.safetensors``, ``config.yaml`` and the tokenizer, which ``fastgpt.load``,
``python -m fastgpt.generate`` and ``python -m fastgpt.eval`` read. It runs in one process, needs no
GPU, and holds the whole model in memory; the optimizer state is left out.
"""

from __future__ import annotations

import argparse

from fastgpt.train.checkpoint import to_single_file


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastgpt convert",
                                description="Write a (sharded) checkpoint as a single-file checkpoint folder.")
    p.add_argument("--checkpoint", required=True, help="a run's out_dir (its latest checkpoint) or a ckpt-* folder")
    p.add_argument("--out", required=True, help="the folder to create")
    args = p.parse_args(argv)
    out = to_single_file(args.checkpoint, args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from fastgpt.__main__ import run

    run(main)
