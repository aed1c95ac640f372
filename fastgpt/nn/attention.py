"""Multi-head self-attention with GQA, rotated queries/keys, a per-layer KV cache, and fastgpt's attention kernels."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from fastgpt.nn.dropout import Dropout, attention_with_dropout
from fastgpt.nn.rms_norm import RMSNorm
from fastgpt.ops import flash_attention

# (q, k, start) -> (q, k) rotated as if their first token sat at position start (a PositionEncoding.rotate)
Rotate = Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]]


class KVCache:
    """One layer's keys and values of past positions, preallocated to ``max_len``.

    ``k`` and ``v`` are (B, Hkv, max_len, D); ``pos`` counts the positions filled. A cache belongs
    to one layer, not to an attention module: with cross-layer tying one ``SelfAttention`` serves
    every layer, so each block hands its own cache to the attention call (``GPT.new_cache`` makes one
    per block).
    """

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        shape = (batch, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store (B, Hkv, T, D) new keys/values at ``pos`` and advance it; return all keys/values so far."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot add {k.shape[2]} after {self.pos}")
        self.k[:, :, self.pos : end] = k
        self.v[:, :, self.pos : end] = v
        self.pos = end
        return self.k[:, :, :end], self.v[:, :, :end]


class SelfAttention(nn.Module):
    """Causal (or bidirectional) self-attention; ``n_kv_head < n_head`` gives GQA/MQA."""

    def __init__(self, n_embd: int, n_head: int, *, n_kv_head: int | None = None, bias: bool = True,
                 causal: bool = True, attn_dropout: float = 0.0, dropout: float = 0.0, backend: str = "auto",
                 rotate: Rotate | None = None, qk_norm: bool = False, norm_eps: float | None = None,
                 norm_backend: str = "auto") -> None:
        """``attn_dropout`` drops attention probabilities, ``dropout`` the output (residual dropout);
        ``rotate`` (e.g. ``RotaryPositions.rotate``) is applied to q and k, not registered as a submodule.
        ``qk_norm`` RMS-normalizes each head's q and k over head_dim (one learned weight of head_dim for
        q, one for k, shared by the heads, as in Qwen3 and modded-nanogpt) before the rotation."""
        super().__init__()
        n_kv_head = n_kv_head or n_head
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_dim = n_embd // n_head
        self.causal = causal
        self.attn_dropout = attn_dropout
        self.backend = backend
        self.rotate = rotate
        # one projection for q, k and v: (n_head + 2 * n_kv_head) heads of head_dim
        self.c_attn = nn.Linear(n_embd, (n_head + 2 * n_kv_head) * self.head_dim, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        if qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=norm_eps, backend=norm_backend)
            self.k_norm = RMSNorm(self.head_dim, eps=norm_eps, backend=norm_backend)
        else:
            self.q_norm = self.k_norm = None
        self.resid_dropout = Dropout(dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C). With ``cache`` (this layer's), x holds the T positions after
        ``cache.pos``; their keys/values are appended and attention sees every cached position."""
        B, T, C = x.shape
        hd = self.head_dim
        q, k, v = self.c_attn(x).split([self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd], dim=2)
        q = q.view(B, T, self.n_head, hd)  # (B, T, Hq, hd)
        k = k.view(B, T, self.n_kv_head, hd)  # (B, T, Hkv, hd)
        if self.q_norm is not None:
            # each head's q and k have unit RMS (times the norms' weights): the attention logits cannot grow
            # with the projections' weights
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, hd)
        v = v.view(B, T, self.n_kv_head, hd).transpose(1, 2)  # (B, Hkv, T, hd)
        if self.rotate is not None:
            q, k = self.rotate(q, k, cache.pos if cache is not None else 0)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, Hkv, pos + T, hd)
        if self.training and self.attn_dropout > 0:
            # the kernels have no dropout: SDPA does it, or on the CPU the same math with a faster mask
            # (K/V expanded for GQA)
            rep = self.n_head // self.n_kv_head
            y = attention_with_dropout(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                       self.attn_dropout, self.causal)
        else:
            y = flash_attention(q, k, v, causal=self.causal, backend=self.backend)  # (B, Hq, T, hd)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))
