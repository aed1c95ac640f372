"""Pure-PyTorch reference ops: the single source of truth.

Every kernel (Triton, CUDA) and PyTorch's own kernels (the ``torch`` backend,
:mod:`fastgpt.ops.torch_path`) are tested against these functions, and the benchmarks use them
as the eager baseline. They favour clarity over speed, but avoid needless copies.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def future_mask(T: int, S: int, device: torch.device) -> Tensor:
    """(T, S) bool, True where causal attention hides key j from query i: the keys after i + S - T
    (the mask aligned to the end, as when T queries follow S - T cached keys)."""
    return torch.ones(T, S, dtype=torch.bool, device=device).triu(1 + S - T)


def visible_mask(
    T: int,
    S: int,
    causal: bool,
    window: int | None = None,
    doc_ids: Tensor | None = None,
    device: torch.device | None = None,
) -> Tensor | None:
    """(1 or B, T, S) bool, True where query i may see key j; None when every query sees every key.

    Queries are the last T of S positions (S > T when decoding with a KV cache), so query i stands
    at position p = i + S - T. Causal: keys j <= p. ``window`` W: causal p - W < j <= p, otherwise
    |p - j| < W. ``doc_ids`` (B, S) int: only keys with the query's id, ``doc_ids[b, p]``. Every
    query sees at least its own position, so no row is fully masked.
    """
    if not causal and window is None and doc_ids is None:
        return None
    device = doc_ids.device if doc_ids is not None else device
    pos_q = torch.arange(S - T, S, device=device)[:, None]  # (T, 1)
    pos_k = torch.arange(S, device=device)[None, :]  # (1, S)
    seen = torch.ones(T, S, dtype=torch.bool, device=device)
    if causal:
        seen &= pos_k <= pos_q
    if window is not None:
        seen &= (pos_q - pos_k < window) if causal else ((pos_q - pos_k).abs() < window)
    seen = seen[None]  # (1, T, S)
    if doc_ids is not None:
        seen = seen & (doc_ids[:, S - T:, None] == doc_ids[:, None, :])  # (B, T, S)
    return seen


def flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    softcap: float | None = None,
    doc_ids: Tensor | None = None,
) -> Tensor:
    """softmax(cap(q @ k^T * scale) + mask) @ v, with grouped-query attention.

    q: (B, Hq, T, D); k, v: (B, Hkv, S, D) with Hq % Hkv == 0 and S >= T (S > T when decoding
    with a KV cache: the masks are aligned to the end, query i stands at position i + S - T).
    ``softcap`` c: scores s become c * tanh(s / c) before the mask. ``window``, ``doc_ids`` (B, S):
    the mask of :func:`visible_mask`. Returns (B, Hq, T, D) in q's dtype. The math runs in fp32
    (fp64 inputs stay fp64).
    """
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    # view query heads as (Hkv, group) so each K/V head serves its group without a copy
    qg = q.to(compute).reshape(B, Hkv, Hq // Hkv, T, D)  # (B, Hkv, G, T, D)
    kf = k.to(compute).unsqueeze(2)  # (B, Hkv, 1, S, D)
    vf = v.to(compute).unsqueeze(2)  # (B, Hkv, 1, S, D)
    att = (qg @ kf.transpose(-2, -1)) * scale  # (B, Hkv, G, T, S)
    if softcap is not None:
        att = softcap * torch.tanh(att / softcap)
    seen = visible_mask(T, S, causal, window, doc_ids, q.device)
    if seen is not None:
        att = att.masked_fill(~seen[:, None, None], float("-inf"))  # (1 or B, 1, 1, T, S)
    out = att.softmax(dim=-1) @ vf  # (B, Hkv, G, T, D)
    return out.reshape(B, Hq, T, D).to(q.dtype)


def rms_norm(
    x: Tensor,
    weight: Tensor | None,
    eps: float | None = None,
    residual: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """x / sqrt(mean(x^2) + eps) * weight over the last dim; statistics in fp32.

    eps None means ``torch.finfo(x.dtype).eps``, as ``torch.nn.RMSNorm``. With ``residual``,
    h = x + residual (in x's dtype) is normalized and ``(normed, h)`` is returned, so a pre-norm
    block reads the residual stream once.
    """
    h = x if residual is None else x + residual
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    hf = h.to(compute)
    out = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        out = out * weight.to(compute)
    out = out.to(x.dtype)
    return out if residual is None else (out, h)


@torch.no_grad()
def fused_adamw_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool = False,
) -> None:
    """One AdamW step in place, exactly torch.optim.AdamW's math, computed in fp32.

    ``steps`` are fp32 scalar tensors already incremented by the caller. Parameters may be
    fp32/fp16/bf16; the moments are fp32. Nothing here synchronizes with the host.
    """
    for p, g, m, v, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
        pf = p.float()
        gf = -g.float() if maximize else g.float()
        pf.mul_(1 - lr * weight_decay)
        m.lerp_(gf, 1 - beta1)
        v.mul_(beta2).addcmul_(gf, gf, value=1 - beta2)
        bias_c1 = 1 - beta1 ** step.to(pf.device)
        bias_c2_sqrt = (1 - beta2 ** step.to(pf.device)).sqrt()
        denom = (v.sqrt() / bias_c2_sqrt).add_(eps)
        pf.sub_((lr / bias_c1) * m / denom)
        if pf is not p:
            p.copy_(pf)


def linear_cross_entropy(
    h: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    softcap: float | None = None,
    z_loss: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy of the logits ``h @ weight.T (+ bias)``, in float64, logits materialized.

    h: (N, d); weight: (V, d); targets: (N,) int; bias: (V,). ``softcap`` c: logits become
    c * tanh(z / c). Per token: lse - s[target] + z_loss * lse**2, 0 where target == ignore_index.
    ``mean`` divides the sum by the number of counted tokens (0 when there are none, where
    ``F.cross_entropy`` gives nan); ``none`` returns the (N,) losses. Returns float64.
    """
    z = h.double() @ weight.double().T  # (N, V)
    if bias is not None:
        z = z + bias.double()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    counted = targets != ignore_index  # (N,)
    lse = torch.logsumexp(z, dim=-1)  # (N,)
    picked = z.gather(1, torch.where(counted, targets, 0)[:, None].long())[:, 0]
    loss = torch.where(counted, lse - picked + z_loss * lse * lse, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / counted.sum().clamp(min=1)
