"""What ``python -m fastgpt.train`` runs with no ``--config``: Shakespeare, sized for the machine
(``--recipe cpu|gpu`` chooses). Defined here only; any key can be overridden as ``section.key=value``.
"""

from __future__ import annotations

import torch

# a character-level model that trains on 2 CPU cores in a few minutes. Tuned in fp32 at a fixed
# compute (2000 steps of 2048 tokens): context 64 x batch 32 with lr 3e-3 reaches a whole-split
# validation loss 0.043 below context 128 x batch 16 with lr 2e-3 (mean over seeds), in the same time; wider
# (n_embd 192) or deeper (6 layers) models given the same time did worse (benchmarks/NOTES.md)
CPU = {
    "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0, "bias": False},
    "data": {"dataset": "shakespeare", "tokenizer": "char"},
    "train": {"out_dir": "out/shakespeare", "batch_size": 32, "max_iters": 2000, "eval_interval": 250,
              "eval_iters": 10, "log_interval": 10},
    "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_iters": 50, "beta2": 0.99, "weight_decay": 0.1},
}

# nanoGPT's shakespeare-char model (6 x 6 x 384, context 256) in bf16
GPU = {
    "model": {"preset": "shakespeare-char"},
    "data": {"dataset": "shakespeare", "tokenizer": "char"},
    "train": {"out_dir": "out/shakespeare", "batch_size": 64, "max_iters": 5000, "eval_interval": 500,
              "eval_iters": 100, "log_interval": 10, "dtype": "bfloat16"},
    "optim": {"lr": 1e-3, "min_lr": 1e-4, "warmup_iters": 100, "beta2": 0.99, "weight_decay": 0.1},
}


RECIPES = {"cpu": CPU, "gpu": GPU}


def default_recipe(name: str | None = None) -> dict:
    """The recipe ``name`` (cpu | gpu); None: the GPU recipe when CUDA is available, else the CPU one."""
    if name is None:
        name = "gpu" if torch.cuda.is_available() else "cpu"
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    return RECIPES[name]
