"""``Checkpointer``: what a run saves and resumes, agreed on by every rank.

A checkpoint holds the weights, the optimizer, scheduler and GradScaler state, the training
loader's cursor, each rank's RNG state and the run's counters (``fastgpt.train.checkpoint`` writes
and reads the folders). Every rank takes part in a save, and all ranks fail together: one
all-reduce after each phase tells every rank whether some rank's write failed.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastgpt import checkpoint as ckpt
from fastgpt import run_dir
from fastgpt.config import RESUME_CHANGEABLE, Config
from fastgpt.data import TokenLoader
from fastgpt.tokenizers import Tokenizer
from fastgpt.train import checkpoint as saving
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
                 scheduler: Any, scaler: Any, loader: TokenLoader, tokenizer: Tokenizer, sharded: bool,
                 data_hash: str | None = None) -> None:
        """``data_hash``: the prepared data's (its manifest's ``hash``), saved to tell a resumed run whether
        the dataset changed since."""
        self.cfg, self.env, self.out_dir = cfg, env, cfg.train.out_dir
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.loader, self.tokenizer, self.sharded, self.data_hash = loader, tokenizer, sharded, data_hash
        self.saved_iter: int | None = None  # the iteration saved last (None: nothing yet in this process)

    def state(self, counters: dict[str, Any]) -> dict[str, Any]:
        """What state.pt holds; every rank calls it (it gathers each rank's RNG state)."""
        rng = rng_state()  # plain lists and tensors: state.pt loads with weights_only=True
        state = {
            **counters, "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "loader": self.loader.state_dict(), "rng": gather_objects(rng, self.env), "data_hash": self.data_hash,
        }
        if not self.sharded:  # a sharded checkpoint keeps it in its DCP shards
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def save(self, counters: dict[str, Any], best: bool) -> None:
        """Checkpoint ``counters["iter"]`` (once); raise TrainingError on every rank if any rank failed, or
        if the weights blew up (``weights_blown_up``): such a step is never saved, and so never ``latest``."""
        step = counters["iter"]
        if self.saved_iter == step:
            return
        if self.weights_blown_up():
            raise TrainingError(f"the weights after iteration {step} are not finite (or past ~1e19, where "
                                f"their norm overflows), so it is not saved; the run diverged: {self.recovery()}")
        state, error = self.state(counters), None
        staged = saving.staging_dir(self.out_dir, step) if self.sharded else None
        if self.env.is_main:
            try:  # noted as the run's before any of its files exist: prune deletes only what the run saved
                run_dir.record(Path(self.out_dir), step)
                if staged is not None:  # every rank writes its shards into one staging folder
                    shutil.rmtree(staged, ignore_errors=True)
                    staged.mkdir(parents=True)
            except OSError as exc:
                error = exc
        if staged is not None and not sum_across_ranks([error is not None], self.env)[0]:
            try:
                saving.save_shards(staged, self.model, self.optimizer, no_dist=not self.env.distributed)
            except OSError as exc:  # raised on every rank when any rank's write failed
                error = exc
        if self.env.is_main and error is None:
            try:
                saving.save_checkpoint(self.out_dir, step, None if self.sharded else self.model,
                                     self.tokenizer, self.cfg.to_dict(), state, best=best, staged=staged,
                                     keep=self.cfg.train.keep_checkpoints)
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

    def weights_blown_up(self) -> bool:
        """True on every rank when some rank's parameters hold a NaN, an inf, or values so large (past ~1e19)
        that a tensor's norm overflows: what one update of a diverging run leaves, while its loss was still
        finite. One fused norm over the parameters (this rank's shards under FSDP), one all-reduce."""
        params = [p.to_local() if hasattr(p, "to_local") else p for p in self.model.parameters()]
        norms = torch._foreach_norm([p.detach() for p in params if p.numel()])
        bad = (~torch.isfinite(torch.stack([n.float() for n in norms]))).any() if norms else 0.0
        return sum_across_ranks([bad], self.env)[0] > 0

    def recovery(self) -> str:
        """What to do after a divergence: resume the last checkpoint this run saved or resumed from (whose
        weights were finite) with a lower learning rate; with none, start again with one."""
        lr = self.cfg.optim.lr
        if self.saved_iter is None:
            return f"nothing was saved; try a lower optim.lr (now {lr:g}) or more warmup"
        name = f"ckpt-{self.saved_iter:06d}"
        muon = f" optim.muon_lr={self.cfg.optim.muon_lr / 10:g}" if self.cfg.optim.name == "muon" else ""
        return (f"continue from {name}, its last checkpoint with finite weights, with a lower optim.lr (now "
                f"{lr:g}) or more optim.warmup_iters: python -m fastgpt.train --resume={name} "
                f"train.out_dir={shlex.quote(str(self.out_dir))} optim.lr={lr / 10:g}{muon}")

    def resume(self, which: str = "latest", allow_pickle: bool = False) -> tuple[str, dict[str, Any], str | None]:
        """Load the ``which`` checkpoint (latest, best, or ckpt-NNNNNN) into the model, optimizer,
        scheduler, scaler, loader and RNGs; return its path, counters (``iter``, ``best_val``,
        ``nonfinite``) and a warning when the data is not what the checkpoint trained on (else None).
        A checkpoint of DCP shards only is read with ``allow_pickle`` alone (``ckpt.check_shards``)."""
        path = ckpt.resolve_checkpoint(self.out_dir, which)
        # going back to a checkpoint before latest abandons the later steps; latest itself is where the
        # run left off, even when a save killed before its pointer left a complete later folder
        at_latest = path == ckpt.resolve_checkpoint(self.out_dir, "latest")
        later = [] if at_latest else run_dir.later_checkpoints(self.out_dir, path)
        if later and not self.cfg.train.overwrite:
            raise ckpt.CheckpointError(
                f"--resume={which} continues from {path.name}, but the run has later checkpoints "
                f"({', '.join(c.name for c in later)}) that its next saves would replace; add "
                "train.overwrite=true to go back to it, or resume the latest")
        saved, now = ckpt.read_config(path)["model"], self.cfg.to_dict()["model"]
        diff = {k: (v, now.get(k)) for k, v in saved.items()
                if now.get(k) != v and k not in RESUME_CHANGEABLE["model"]}  # the kernels compute the same model
        if diff:
            raise ckpt.CheckpointError(f"cannot resume {str(path)!r}: its model config differs "
                                       f"(saved, now): {diff}")
        state = saving.load_state(path)
        fsdp = self.sharded and self.env.distributed
        sharded = ckpt.is_sharded(path)  # decided once: a file renamed later cannot switch the reader
        if fsdp and not sharded:
            raise ckpt.CheckpointError(f"cannot resume {str(path)!r} with train.parallel=fsdp: it is a "
                                       "single-file (ddp) checkpoint; resume it with train.parallel=ddp")
        if sharded:
            ckpt.check_shards(path, allow_pickle, ckpt.RESUME_HINT)  # before the optimizer state is read
        try:
            if sharded:  # DCP reshards: any number of ranks, FSDP or not
                saving.load_shards(path, self.model, self.optimizer, no_dist=not self.env.distributed,
                                 allow_pickle=allow_pickle)
            else:
                ckpt.load_weights(self.model, path)
                self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self._continue_schedule()
            self.scaler.load_state_dict(state["scaler"])
            self.loader.load_state_dict(state["loader"])
            counters = {"iter": state["iter"], "best_val": state["best_val"], "nonfinite": state["nonfinite"]}
            if not all(isinstance(counters[k], int) and counters[k] >= 0 for k in ("iter", "nonfinite")) or \
                    not isinstance(counters["best_val"], float | int):
                raise TypeError(f"counters of the wrong types or signs: {counters}")
            self._restore_rng(state["rng"], counters["iter"])
        except ckpt.CheckpointError:  # the weights' own line (a LoRA run's base changed since), not state.pt's
            raise
        except (KeyError, TypeError, IndexError, ValueError, RuntimeError, AttributeError) as exc:  # damaged
            raise ckpt.CheckpointError(f"checkpoint {str(path)!r} has a state.pt this version cannot resume "
                                       f"({type(exc).__name__}: {exc})") from None
        if self.weights_blown_up():  # a checkpoint this version never saves, written by another or edited
            raise ckpt.CheckpointError(f"cannot resume {str(path)!r}: its weights are not finite (or past ~1e19); "
                                       "the run diverged before this save: resume one of its earlier checkpoints "
                                       "with --resume=ckpt-NNNNNN")
        self.saved_iter = counters["iter"]
        if later:
            self.env.barrier()  # every rank has read ``path`` through the old pointers
            if self.env.is_main:
                run_dir.rewind(self.out_dir, path)
        saved_hash = state.get("data_hash")  # absent from checkpoints older than the field
        warning = None
        if saved_hash is not None and self.data_hash is not None and saved_hash != self.data_hash:
            warning = (f"warning: the dataset's files changed since {path.name} (data {saved_hash}, now "
                       f"{self.data_hash}): the run continues on the new data, no longer exactly as it would have gone")
        return str(path), counters, warning

    def _continue_schedule(self) -> None:
        """The learning rate from here on follows this run's optim.* (``--resume`` may change optim.lr and
        the schedule): the saved one set the base rate, and the rate of the next step, to its own."""
        sched = self.scheduler
        sched.base_lrs = [self.cfg.optim.lr] * len(sched.base_lrs)
        for group, factor in zip(self.optimizer.param_groups, sched.lr_lambdas, strict=True):
            group["initial_lr"] = self.cfg.optim.lr
            group["lr"] = self.cfg.optim.lr * factor(sched.last_epoch)

    def _restore_rng(self, saved: list[dict[str, Any]], step: int) -> None:
        """Each rank's saved RNG state; on another number of ranks, a fresh seed per (seed, rank, iter)."""
        if len(saved) != self.env.world_size:
            seq = np.random.SeedSequence([self.cfg.train.seed, self.env.rank, step])
            torch.manual_seed(int(seq.generate_state(1)[0]))
            return
        set_rng_state(saved[self.env.rank])
