"""Checks a run passes before anything is allocated or written: the kernel backends it names can
run on its device, and its weights, optimizer state and one micro-batch's logits fit the memory
of that device. Each failure is a ValueError naming the value and the limit."""

from __future__ import annotations

import os

import torch

from fastgpt.config import Config, GPTConfig
from fastgpt.device import total_memory
from fastgpt.ops import available_backends

BYTES_PER_PARAM = 16  # fp32 weights, gradients and AdamW's two moments


def check_backends(model: GPTConfig, device: torch.device) -> None:
    """An explicit ``model.attn_backend`` / ``model.norm_backend`` must run on ``device`` (``auto`` always does)."""
    reasons = available_backends(device)
    for name in ("attn_backend", "norm_backend"):
        backend = getattr(model, name)
        if backend != "auto" and reasons.get(backend) is not None:
            raise ValueError(f"model.{name}={backend!r} cannot run here: {reasons[backend]}; "
                             f"use model.{name}=auto")


def parameter_count(m: GPTConfig) -> int:
    """An upper bound on the model's parameters (untied embeddings, a gated feed-forward)."""
    ffn = m.ffn_dim or 4 * m.n_embd
    per_layer = 4 * m.n_embd * m.n_embd + 3 * m.n_embd * ffn + 4 * m.n_embd
    return m.n_layer * per_layer + (2 * m.vocab_size + m.block_size) * m.n_embd


def device_memory(device: torch.device) -> int:
    """Bytes of memory on ``device`` (the machine's RAM where the device reports none)."""
    reported = total_memory(device)
    return reported if reported is not None else os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_weights_fit(m: GPTConfig, device: torch.device, what: str) -> None:
    """Refuse a model (``what`` says whose config) whose fp32 weights alone exceed ``device``'s memory."""
    need, have = parameter_count(m) * 4, device_memory(device)
    if need > have:
        raise ValueError(f"{what}: its model (model.n_layer={m.n_layer}, model.n_embd={m.n_embd}, vocab "
                         f"{m.vocab_size}) needs {need / 2**30:,.1f} GiB for its weights but {device} has "
                         f"{have / 2**30:,.1f} GiB")


def check_memory(cfg: Config, device: torch.device) -> None:
    """Refuse a run whose weights, optimizer state and logits alone cannot fit on ``device``: it
    would otherwise abort or swap for hours instead of failing with a message."""
    m, t = cfg.model, cfg.train
    params = parameter_count(m)
    logits = 2 * t.batch_size * m.block_size * m.vocab_size * 4  # the logits and their gradient, fp32
    need, have = params * BYTES_PER_PARAM + logits, device_memory(device)
    if need > have:
        raise ValueError(f"this run needs at least {need / 2**30:,.1f} GiB on {device} (~{params:,} parameters "
                         f"from model.n_layer={m.n_layer}, model.n_embd={m.n_embd}, vocab {m.vocab_size}; logits of "
                         f"train.batch_size={t.batch_size} x block_size {m.block_size}) but it has "
                         f"{have / 2**30:,.1f} GiB; use a smaller model or batch")

