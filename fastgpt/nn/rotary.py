"""Position encodings that are not learned: rotary (RoPE) and sinusoidal."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Rotary(nn.Module):
    """Rotary position embedding (Su et al.), "rotate half" layout as in HF Llama.

    Holds cos/sin tables for ``max_len`` positions (buffers, not saved in the state_dict).
    """

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dim, got {head_dim}")
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (T, D/2)
        angles = torch.cat([freqs, freqs], dim=-1)  # (T, D)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        """Rotate x (B, H, T, D) as if its first token sat at position ``start``."""
        T = x.shape[-2]
        cos = self.cos[start : start + T].to(x.dtype)  # (T, D)
        sin = self.sin[start : start + T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def sincos_table(max_len: int, dim: int) -> Tensor:
    """Fixed sinusoidal position embeddings (Vaswani et al.), (max_len, dim)."""
    pos = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (ceil(dim/2),)
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return table
