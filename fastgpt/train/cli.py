"""``python -m fastgpt.train [--config FILE | --recipe cpu|gpu] [--resume[=WHICH]] [section.key=value ...]``

Prepares the data, builds the model, and trains it (``fastgpt.train.trainer``). Ctrl-C or SIGTERM saves a
checkpoint and exits; ``--resume`` continues from it.
"""

from __future__ import annotations

import argparse
import errno
import pathlib

import torch

from fastgpt.config import Config, load_config
from fastgpt.train.checkpointer import TrainingError
from fastgpt.train.distributed import collective_failure, setup, teardown
from fastgpt.train.recipes import default_recipe
from fastgpt.train.run_dir import RunLock, holds_run
from fastgpt.train.trainer import Trainer

WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)  # the disk, not the user


def _refuse_overwrite(cfg: Config, resume: str | None) -> None:
    """A new run into a folder holding a run must say so (train.overwrite=true); nothing is deleted here."""
    out = pathlib.Path(cfg.train.out_dir)
    if resume is None and not cfg.train.overwrite and holds_run(out):
        raise ValueError(f"train.out_dir={str(out)!r} holds a run (checkpoints, metrics or config); continue it "
                         "with --resume, use another train.out_dir, or replace it with train.overwrite=true")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastgpt.train", description=__doc__.split("\n\n")[1])
    p.add_argument("--config", help="a YAML config (default: a built-in recipe, see --recipe)")
    p.add_argument("--recipe", choices=("cpu", "gpu"),
                   help="the built-in Shakespeare recipe used without --config (default: gpu when CUDA is available)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="WHICH",
                   help="continue the run in train.out_dir from its latest checkpoint; --resume=best, or a "
                        "checkpoint of the run by name (--resume=ckpt-000500)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = p.parse_args(argv)
    if args.resume is not None and "=" in args.resume:  # ``--resume train.x=1``: an override, not a name
        args.overrides.insert(0, args.resume)
        args.resume = "latest"
    if args.config and args.recipe:
        raise ValueError("give --config FILE or --recipe NAME, not both")
    # no --config: a built-in recipe (fastgpt.train.recipes)
    cfg = load_config(args.config, args.overrides, base=None if args.config else default_recipe(args.recipe))
    env = setup(cfg.train.device)
    lock = RunLock(pathlib.Path(cfg.train.out_dir)) if env.is_main else None
    try:
        if args.resume is not None and not pathlib.Path(cfg.train.out_dir).is_dir():  # before the lock creates it
            raise ValueError(f"train.out_dir={cfg.train.out_dir!r} does not exist: there is no run to --resume")
        if lock is not None:
            lock.acquire()  # a second run into this out_dir refuses here, naming the first one's pid
            _refuse_overwrite(cfg, args.resume)
        trainer = Trainer(cfg, env, resume=args.resume)
        trainer.run()
        env.barrier()  # leave the process group together: a rank tearing down gloo early can abort the other
    except torch.OutOfMemoryError:
        raise TrainingError(f"CUDA ran out of memory; use a smaller train.batch_size (now {cfg.train.batch_size}) "
                            "and more train.grad_accum_steps, or a smaller model") from None
    except RuntimeError as exc:
        message = collective_failure(exc, env)
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

