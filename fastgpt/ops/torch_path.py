"""The ``torch`` backend: PyTorch's own kernels for each op, the candidate ``auto`` is never slower than.

- ``flash_attention``: ``F.scaled_dot_product_attention`` (FlashAttention-2 / memory-efficient
  kernels inside PyTorch on a GPU);
- ``rms_norm``: ``F.rms_norm`` (PyTorch's fused RMSNorm where it has one), the residual add done
  by one torch add before it;
- ``fused_adamw_``: ``torch.optim.adamw.adamw``, the functional form of ``torch.optim.AdamW``:
  ``fused=True`` (one multi-tensor kernel) on CUDA, ``foreach=True`` elsewhere.

They compute what :mod:`fastgpt.ops.reference` defines (the truth they are tested against, like
the kernels); where PyTorch's kernels refuse an input the reference accepts (AdamW with fp32
moments for bf16 params, fp64 step counters, ...), the reference itself runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.adamw import adamw

import fastgpt.ops.reference as reference


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
    """:func:`fastgpt.ops.reference.flash_attention` through ``F.scaled_dot_product_attention``.

    q: (B, Hq, T, D); k, v: (B, Hkv, S, D). Computes in the input dtype, except bf16 and fp16 on the
    CPU, which compute in fp32 and return the input dtype: PyTorch's CPU kernel in bf16 took 2.6-3.9x
    the fp32 time, forward and backward, at head_dim 32 and T=64 (the CPU recipe's attention), and
    the same time at head_dim 64, T=256. S > T gets an explicit end-aligned causal mask (query i sees
    keys <= i + S - T). ``window`` and ``doc_ids`` (B, S) pass SDPA the boolean mask of
    :func:`fastgpt.ops.reference.visible_mask`; SDPA has no softcap, so ``softcap`` runs the
    attention as explicit PyTorch math (a (B, Hq, T, S) score matrix) in the compute dtype.
    """
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", enabled=False):  # CPU autocast would run SDPA in bf16 again
            out = flash_attention(q.float(), k.float(), v.float(), causal, scale, window, softcap, doc_ids)
            return out.to(q.dtype)
    T, S = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if softcap is not None:
        return _softcapped(q, k, v, causal, scale, window, softcap, doc_ids)
    if window is not None or doc_ids is not None:
        seen = reference.visible_mask(T, S, causal, window, doc_ids, q.device)[:, None]  # (1 or B, 1, T, S)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=seen, scale=scale, enable_gqa=gqa)
    if causal and S != T:
        seen = ~reference.future_mask(T, S, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=seen, scale=scale, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)


def _softcapped(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float | None, window: int | None, softcap: float,
    doc_ids: Tensor | None,
) -> Tensor:
    """softmax(softcap * tanh(q k^T * scale / softcap) + mask) v in q's dtype, GQA without copies."""
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    scale = D**-0.5 if scale is None else scale
    qg = q.reshape(B, Hkv, Hq // Hkv, T, D)  # (B, Hkv, G, T, D)
    att = (qg @ k.unsqueeze(2).transpose(-2, -1)) * scale  # (B, Hkv, G, T, S)
    att = softcap * torch.tanh(att / softcap)
    seen = reference.visible_mask(T, S, causal, window, doc_ids, q.device)
    if seen is not None:
        att = att.masked_fill(~seen[:, None, None], float("-inf"))  # (1 or B, 1, 1, T, S)
    return (att.softmax(dim=-1) @ v.unsqueeze(2)).reshape(B, Hq, T, D)  # (B, Hq, T, D)


def rms_norm(
    x: Tensor, weight: Tensor | None, eps: float | None = None, residual: Tensor | None = None
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`fastgpt.ops.reference.rms_norm` through ``F.rms_norm``: y (like x), or (y, h) with a residual.

    ``F.rms_norm`` takes its fused path only when weight and input share a dtype; otherwise both
    are promoted first (an fp32 weight for bf16 activations normalizes in fp32, as the reference).
    """
    h = x if residual is None else x + residual
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    if weight is None or weight.dtype == h.dtype:
        y = F.rms_norm(h, h.shape[-1:], weight, eps)
    else:
        compute = torch.promote_types(h.dtype, weight.dtype)
        y = F.rms_norm(h.to(compute), h.shape[-1:], weight.to(compute), eps)
    y = y.to(x.dtype)
    return y if residual is None else (y, h)


def adamw_refusal(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                  steps: list[Tensor]) -> str | None:
    """Why torch's multi-tensor AdamW does not take these lists (None when it does).

    It needs each grad and moment of its param's dtype, device and shape, all dense and
    contiguous, and one-element float32 steps (on the params' device for the fused kernel).
    """
    fused = params[0].device.type == "cuda"
    for i, (p, g, m, v, s) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True)):
        for name, t in (("param", p), ("grad", g), ("exp_avg", m), ("exp_avg_sq", v)):
            if t.dtype != p.dtype or t.device != p.device or t.shape != p.shape or not t.is_contiguous():
                return f"{name} {i} ({t.dtype}, {tuple(t.shape)}, {t.device}) is not a contiguous twin of its param"
        if p.device != params[0].device:
            return f"params are on several devices ({params[0].device}, {p.device})"
        if s.numel() != 1 or s.dtype != torch.float32 or (fused and s.device != p.device):
            return f"step {i} ({s.dtype}, {s.device}) is not a one-element float32 tensor beside its param"
    return None


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
    """One in-place AdamW step over lists of tensors (``steps`` already incremented), by torch's kernels."""
    if not params:
        return
    if adamw_refusal(params, grads, exp_avgs, exp_avg_sqs, steps) is not None:
        reference.fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, steps, lr=lr, beta1=beta1, beta2=beta2,
                               eps=eps, weight_decay=weight_decay, maximize=maximize)
        return
    fused = params[0].device.type == "cuda"
    if isinstance(lr, Tensor) and not (fused and lr.device == params[0].device):
        lr = float(lr)  # the foreach path takes a float; a CPU tensor is read without synchronizing
    torch._foreach_add_(steps, -1.0)  # torch's adamw increments the steps itself; ours arrive incremented
    adamw(
        params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=not fused, fused=fused,
        amsgrad=False, beta1=beta1, beta2=beta2, lr=lr, weight_decay=weight_decay, eps=eps, maximize=maximize,
    )
