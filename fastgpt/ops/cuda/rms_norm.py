"""RMSNorm, forward and backward, optionally fused with the residual add, in CUDA C++.

    h = x (+ residual)      rstd = 1 / sqrt(mean(h^2) + eps)      y = h * rstd * weight
    dh = rstd * (g - xhat * mean(g * xhat)) + dh_out,  g = dy * weight,  xhat = h * rstd
    dweight = sum over rows of dy * xhat

Matches :func:`fastgpt.ops.reference.rms_norm`: statistics in fp32, output in x's dtype; with
``residual`` the op also returns h = x + residual (rounded to x's dtype, as the reference adds),
and the gradient of h flows to both x and residual.

How (kernels in ``csrc/rms_norm/``): a row is normalized by up to 512 threads with 16-byte
vector accesses when the row length is a multiple of the vector width and the tensors are
16-byte aligned (element-wise otherwise), warp-shuffle + shared-memory reductions in a fixed
order, and the first vectors of each thread's share of the row held in registers between the
two passes. rstd is saved for the backward. dweight takes two deterministic stages: per-chunk
fp32 partial sums over rows, then an ordered sum of the chunks (no atomics).

Limits: CUDA tensors; x float32, float16 or bfloat16 with 1 <= N <= 65536 elements per row;
weight (N,) of any of those dtypes (used in fp32; a non-fp32 weight is converted, one tiny
copy); residual of x's shape and dtype. Non-contiguous x, residual or gradients are copied to
contiguous first. Outside these :func:`rms_norm` raises ValueError and
:func:`unsupported_reason` says why. Not twice differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor

import fastgpt.ops.cuda  # noqa: F401  (loads fastgpt._C, registering torch.ops.fastgpt.*)

MAX_N = 65536
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@torch.library.register_fake("fastgpt::rms_norm_fwd")
def _(x: Tensor, weight: Tensor | None, residual: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    h = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else x.new_empty(0)
    rstd = x.new_empty(x.shape[:-1], dtype=torch.float32)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), h, rstd


@torch.library.register_fake("fastgpt::rms_norm_bwd")
def _(dout: Tensor, dh: Tensor | None, h: Tensor, weight: Tensor | None, rstd: Tensor) -> tuple[Tensor, Tensor]:
    dweight = torch.empty_like(weight, memory_format=torch.contiguous_format) if weight is not None else h.new_empty(0)
    return torch.empty(h.shape, dtype=h.dtype, device=h.device), dweight


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, residual: Tensor | None, eps: float):
        y, h, rstd = torch.ops.fastgpt.rms_norm_fwd(x, weight, residual, eps)
        ctx.has_residual = residual is not None
        ctx.save_for_backward(h if residual is not None else x, weight, rstd)
        return (y, h) if residual is not None else y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor, dh: Tensor | None = None):
        h, weight, rstd = ctx.saved_tensors
        dh = dh.to(h.dtype) if dh is not None else None
        dx, dw = torch.ops.fastgpt.rms_norm_bwd(dy.to(h.dtype), dh, h, weight, rstd)
        dweight = dw if weight is not None and ctx.needs_input_grad[1] else None
        # d(x + residual)/dx = d(x + residual)/dresidual: both get dx, as autograd's own add does
        return dx, dweight, dx if ctx.has_residual else None, None


def unsupported_reason(x: Tensor, weight: Tensor | None) -> str | None:
    """Why these inputs are outside the kernels' limits (None when they are supported)."""
    if not isinstance(x, Tensor) or x.dim() == 0:
        return "x must be a tensor with at least one dimension"
    if x.device.type != "cuda":
        return f"x is on {x.device}; the CUDA kernels need a CUDA device"
    if x.dtype not in _DTYPES:
        return f"x's dtype {x.dtype} is not supported (float32, float16, bfloat16)"
    n = x.shape[-1]
    if not 1 <= n <= MAX_N:
        return f"the normalized dim has {n} elements; the kernels support 1..{MAX_N}"
    if weight is not None:
        if weight.shape != (n,):
            return f"weight shape {tuple(weight.shape)} must be ({n},)"
        if weight.dtype not in _DTYPES:
            return f"weight's dtype {weight.dtype} is not supported (float32, float16, bfloat16)"
        if weight.device != x.device:
            return f"weight is on {weight.device}, x on {x.device}"
    return None


def rms_norm(
    x: Tensor, weight: Tensor | None, eps: float | None = None, residual: Tensor | None = None
) -> Tensor | tuple[Tensor, Tensor]:
    """RMSNorm of x (..., N) over the last dim; differentiable w.r.t. x, weight and residual.

    Returns y like x, or ``(y, x + residual)`` when ``residual`` (like x) is given. ``eps`` None
    means ``torch.finfo(x.dtype).eps``. Raises ``ValueError`` outside the kernels' limits.
    """
    reason = unsupported_reason(x, weight)
    if reason is None and residual is not None:
        if not isinstance(residual, Tensor) or residual.shape != x.shape:
            reason = f"residual shape {tuple(getattr(residual, 'shape', ()))} must equal x's {tuple(x.shape)}"
        elif residual.dtype != x.dtype or residual.device != x.device:
            reason = f"residual ({residual.dtype}, {residual.device}) must match x ({x.dtype}, {x.device})"
    if reason is not None:
        raise ValueError(f"rms_norm (cuda): {reason}")
    eps = torch.finfo(x.dtype).eps if eps is None else float(eps)
    return _RMSNorm.apply(x, weight, residual, eps)
