"""The baseline of the quality bar and of the CPU speed goal: nanoGPT's shakespeare-char runs, rebuilt
for measurement.

    python benchmarks/nanogpt_baseline.py PATH/tinyshakespeare.txt [--seed 1337] [--max_iters 2000]
        [--shape baby|shakespeare-char] [--compile]

Reimplements what nanoGPT's ``train.py`` + ``model.py`` do with ``config/train_shakespeare_char.py``.
``--shape baby`` (the default) adds the README's CPU overrides (``--device=cpu --compile=False
--eval_iters=20 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
--max_iters=2000 --lr_decay_iters=2000 --dropout=0.0``); ``--shape shakespeare-char`` is the config
as it is (the 10.7M model: 6 x 6 x 384, context 256, batch 64, dropout 0.2 on the embeddings, the
attention probabilities and both residual branches, 200 eval batches), on the CPU. ``--compile``
runs the model through ``torch.compile``, as train.py does unless told ``--compile=False``.
Both: characters of the whole text as the vocabulary, the first 90% to train on,
pre-LayerNorm blocks without biases, a GELU MLP, SDPA, tied embeddings, N(0, 0.02) init with
residual projections scaled by 1/sqrt(2 * n_layer), AdamW (decay 0.1 on matrices, betas 0.9/0.99,
torch's default implementation), 100 warmup steps then cosine 1e-3 -> 1e-4, clipping at 1.0, and
an eval of random batches per split every 250 steps, after which the model and the optimizer
are saved when the validation loss improved. Its batches come from an in-memory array (nanoGPT
re-opens a memory map for every batch, which is slower). It uses nothing from fastgpt, so the two
share only the machine. Prints one JSON line: the evals, the loss over the whole validation split
(each token after the first predicted once) and the time that took, and the median time of a
training step (over 10-step intervals, as fastgpt's log measures it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Shape:
    """One of nanoGPT's shakespeare-char settings: the model and the loop's constants."""

    n_layer: int
    n_head: int
    n_embd: int
    block: int
    batch: int
    dropout: float
    warmup: int
    eval_iters: int


# the README's CPU run, and config/train_shakespeare_char.py as it is (the 10.7M model)
SHAPES = {"baby": Shape(4, 4, 128, 64, 12, 0.0, 100, 20),
          "shakespeare-char": Shape(6, 6, 384, 256, 64, 0.2, 100, 200)}
LR, MIN_LR, EVAL_INTERVAL, LOG_INTERVAL = 1e-3, 1e-4, 250, 10


class Block(nn.Module):
    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.s = s
        self.ln_1 = nn.LayerNorm(s.n_embd, bias=False)
        self.qkv = nn.Linear(s.n_embd, 3 * s.n_embd, bias=False)
        self.attn_out = nn.Linear(s.n_embd, s.n_embd, bias=False)
        self.ln_2 = nn.LayerNorm(s.n_embd, bias=False)
        self.fc = nn.Linear(s.n_embd, 4 * s.n_embd, bias=False)
        self.mlp_out = nn.Linear(4 * s.n_embd, s.n_embd, bias=False)
        self.drop = nn.Dropout(s.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        h = self.s.n_head
        heads = [t.view(B, T, h, C // h).transpose(1, 2) for t in self.qkv(self.ln_1(x)).split(C, dim=2)]
        y = F.scaled_dot_product_attention(*heads, dropout_p=self.s.dropout if self.training else 0.0, is_causal=True)
        x = x + self.drop(self.attn_out(y.transpose(1, 2).contiguous().view(B, T, C)))
        return x + self.drop(self.mlp_out(F.gelu(self.fc(self.ln_2(x)))))


class Model(nn.Module):
    def __init__(self, vocab: int, s: Shape) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, s.n_embd)
        self.pos = nn.Embedding(s.block, s.n_embd)
        self.drop = nn.Dropout(s.dropout)
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.n_layer))
        self.ln_f = nn.LayerNorm(s.n_embd, bias=False)
        self.head = nn.Linear(s.n_embd, vocab, bias=False)
        self.tok.weight = self.head.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * s.n_layer) if name.endswith(("attn_out.weight", "mlp_out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.tok(idx) + self.pos(torch.arange(idx.shape[1])))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def lr_at(it: int, max_iters: int, warmup: int) -> float:
    if it < warmup:
        return LR * (it + 1) / (warmup + 1)
    progress = (it - warmup) / (max_iters - warmup)
    return MIN_LR + 0.5 * (1 + math.cos(math.pi * progress)) * (LR - MIN_LR)


class Run:
    """The data, model and optimizer of one run; ``step`` is one training iteration. ``compile``:
    the model through ``torch.compile``, as nanoGPT's train.py does by default (its README's CPU
    command turns it off)."""

    def __init__(self, path: str, seed: int, max_iters: int, shape: Shape = SHAPES["baby"],
                 compile: bool = False) -> None:
        torch.manual_seed(seed)
        self.max_iters, self.shape = max_iters, shape
        text = open(path).read()
        index = {c: i for i, c in enumerate(sorted(set(text)))}
        data = np.array([index[c] for c in text], dtype=np.int64)
        self.splits = {"train": data[: int(0.9 * len(data))], "val": data[int(0.9 * len(data)) :]}
        self.model = Model(len(index), shape)
        self.params = list(self.model.parameters())
        self.forward = torch.compile(self.model) if compile else self.model
        self.optimizer = torch.optim.AdamW(
            [{"params": [q for q in self.params if q.dim() >= 2], "weight_decay": 0.1},
             {"params": [q for q in self.params if q.dim() < 2], "weight_decay": 0.0}],
            lr=LR, betas=(0.9, 0.99))

    def batch(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        d, block = self.splits[split], self.shape.block
        starts = torch.randint(len(d) - block, (self.shape.batch,)).numpy()
        rows = torch.from_numpy(d[starts[:, None] + np.arange(block + 1)])
        return rows[:, :-1], rows[:, 1:]

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        out = {s: float(np.mean([self.forward(*self.batch(s)).item() for _ in range(self.shape.eval_iters)]))
               for s in ("train", "val")}
        self.model.train()
        return out

    def step(self, it: int) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(it, self.max_iters, self.shape.warmup)
        loss = self.forward(*self.batch("train"))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    @torch.no_grad()
    def full_val_loss(self) -> float:
        """Consecutive windows (the last one shorter): every validation token after the first once."""
        self.model.eval()
        block = self.shape.block
        val = torch.from_numpy(self.splits["val"])
        n = (len(val) - 1) // block * block
        xs, ys = val[:n].view(-1, block), val[1 : n + 1].view(-1, block)
        total = sum(self.model(x, y).item() * x.numel() for x, y in zip(xs.split(64), ys.split(64)))
        if n < len(val) - 1:
            total += self.model(val[n:-1][None], val[n + 1 :][None]).item() * (len(val) - 1 - n)
        return total / (len(val) - 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--max_iters", type=int, default=2000)
    p.add_argument("--shape", choices=SHAPES, default="baby")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    run = Run(args.data, args.seed, args.max_iters, SHAPES[args.shape], args.compile)
    evals, interval_s, best = [], [], math.inf
    last = time.perf_counter()
    for it in range(args.max_iters + 1):
        if it % EVAL_INTERVAL == 0 or it == args.max_iters:
            evals.append({"iter": it, **run.evaluate()})
            if it > 0 and evals[-1]["val"] < best:  # nanoGPT saves model and optimizer when val improves
                best = evals[-1]["val"]
                with tempfile.TemporaryDirectory() as out:
                    torch.save({"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                                "iter_num": it, "best_val_loss": best}, os.path.join(out, "ckpt.pt"))
        if it == args.max_iters:
            break
        loss = run.step(it)
        if (it + 1) % LOG_INTERVAL == 0:
            loss.item()
            now = time.perf_counter()
            interval_s.append(now - last)
            last = now
    eval_start = time.perf_counter()
    full_val_loss = run.full_val_loss()
    eval_s = time.perf_counter() - eval_start
    print(json.dumps({"evals": evals, "full_val_loss": full_val_loss, "full_val_eval_s": eval_s,
                      "median_step_ms": 1e3 * float(np.median(interval_s)) / LOG_INTERVAL,
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "seed": args.seed}))


if __name__ == "__main__":
    main()
