"""python -m fastgpt.train [--config FILE | --recipe cpu|gpu] [--resume[=WHICH]] [--print-config] [key=value ...]

Prepares the data, builds the model, and trains it (fastgpt.train.trainer). Ctrl-C or SIGTERM saves a
checkpoint and exits; --resume continues from it with the run's own saved config, which overrides may
change where fastgpt.config.RESUME_CHANGEABLE allows (how long, how often, the learning-rate schedule).
"""

from __future__ import annotations

import argparse
import errno
import pathlib
import re
import sys
from dataclasses import replace
from typing import Any

import torch
import yaml

from fastgpt.checkpoint import CheckpointError, read_config, resolve_checkpoint
from fastgpt.config import (
    Config,
    TrainConfig,
    apply_overrides,
    changeable_on_resume,
    config_reference,
    load_config,
    read_yaml,
    resume_config,
)
from fastgpt.messages import ArgumentParser, cut_path
from fastgpt.run_dir import POINTERS, RunLock, checkpoints, holds_run, unsaved_run
from fastgpt.train.checkpointer import TrainingError
from fastgpt.train.distributed import collective_failure, setup, teardown
from fastgpt.train.recipes import default_recipe
from fastgpt.train.trainer import Trainer

WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)  # the disk, not the user
# torch's CPU allocator refusing a tensor (c10 alloc_cpu.cpp); any other RuntimeError is not ours to name
CPU_ALLOC_FAILED = re.compile(r"DefaultCPUAllocator: (can't allocate memory|not enough memory)")


def out_of_memory(cfg: Config, what: str) -> str:
    """The error line for a training step that did not fit in host memory (``what``: how much it asked for)."""
    return (f"the batch did not fit in memory ({what}); use a smaller train.batch_size (now {cfg.train.batch_size}) "
            f"and more train.grad_accum_steps, a smaller model.block_size (now {cfg.model.block_size}), or a smaller "
            "model (model.n_embd, model.n_layer)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _refuse_overwrite(cfg: Config, resume: str | None) -> None:
    """A new run into a folder holding a run must say so (train.overwrite=true); nothing is deleted here."""
    out = pathlib.Path(cfg.train.out_dir)
    if resume is None and not cfg.train.overwrite and holds_run(out):
        if unsaved_run(out):
            raise ValueError(f"train.out_dir={cut_path(out)} holds a run with no checkpoint (stopped before its first "
                             "save): --resume starts it again with its saved config, train.overwrite=true replaces it "
                             "with this one, or use another train.out_dir")
        raise ValueError(f"train.out_dir={cut_path(out)} holds a run (checkpoints, metrics or config); continue it "
                         "with --resume, use another train.out_dir, or replace it with train.overwrite=true")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m fastgpt.train", description=__doc__.split("\n\n")[1],
                       epilog=f"--resume may change {changeable_on_resume()}\n\n"
                              "config keys (section.key=default):\n" + config_reference(),
                       formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--config", help="a YAML config (default: a built-in recipe, see --recipe)")
    p.add_argument("--recipe", choices=("cpu", "gpu"),
                   help="the built-in Shakespeare recipe used without --config (default: gpu when CUDA is available)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="WHICH",
                   help="continue the run in train.out_dir, with its own saved config, from its latest checkpoint; "
                        "--resume=best, or a checkpoint of the run by name (--resume=ckpt-000500)")
    p.add_argument("--allow_pickle", action="store_true",
                   help="--resume a checkpoint of DCP shards only (train.parallel=fsdp), whose .metadata is a "
                        "pickle that can run code: only for a run of your own")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML and exit, training nothing and writing nowhere")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = list(sys.argv[1:] if argv is None else argv)
    # a bare --resume takes no WHICH when an override or a flag follows (--resume train.out_dir=X)
    args = ["--resume=latest" if a == "--resume" and (i + 1 == len(args) or "=" in args[i + 1]
                                                      or args[i + 1].startswith("-")) else a
            for i, a in enumerate(args)]
    return p.parse_intermixed_args(args)  # overrides before and after the flags


def _resumed_config(args: argparse.Namespace) -> tuple[Config, str | None, list[str]]:
    """The config of the run ``--resume`` continues, the checkpoint's name, and what the command line
    changed in it. The run folder is train.out_dir as given, else --config's, else the recipe's. A run
    stopped before its first checkpoint (``run_dir.unsaved_run``) starts again: its saved config, no
    checkpoint (None), train.overwrite=true for the config.yaml and metrics.jsonl it replaces."""
    given: dict[str, Any] = apply_overrides(read_yaml(pathlib.Path(args.config)) if args.config else {},
                                            args.overrides)
    train = given.get("train")
    if train is not None and not isinstance(train, dict):
        raise ValueError(f"config section 'train' must be a mapping of keys to values, got {type(train).__name__}")
    train = given["train"] = dict(train or {})
    fallback = TrainConfig.out_dir if args.config else default_recipe(args.recipe)["train"]["out_dir"]
    out = pathlib.Path(str(train.setdefault("out_dir", fallback)))
    if not out.is_dir():
        raise ValueError(f"train.out_dir={cut_path(out)} does not exist: there is no run to --resume")
    try:
        ckpt = resolve_checkpoint(out, args.resume)
    except CheckpointError:
        if checkpoints(out):
            raise
        if unsaved_run(out) and args.resume in POINTERS:
            cfg, changes = resume_config(read_config(out), given, f"the config of {cut_path(out)}")
            cfg.train = replace(cfg.train, overwrite=True)
            return cfg, None, [*changes, f"train.out_dir={cut_path(out)} starts fresh with its saved config: no "
                                         "checkpoint was saved before the run stopped"]
        raise ValueError(f"train.out_dir={cut_path(out)} holds no checkpoint"
                         f"{'' if any(out.iterdir()) else ' (it is empty)'}: there is no run to --resume") from None
    cfg, changes = resume_config(read_config(ckpt), given, f"the config of {str(ckpt)!r}")
    return cfg, ckpt.name, changes


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.config and args.recipe:
        raise ValueError("give --config FILE or --recipe NAME, not both")
    if args.resume is None:  # no --config: a built-in recipe (fastgpt.train.recipes)
        cfg = load_config(args.config, args.overrides, base=None if args.config else default_recipe(args.recipe))
        changes: list[str] = []
    else:
        cfg, args.resume, changes = _resumed_config(args)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    env = setup(cfg.train.device)
    for change in changes if env.is_main else ():
        print(f"resume: {change}", file=sys.stderr, flush=True)
    lock = RunLock(pathlib.Path(cfg.train.out_dir)) if env.is_main else None
    try:
        if lock is not None:
            lock.acquire()  # a second run into this out_dir refuses here, naming the first one's pid
            _refuse_overwrite(cfg, args.resume)
        trainer = Trainer(cfg, env, resume=args.resume, allow_pickle=args.allow_pickle)
        trainer.run()
        env.barrier()  # leave the process group together: a rank tearing down gloo early can abort the other
    except torch.OutOfMemoryError:
        raise TrainingError(f"CUDA ran out of memory; use a smaller train.batch_size (now {cfg.train.batch_size}) "
                            "and more train.grad_accum_steps, or a smaller model") from None
    except MemoryError as exc:  # numpy's "Unable to allocate 3.2 GiB for an array ...", Python's own
        raise TrainingError(out_of_memory(cfg, _first_line(exc))) from None
    except RuntimeError as exc:
        message = collective_failure(exc, env)
        if message is None and CPU_ALLOC_FAILED.search(str(exc)):
            size = re.search(r"allocate (\d+) bytes", str(exc))
            message = out_of_memory(cfg, f"the CPU allocator refused a tensor of {int(size[1]) / 2**30:,.1f} GiB"
                                    if size else "the CPU allocator refused a tensor")
        if message is None:
            raise
        raise TrainingError(message) from None
    except OSError as exc:
        if exc.errno not in WRITE_FAILURES:
            raise
        raise TrainingError(f"cannot write {str(exc.filename or cfg.train.out_dir)!r} ({exc.strerror}); "
                            "the checkpoints already saved are kept") from None
    finally:
        if lock is not None:
            lock.release()
        teardown()
    return 0

