"""Dropout as ``torch.nn.Dropout`` computes it (each element kept with probability 1 - p and scaled by
1 / (1 - p) while training), with a faster mask on the CPU.

torch's CPU dropout draws its mask with ``bernoulli_``, which took 49 ms for a (16, 6, 256, 256) fp32
tensor on a 2-core AMD EPYC where comparing a uniform draw (``rand >= p``) took 19 ms; attention-
probability dropout was 28% of a bf16 training step of nanoGPT's shakespeare-char model there
(benchmarks/NOTES.md, 2026-12-07). On the CPU, ``dropout`` therefore keeps the elements whose fp32
uniform draw is at least p, and saves only that boolean mask for the backward pass; on other devices
it is torch's own (fused) dropout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgpt.ops.reference import future_mask


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)``, by a uniform draw on the CPU."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    if p == 1:
        return x * 0
    keep = torch.rand(x.shape, device=x.device) >= p  # fp32 draws: P(keep) = 1 - p to 2^-24
    return torch.where(keep, x, 0) * (1 / (1 - p))


def attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, p: float, causal: bool) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)`` for q, k, v (B, H, T, D)
    of as many heads each. On the CPU, where SDPA takes its math path for dropout anyway, the same math
    with ``dropout``'s mask on the attention probabilities (the softmax in fp32)."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)
    scores = (q @ k.transpose(-2, -1)) * (1 / math.sqrt(q.shape[-1]))
    if causal:
        scores = scores.masked_fill(future_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return dropout(probs, p) @ v


class Dropout(nn.Module):
    """``torch.nn.Dropout`` through :func:`dropout`."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
