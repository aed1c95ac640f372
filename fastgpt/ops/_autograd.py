"""One ``autograd.Function`` per differentiable op, driving any kernel backend's forward and backward.

The backend is named by a string and its module found in :mod:`fastgpt.ops._registry`, so the same
Function serves Triton and CUDA (and ``torch.compile`` sees a constant argument). Inputs are
validated by the backend's ``unsupported_reason`` before ``apply``. Neither is twice differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgpt.ops._registry import kernel


class FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, backend: str, q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float,
        window: int | None = None, softcap: float | None = None, doc_ids: Tensor | None = None,
    ) -> Tensor:
        out, lse = kernel(backend, "flash_attention").flash_attn_fwd(q, k, v, causal, scale, window, softcap, doc_ids)
        ctx.save_for_backward(q, k, v, out, lse, doc_ids)
        ctx.backend, ctx.causal, ctx.scale, ctx.window, ctx.softcap = backend, causal, scale, window, softcap
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse, doc_ids = ctx.saved_tensors
        dq, dk, dv = kernel(ctx.backend, "flash_attention").flash_attn_bwd(
            dout.to(q.dtype), q, k, v, out, lse, ctx.causal, ctx.scale, ctx.window, ctx.softcap, doc_ids
        )
        return None, dq, dk, dv, None, None, None, None, None


class RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, backend: str, x: Tensor, weight: Tensor | None, residual: Tensor | None, eps: float):
        y, h, rstd = kernel(backend, "rms_norm").rms_norm_fwd(x, weight, residual, eps)
        ctx.backend, ctx.has_residual = backend, residual is not None
        ctx.save_for_backward(h if residual is not None else x, weight, rstd)
        return (y, h) if residual is not None else y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor, dh: Tensor | None = None):
        h, weight, rstd = ctx.saved_tensors
        dh = dh.to(h.dtype) if dh is not None else None
        dx, dw = kernel(ctx.backend, "rms_norm").rms_norm_bwd(dy.to(h.dtype), dh, h, weight, rstd)
        dweight = dw if weight is not None and ctx.needs_input_grad[2] else None
        # d(x + residual)/dx = d(x + residual)/dresidual: both get dx, as autograd's own add does
        return None, dx, dweight, dx if ctx.has_residual else None, None
