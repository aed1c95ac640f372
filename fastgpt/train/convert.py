"""``python -m fastgpt convert --checkpoint DIR --out DIR2``

Writes a run's latest checkpoint (sharded by ``train.parallel=fsdp``, or not) as one folder holding
``model.safetensors``, ``config.yaml`` and the tokenizer, which ``fastgpt.load``,
``python -m fastgpt.generate`` and ``python -m fastgpt.eval`` read. It runs in one process, needs no
GPU, and holds the whole model in memory; the optimizer state is left out.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from fastgpt.checkpoint import load, read_config, resolve_checkpoint
from fastgpt.messages import ArgumentParser
from fastgpt.train.checkpoint import write_files


def to_single_file(src: str | Path, out: str | Path, allow_pickle: bool = False) -> Path:
    """Write the checkpoint ``src`` (a run's out_dir: its ``latest``) as one folder ``out`` that holds
    ``model.safetensors``, ``config.yaml`` and the tokenizer: weights for ``load``, not for resuming.

    DCP's ``.metadata`` is a pickle, which can run code: a sharded checkpoint is read only with
    ``allow_pickle`` (``--allow_pickle``: one's own run), and beside a model.safetensors never."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {str(out)!r} exists and is not empty; name a new folder")
    ckpt = resolve_checkpoint(src, "latest")
    model, tokenizer = load(ckpt, allow_pickle=allow_pickle)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        write_files(tmp, model, tokenizer, read_config(ckpt), None)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m fastgpt convert",
                       description="Write a (sharded) checkpoint as a single-file checkpoint folder.")
    p.add_argument("--checkpoint", required=True, help="a run's out_dir (its latest checkpoint) or a ckpt-* folder")
    p.add_argument("--out", required=True, help="the folder to create")
    p.add_argument("--allow_pickle", action="store_true",
                   help="read a checkpoint of DCP shards only, whose .metadata is a pickle that can run code: "
                        "only for a run of your own")
    args = p.parse_args(argv)
    out = to_single_file(args.checkpoint, args.out, allow_pickle=args.allow_pickle)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from fastgpt.__main__ import run

    run(main)
