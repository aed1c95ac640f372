"""``Checkpointer``: what a run saves and resumes, agreed on by every rank.

A checkpoint holds the weights, the optimizer, scheduler and GradScaler state, the training
loader's cursor, each rank's RNG state and the run's counters (``fastgpt.train.checkpoint`` writes
and reads the folders). Every rank takes part in a save, and all ranks fail together: one
all-reduce after each phase tells every rank whether some rank's write failed.
"""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import torch

from fastgpt.config import Config
from fastgpt.data import TokenLoader
from fastgpt.tokenizers import Tokenizer
from fastgpt.train import checkpoint as ckpt
from fastgpt.train.distributed import DistEnv, gather_objects, sum_across_ranks
from fastgpt.train.rng import rng_state, set_rng_state


class TrainingError(ValueError):
    """The run cannot go on (diverged, out of memory, a failed save); the message says what to change."""


class Checkpointer:
    """Saves ``ckpt-{iter}`` folders into ``cfg.train.out_dir`` and resumes from the latest one.

    ``sharded`` (``train.parallel=fsdp``): the weights and optimizer state go to DCP shards that
    every rank writes; otherwise rank 0 writes ``model.safetensors`` and ``state.pt`` holds the
    optimizer.
    """

    def __init__(self, cfg: Config, env: DistEnv, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, scaler: Any, loader: TokenLoader, tokenizer: Tokenizer, sharded: bool) -> None:
        self.cfg, self.env, self.out_dir = cfg, env, cfg.train.out_dir
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.loader, self.tokenizer, self.sharded = loader, tokenizer, sharded
        self.saved_iter: int | None = None  # the iteration saved last (None: nothing yet in this process)

    def state(self, counters: dict[str, Any]) -> dict[str, Any]:
        """What state.pt holds; every rank calls it (it gathers each rank's RNG state)."""
        rng = rng_state()  # plain lists and tensors: state.pt loads with weights_only=True
        state = {
            **counters, "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "loader": self.loader.state_dict(), "rng": gather_objects(rng, self.env),
        }
        if not self.sharded:  # a sharded checkpoint keeps it in its DCP shards
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def save(self, counters: dict[str, Any], best: bool) -> None:
        """Checkpoint ``counters["iter"]`` (once); raise TrainingError on every rank if any rank failed."""
        step = counters["iter"]
        if self.saved_iter == step:
            return
        state, error = self.state(counters), None
        staged = ckpt.staging_dir(self.out_dir, step) if self.sharded else None
        if staged is not None:  # every rank writes its shards into one staging folder
            if self.env.is_main:
                try:
                    shutil.rmtree(staged, ignore_errors=True)
                    staged.mkdir(parents=True)
                except OSError as exc:
                    error = exc
            if not sum_across_ranks([error is not None], self.env)[0]:
                try:
                    ckpt.save_shards(staged, self.model, self.optimizer, no_dist=not self.env.distributed)
                except OSError as exc:  # raised on every rank when any rank's write failed
                    error = exc
        if self.env.is_main and error is None:
            try:
                ckpt.save_checkpoint(self.out_dir, step, None if self.sharded else self.model,
                                     self.tokenizer, self.cfg.to_dict(), state, best=best, staged=staged)
            except OSError as exc:
                error = exc
        if sum_across_ranks([error is not None], self.env)[0]:
            if staged is not None and self.env.is_main:
                shutil.rmtree(staged, ignore_errors=True)
            reason = ("it failed on another rank" if error is None
                      else getattr(error, "strerror", None) or (str(error).strip() or type(error).__name__)[:200])
            raise TrainingError(f"could not save a checkpoint in {self.out_dir!r} ({reason}); "
                                "the previous checkpoint is kept")
        self.saved_iter = step

    def resume(self, which: str = "latest") -> tuple[str, dict[str, Any]]:
        """Load the ``which`` checkpoint (latest, best, or ckpt-NNNNNN) into the model, optimizer,
        scheduler, scaler, loader and RNGs; return its path and counters (``iter``, ``best_val``,
        ``nonfinite``)."""
        path = ckpt.resolve_checkpoint(self.out_dir, which)
        saved, now = ckpt.read_config(path)["model"], self.cfg.to_dict()["model"]
        if saved != now:
            diff = {k: (v, now.get(k)) for k, v in saved.items() if now.get(k) != v}
            raise ckpt.CheckpointError(f"cannot resume {str(path)!r}: its model config differs "
                                       f"(saved, now): {diff}")
        state = ckpt.load_state(path)
        fsdp = self.sharded and self.env.distributed
        if fsdp and not ckpt.is_sharded(path):
            raise ckpt.CheckpointError(f"cannot resume {str(path)!r} with train.parallel=fsdp: it is a "
                                       "single-file (ddp) checkpoint; resume it with train.parallel=ddp")
        try:
            if ckpt.is_sharded(path):  # DCP reshards: any number of ranks, FSDP or not
                ckpt.load_shards(path, self.model, self.optimizer, no_dist=not self.env.distributed)
            else:
                ckpt.load_weights(self.model, path)
                self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.loader.load_state_dict(state["loader"])
            counters = {"iter": state["iter"], "best_val": state["best_val"], "nonfinite": state["nonfinite"]}
            if not all(isinstance(counters[k], int) and counters[k] >= 0 for k in ("iter", "nonfinite")) or \
                    not isinstance(counters["best_val"], float | int):
                raise TypeError(f"counters of the wrong types or signs: {counters}")
            self._restore_rng(state["rng"], counters["iter"])
        except (KeyError, TypeError, IndexError, ValueError, RuntimeError, AttributeError) as exc:  # damaged
            raise ckpt.CheckpointError(f"checkpoint {str(path)!r} has a state.pt this version cannot resume "
                                       f"({type(exc).__name__}: {exc})") from None
        self.saved_iter = counters["iter"]
        return str(path), counters

    def _restore_rng(self, saved: list[dict[str, Any]], step: int) -> None:
        """Each rank's saved RNG state; on another number of ranks, a fresh seed per (seed, rank, iter)."""
        if len(saved) != self.env.world_size:
            seq = np.random.SeedSequence([self.cfg.train.seed, self.env.rank, step])
            torch.manual_seed(int(seq.generate_state(1)[0]))
            return
        set_rng_state(saved[self.env.rank])
