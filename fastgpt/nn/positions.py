"""Position encodings behind one interface: learned, sinusoidal, rotary (RoPE) and none.

A ``PositionEncoding`` may add to the token embeddings (``embed``), rotate each attention layer's
queries and keys (``rotate``), or both; the defaults do neither. ``GPT`` builds the one named by
``GPTConfig.pos_encoding`` from ``POSITION_ENCODINGS``, so a new encoding is one class here plus its
name in that table and in ``fastgpt.config.POS_ENCODINGS``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from fastgpt.config import GPTConfig


class PositionEncoding(nn.Module):
    """The interface, built from a ``GPTConfig`` by each subclass; both hooks return their inputs unchanged."""

    def embed(self, x: Tensor, start: int) -> Tensor:
        """Token embeddings x (B, T, C) of positions ``start .. start + T`` -> (B, T, C) with positions added."""
        return x

    def rotate(self, q: Tensor, k: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Queries (B, Hq, T, D) and keys (B, Hkv, T, D) of positions ``start ..`` -> the same shapes."""
        return q, k


class NoPositions(PositionEncoding):
    """No position information (``pos_encoding="none"``)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()


class LearnedPositions(nn.Embedding, PositionEncoding):
    """A learned embedding per position (GPT-2), added to the token embeddings; ``weight`` is (block_size, C)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config.block_size, config.n_embd)

    def embed(self, x: Tensor, start: int) -> Tensor:
        return x + self(torch.arange(start, start + x.shape[1], device=x.device))


class SinCosPositions(PositionEncoding):
    """Fixed sinusoidal embeddings (Vaswani et al.) added to the token embeddings (a buffer, not saved)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.register_buffer("table", sincos_table(config.block_size, config.n_embd), persistent=False)

    def embed(self, x: Tensor, start: int) -> Tensor:
        return x + self.table[start : start + x.shape[1]].to(x.dtype)


class RotaryPositions(PositionEncoding):
    """Rotary position embedding (Su et al.), "rotate half" layout as in HF Llama.

    Holds cos/sin tables (T, head_dim) for ``block_size`` positions (buffers, not saved).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        head_dim, theta = config.head_dim, config.rope_theta
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dim, got {head_dim}")
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        freqs = torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq)  # (T, D/2)
        angles = torch.cat([freqs, freqs], dim=-1)  # (T, D)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def rotate(self, q: Tensor, k: Tensor, start: int) -> tuple[Tensor, Tensor]:
        return self._rotate(q, start), self._rotate(k, start)

    def _rotate(self, x: Tensor, start: int) -> Tensor:
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


# GPTConfig.pos_encoding -> its class
POSITION_ENCODINGS: dict[str, type[PositionEncoding]] = {
    "learned": LearnedPositions,
    "sincos": SinCosPositions,
    "rope": RotaryPositions,
    "none": NoPositions,
}
