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
contiguous first. Outside these :func:`unsupported_reason` says why:
``fastgpt.ops.rms_norm`` then raises ValueError for ``backend="cuda"``, and ``auto`` falls back.
Not twice differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor

import fastgpt.ops.cuda  # noqa: F401  (loads fastgpt._C, registering torch.ops.fastgpt.*)
from fastgpt.ops._checks import eps_problem, residual_problem, rms_norm_shapes_problem

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


def rms_norm_fwd(
    x: Tensor, weight: Tensor | None, residual: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Forward: ``(y like x, h like x or empty without residual, rstd fp32)``; inputs already validated."""
    return torch.ops.fastgpt.rms_norm_fwd(x, weight, residual, eps)


def rms_norm_bwd(
    dy: Tensor, dh: Tensor | None, h: Tensor, weight: Tensor | None, rstd: Tensor
) -> tuple[Tensor, Tensor]:
    """Backward: ``(dx like h, dweight like weight or empty without weight)``."""
    return torch.ops.fastgpt.rms_norm_bwd(dy, dh, h, weight, rstd)


def unsupported_reason(
    x: Tensor, weight: Tensor | None, eps: float | None = None, residual: Tensor | None = None
) -> str | None:
    """Why these inputs are outside the kernels' limits (None when they are supported)."""
    reason = rms_norm_shapes_problem(x, weight, MAX_N) or residual_problem(x, residual) or eps_problem(eps)
    if reason is not None:
        return reason
    reason = fastgpt.ops.cuda.device_problem(x.device)
    if reason is not None:
        return f"x is on {x.device}; {reason}"
    for name, t in (("x", x), ("weight", weight)):
        if t is not None and t.dtype not in _DTYPES:
            return f"{name}'s dtype {t.dtype} is not supported (float32, float16, bfloat16)"
    return None
