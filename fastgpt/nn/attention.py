"""Multi-head self-attention with GQA, RoPE, a KV cache, and fastgpt's attention kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgpt.nn.rotary import Rotary
from fastgpt.ops import flash_attention


class KVCache:
    """Keys and values of past positions for every layer, preallocated to ``max_len``.

    ``k[layer]`` and ``v[layer]`` are (B, Hkv, max_len, D); ``pos`` counts the positions filled.
    The model advances ``pos`` after each forward that used the cache.
    """

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        shape = (batch, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len
        self.pos = 0

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store (B, Hkv, T, D) new keys/values at ``pos``; return all keys/values so far."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot add {k.shape[2]} after {self.pos}")
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class SelfAttention(nn.Module):
    """Causal (or bidirectional) self-attention; ``n_kv_head < n_head`` gives GQA/MQA."""

    def __init__(self, n_embd: int, n_head: int, *, n_kv_head: int | None = None, bias: bool = True,
                 causal: bool = True, attn_dropout: float = 0.0, dropout: float = 0.0, backend: str = "auto",
                 rotary: Rotary | None = None) -> None:
        """``attn_dropout`` drops attention probabilities, ``dropout`` the output (residual dropout)."""
        super().__init__()
        n_kv_head = n_kv_head or n_head
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_dim = n_embd // n_head
        self.causal = causal
        self.attn_dropout = attn_dropout
        self.backend = backend
        self.rotary = rotary
        # one projection for q, k and v: (n_head + 2 * n_kv_head) heads of head_dim
        self.c_attn = nn.Linear(n_embd, (n_head + 2 * n_kv_head) * self.head_dim, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        B, T, C = x.shape
        hd = self.head_dim
        q, k, v = self.c_attn(x).split([self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd], dim=2)
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)  # (B, Hq, T, hd)
        k = k.view(B, T, self.n_kv_head, hd).transpose(1, 2)  # (B, Hkv, T, hd)
        v = v.view(B, T, self.n_kv_head, hd).transpose(1, 2)  # (B, Hkv, T, hd)
        start = cache.pos if cache is not None else 0
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, Hkv, start + T, hd)
        if self.training and self.attn_dropout > 0:
            # the kernels have no dropout: SDPA does it (K/V expanded for GQA)
            rep = self.n_head // self.n_kv_head
            y = F.scaled_dot_product_attention(
                q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                dropout_p=self.attn_dropout, is_causal=self.causal,
            )
        else:
            y = flash_attention(q, k, v, causal=self.causal, backend=self.backend)  # (B, Hq, T, hd)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))
