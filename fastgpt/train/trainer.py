"""The training loop: ``Trainer`` prepares the data, builds the model, and trains it.

AdamW with warmup and a decay schedule, gradient accumulation and clipping, mixed precision, periodic
evaluation, ``metrics.jsonl`` and ``loss.png``, atomic checkpoints (latest and best), exact resume, and a
text sample at the end. Runs on one CPU or GPU, or several processes under ``torchrun``: DDP, or FSDP2
with sharded (DCP) checkpoints (``train.parallel``). Every rank takes its slice of one global batch, so N
ranks train like one process with N times the batch. A signal (Ctrl-C, SIGTERM) saves a checkpoint and
exits. The command line is ``fastgpt.train.cli``.
"""

from __future__ import annotations

import contextlib
import math
import pathlib
import signal
import sys
import time
from dataclasses import replace
from typing import Any

import torch
from tqdm import tqdm

from fastgpt.config import Config
from fastgpt.data import PreparedData, prepare_data
from fastgpt.data.sft import cut_note
from fastgpt.device import choice_line
from fastgpt.eval.benchmarks import check_benchmarks, load_benchmarks, score_benchmarks
from fastgpt.model import GPT
from fastgpt.ops import autotune_summary
from fastgpt.preflight import check_backends, check_memory
from fastgpt.progress import progress_bar
from fastgpt.train.checkpointer import Checkpointer, TrainingError
from fastgpt.train.distributed import DistEnv, shard_fsdp, sum_across_ranks, wrap_ddp
from fastgpt.train.freeze import prepare_model
from fastgpt.train.init_from import initial_weights
from fastgpt.train.metrics import MetricsLog, flops_utilization, open_wandb, step_summary
from fastgpt.train.objectives import Objective, estimate_losses, model_vocab_size
from fastgpt.train.optimizer import build_grad_scaler, build_optimizer
from fastgpt.train.precision import resolve_auto_dtype
from fastgpt.train.schedule import make_scheduler

MAX_NONFINITE_IN_A_ROW = 5


class Trainer:
    """One training run: set-up in ``__init__``, then ``run()``; ``train_step`` is one optimizer step."""

    def __init__(self, cfg: Config, env: DistEnv, resume: str | None = None, allow_pickle: bool = False) -> None:
        """``resume``: None for a new run, else the checkpoint to continue (latest, best, ckpt-NNNNNN);
        ``allow_pickle``: it may be DCP shards only, whose pickled .metadata can run code."""
        self.cfg, self.env = cfg, env
        self.out_dir = cfg.train.out_dir
        check_backends(cfg.model, env.device)  # before preparing data: an explicit backend that cannot run here
        self.data = self._prepare_data()
        tok = self.data.tokenizer
        vocab = model_vocab_size(tok, cfg.train.objective)  # the tokenizer decides the vocabulary
        if cfg.model.vocab_size != vocab:
            self._say(f"model.vocab_size={cfg.model.vocab_size} set to {vocab}, the vocabulary of "
                      f"data.tokenizer={cfg.data.tokenizer!r}")
        self.cfg.model = replace(cfg.model, vocab_size=vocab)
        init = initial_weights(self.cfg, tok)  # hf:PATH or DIR: the source's model config and weights
        self.cfg.model = init.config if init is not None else self.cfg.model
        self._check_data_size()
        check_memory(self.cfg, env.device)  # the real vocabulary is known now; nothing is allocated yet
        if cfg.data.mode == "sft" and (note := cut_note(self.data.doc_offsets("train"), self.cfg.model.block_size)):
            self._say(note)
        self.sharded = cfg.train.parallel == "fsdp"  # DCP checkpoints; FSDP2 shards when distributed
        self.fsdp = self.sharded and env.distributed
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank (FSDP shards them in place)
        with torch.device(env.device):
            self.model = GPT(self.cfg.model)
        if init is not None:
            init.load_into(self.model)
        prepare_model(self.model, cfg.train)  # train.freeze, LoRA adapters: before the optimizer sees them
        self.objective = Objective(cfg.train, tok)
        torch.manual_seed(cfg.train.seed + env.rank)  # but different dropout masks
        self._say(choice_line(cfg.train.device, env.device))
        if cfg.train.dtype == "auto":  # measured here and saved resolved: a resumed run keeps the choice
            self._say(resolve_auto_dtype(self.cfg, self.model, env, fsdp=self.fsdp))
        else:
            self._say(f"train.dtype={cfg.train.dtype}")
        dtype = getattr(torch, self.cfg.train.dtype)
        if self.fsdp:
            m = self.cfg.model  # blocks sharing a module cannot be sharded one by one: then only the root is
            tied = m.tie_ffn_across_layers or m.tie_attn_proj_across_layers
            shard_fsdp(self.model, [] if tied else list(self.model.blocks), dtype, env)
        self.optimizer = build_optimizer(self.model, cfg.optim, env.device, fsdp=self.fsdp, say=self._say,
                                         ddp=env.distributed and not self.fsdp)
        self.total_iters = self._total_iters()
        self.scheduler = make_scheduler(self.optimizer, cfg.optim, self.total_iters)
        # FSDP's mixed-precision policy casts the weights itself; elsewhere autocast does
        self.autocast = (torch.autocast(env.device.type, dtype=dtype) if dtype != torch.float32 and not self.fsdp
                         else contextlib.nullcontext())
        self.scaler = build_grad_scaler(env.device, dtype, fsdp=self.fsdp)
        loader_args = dict(device=env.device, rank=env.rank, world_size=env.world_size)
        T, B = self.cfg.model.block_size, cfg.train.batch_size
        self.train_loader = self.data.loader("train", T, B, cfg.data, **loader_args)
        if cfg.data.mode == "sft":  # evaluated on its examples' responses
            self.eval_loaders = {split: self.data.loader(split, T, B, cfg.data, **loader_args) for split in
                                 ("train", "val") if self.data.epoch_rows(split, T, "sft") >= B * env.world_size}
        else:  # random windows; a split shorter than block_size + 1 on windows of what it has (eval_block_size)
            self.eval_loaders = {split: self.data.loader(split, W, B, replace(cfg.data, mode="random"), **loader_args)
                                 for split in ("train", "val") if (W := self.data.eval_block_size(split, T))}
        self.iter, self.best_val, self.nonfinite, self.nonfinite_in_a_row = 0, math.inf, 0, 0
        self.metrics = MetricsLog(self.out_dir, open_wandb(cfg.logging, self.cfg.to_dict())) if env.is_main else None
        check_benchmarks(cfg.eval)
        # loaded on the ranks that score them: rank 0, and every rank under FSDP, whose forward needs them all
        self.benchmarks = (load_benchmarks(cfg.eval, tok, cfg.data.tokenizer, self._say)
                           if env.is_main or self.fsdp else {})
        self.checkpointer = Checkpointer(self.cfg, env, self.model, self.optimizer, self.scheduler, self.scaler,
                                         self.train_loader, tok, self.sharded, self.data.manifest["hash"])
        self.resumed = resume is not None
        # a fresh run touches nothing in out_dir until its first step went through (``_start``)
        self.started, self.pending = False, []
        if resume is not None:
            self._resume(resume, allow_pickle)
        self.runner = self._wrap(self.model)
        self.stop_signal: int | None = None  # set by the signal handler on this rank
        self.stopping = False  # some rank got a signal: every rank saves and exits after this step

    # ------------------------------------------------------------------ set-up steps
    def _prepare_data(self) -> PreparedData:
        # rank 0 prepares (or reuses) the data; then the first rank of each other node, whose
        # data.cache_dir may be a disk of its own; then the others reuse it. Meanwhile the others
        # wait without the collective timeout: preparing a large dataset may take hours.
        if self.env.distributed:
            self._say("data: prepared by rank 0 (the other ranks wait for it without FASTGPT_DIST_TIMEOUT)")
        data = prepare_data(self.cfg.data, progress=True) if self.env.is_main else None
        self.env.wait_for_preparation()
        if data is None and self.env.local_rank == 0:
            data = prepare_data(self.cfg.data, progress=False)
        self.env.wait_for_preparation()
        return data or prepare_data(self.cfg.data, progress=False)

    def _check_data_size(self) -> None:
        need = self.cfg.model.block_size + 1
        if self.data.train_count < need and self.cfg.data.mode != "sft":  # sft: rows are padded examples
            raise ValueError(f"dataset {self.cfg.data.dataset!r} has {self.data.train_count} training tokens, "
                             f"fewer than block_size + 1 = {need}; use more data or a smaller model.block_size")

    def _total_iters(self) -> int:
        t = self.cfg.train
        if t.epochs is None:
            return t.max_iters
        rows = self.data.epoch_rows("train", self.cfg.model.block_size, self.cfg.data.mode)
        return max(1, math.ceil(t.epochs * rows / (t.batch_size * t.grad_accum_steps * self.env.world_size)))

    def _wrap(self, model: GPT) -> torch.nn.Module:
        if self.cfg.train.compile:
            model = torch.compile(model)
        if self.env.distributed and not self.fsdp:
            model = wrap_ddp(model, self.env)
        return model

    # ---------------------------------------------------------------- checkpoints
    def save(self, best: bool = False) -> None:
        """Checkpoint this iteration (once); every rank takes part, and all fail together."""
        # a fresh run's first checkpoint is its best so far, whatever an earlier run in out_dir left
        first = self.checkpointer.saved_iter is None and not self.resumed
        counters = {"iter": self.iter, "best_val": self.best_val, "nonfinite": self.nonfinite}
        self.checkpointer.save(counters, best=best or first)

    def _resume(self, which: str, allow_pickle: bool) -> None:
        path, counters, warning = self.checkpointer.resume(which, allow_pickle)
        self.iter, self.best_val, self.nonfinite = counters["iter"], counters["best_val"], counters["nonfinite"]
        if self.metrics is not None:
            self.metrics.truncate_after(self.iter)
        self._say(f"resumed from {path} at iteration {self.iter}" + (f"\n{warning}" if warning else ""))

    # ------------------------------------------------------------------- training
    def evaluate(self) -> dict[str, float]:
        """Mean loss (and bits per byte) over ``eval_iters`` batches of each split (the same batches every time)."""
        return estimate_losses(self.model, self.eval_loaders, self.objective, self.cfg.train.eval_iters, self.env,
                               self.autocast)

    def train_step(self) -> float | None:
        """One optimizer step over ``grad_accum_steps`` micro-batches; None when skipped (non-finite).

        The loss returned is the mean over the micro-batches and the ranks. The one all-reduce that
        computes it also tells every rank whether any rank saw a non-finite loss or got a signal
        (``self.stopping``), so that all ranks skip, or stop, at the same step.
        """
        accum = self.cfg.train.grad_accum_steps
        ddp = self.env.distributed and not self.fsdp  # FSDP reduce-scatters every micro-batch
        total = torch.zeros((), dtype=torch.float64, device=self.env.device)
        for micro in range(accum):
            x, y, w = self.objective.batch(self.train_loader)
            sync = micro == accum - 1 or not ddp
            with (contextlib.nullcontext() if sync else self.runner.no_sync()), self.autocast:
                _, loss = self.runner(x, y, w)
            # backward even on a NaN loss: the other ranks' gradient all-reduce waits for this one
            self.scaler.scale(loss / accum).backward()
            total += loss.detach() / accum
        loss_sum, stopping = sum_across_ranks([total, float(self.stop_signal is not None)], self.env)
        self.stopping = stopping > 0
        if not math.isfinite(loss_sum):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        if self.cfg.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum / self.env.world_size

    def run(self) -> None:
        t = self.cfg.train
        self._install_signal_handlers()
        if self.resumed:
            self._start()
        self._say(self.model.summary())
        self._say(f"data: {self.data.train_count:,} train / {self.data.val_count:,} val tokens "
                  f"({self.data.tokenizer.name}, vocab {self.data.tokenizer.vocab_size}) in {self.data.dir}")
        if (val := self.eval_loaders.get("val")) is None or val.block_size < self.cfg.model.block_size:
            self._say("no validation split (data.val_fraction=0): best is picked by train_loss" if val is None else
                      f"val_loss: the validation split has {self.data.val_count} tokens: windows of {val.block_size}")
        if self.iter == 0:
            self._eval_and_log()
        tokens_per_iter = t.batch_size * self.cfg.model.block_size * t.grad_accum_steps * self.env.world_size
        # a bar on a terminal (rank 0 only); logs and pipes get a line per log_interval instead
        bar = progress_bar(total=self.total_iters, initial=self.iter, enabled=self.env.is_main, unit="it",
                           dynamic_ncols=True)
        last, first_iter = time.perf_counter(), self.iter
        while self.iter < self.total_iters:
            loss = self.train_step()
            if self.iter == first_iter:  # by now auto has chosen for every op of a step (and of eval)
                self._say(autotune_summary())
            if loss is not None and not self.started:
                self._start()
            self.iter += 1
            self.scheduler.step()
            bar.update(1)
            if loss is None:
                self._nonfinite()
            else:
                self.nonfinite_in_a_row = 0
            if self.iter % t.log_interval == 0 and loss is not None:
                now = time.perf_counter()
                tps = tokens_per_iter * t.log_interval / (now - last)
                last = now
                event = {"iter": self.iter, "train_loss": loss, "lr": self.scheduler.get_last_lr()[0],
                         "tokens_per_s": tps, "world_size": self.env.world_size}
                mfu = flops_utilization(self.model.flops_per_token, tps, self.env.device, self.env.world_size)
                if mfu is not None:
                    event["mfu"] = mfu
                self._log(**event)
                if bar.disable:
                    self._say(f"iter {self.iter}: {step_summary(event)}")
                else:
                    bar.set_postfix_str(step_summary(event))
            evaluated = self.iter % t.eval_interval == 0 or self.iter == self.total_iters
            best = self._eval_and_log() if evaluated else False
            if (evaluated or (t.ckpt_interval and self.iter % t.ckpt_interval == 0)) and self._may_save():
                self.save(best=best)
            if self.stopping:
                saved = self._may_save()
                if saved:
                    self.save()
                bar.close()
                sig = self.stop_signal or signal.SIGTERM  # another rank got the signal (torchrun sends SIGTERM)
                where = (f"checkpoint saved in {self.out_dir}; continue with --resume" if saved else
                         "nothing saved (no step went through, or the loss is not finite); the checkpoints "
                         f"in {self.out_dir}, if any, are kept")
                self._say(f"stopped by {signal.Signals(sig).name} at iteration {self.iter}; {where}")
                sys.exit(128 + sig)
        bar.close()
        if not self.started:  # every step of this run (resumed at its end) was skipped, or there were none
            self._start()
        if t.sample_tokens and (self.env.is_main or self.fsdp):  # FSDP: every rank computes, rank 0 prints
            self.sample()

    def _eval_and_log(self) -> bool:
        losses = self.evaluate()
        self._log(iter=self.iter, **losses)
        self._say(f"iter {self.iter}: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
        if self.benchmarks:
            with self.autocast:
                scores = score_benchmarks(self.model, self.data.tokenizer, self.benchmarks, self.cfg.train.batch_size)
            self._log(iter=self.iter, **scores)
            self._say(f"iter {self.iter}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if self.metrics is not None and self.started:
            self.metrics.plot()
        val = losses.get("val_loss", losses.get("train_loss", math.inf))
        if val < self.best_val:
            self.best_val = val
            return True
        return False

    def _nonfinite(self) -> None:
        self.nonfinite += 1
        self.nonfinite_in_a_row += 1
        self._log(iter=self.iter, skipped="non-finite loss", nonfinite_total=self.nonfinite)
        if self.nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
            raise TrainingError(
                f"the loss was NaN or inf {self.nonfinite_in_a_row} steps in a row (up to iteration {self.iter}); "
                f"the run diverged: {self.checkpointer.recovery()}"
            )

    def sample(self) -> None:
        tok = self.data.tokenizer
        try:
            prompt = tok.encode("\n")
        except ValueError:  # a char vocabulary without a newline
            prompt = [tok.eot_id]
        g = torch.Generator(device=self.env.device).manual_seed(self.cfg.train.seed)
        ids = self.model.generate(prompt, self.cfg.train.sample_tokens, temperature=0.8, top_k=200,
                                  eot_id=tok.eot_id, generator=g)[len(prompt):]  # the eot left out
        if self.env.is_main:
            print(f"\n--- sample after {self.iter} iterations ---\n{tok.decode(ids)}\n---", flush=True)

    def _install_signal_handlers(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            self.stop_signal = signum
            signal.signal(signum, signal.SIG_DFL)  # a second signal stops at once

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handler)

    def _may_save(self) -> bool:
        """Save only a run that started, and never from inside a non-finite streak: the weights may be
        diverging, and saving would prune the good checkpoints before it. Every rank agrees."""
        return self.started and self.nonfinite_in_a_row == 0

    def _start(self) -> None:
        """The run works (a step went through, or it resumed): only now replace what an earlier run left
        in out_dir (metrics.jsonl, config.yaml), and write the events logged so far."""
        self.started = True
        if self.metrics is None:
            return
        if not self.resumed:
            self.metrics.reset()
        self.cfg.save(pathlib.Path(self.out_dir) / "config.yaml")
        for event in self.pending:
            self.metrics.log(**event)
        self.pending = []

    def _log(self, **event: Any) -> None:
        if self.metrics is not None and not self.started:
            self.pending.append(event)
        elif self.metrics is not None:
            self.metrics.log(**event)

    def _say(self, text: str) -> None:
        if self.env.is_main:
            tqdm.write(text, file=sys.stderr)
