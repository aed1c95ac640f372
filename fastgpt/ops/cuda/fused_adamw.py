"""Fused multi-tensor AdamW step in CUDA C++: one launch updates every tensor of a dtype.

    p <- p * (1 - lr * weight_decay)                       (decoupled weight decay)
    m <- lerp(m, g, 1 - beta1)                             (torch's lerp)
    v <- beta2 * v + (1 - beta2) * g * g
    p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    (g <- -g first when maximize)

Matches :func:`fastgpt.ops.reference.fused_adamw_`, i.e. ``torch.optim.AdamW``'s math, computed
in fp32 and written back in place.

How (``csrc/adamw/``, multi-tensor apply): the host packs up to 36 tensors' pointers and a map
from up to 320 CTAs to 64K-element chunks into the kernel's argument (no device-side tables, no
copies); larger lists take several launches, and a tensor may straddle two. Each CTA reads its
tensor's step and the learning rate (a float, or a one-element device tensor) on the device, so
nothing synchronizes with the host; the per-CTA scalars (bias corrections, step size) are
computed in double and rounded to fp32 as PyTorch rounds its scalar arguments. Accesses are 4
elements wide when the tensor's pointers are aligned. Offsets are 64-bit: a tensor may exceed
2^31 elements.

Limits: CUDA tensors on one device; params contiguous, float32, float16 or bfloat16; each grad
of its param's dtype and size, contiguous; exp_avgs and exp_avg_sqs float32 and contiguous;
steps float32 one-element tensors (moved to the params' device if they are elsewhere). Outside
these :func:`unsupported_reason` says why (``fastgpt.ops.fused_adamw_`` then raises ValueError for
``backend="cuda"``; ``auto`` falls back). fp16/bf16
params are rounded to nearest after each step (no fp32 master copy is kept here).
"""

from __future__ import annotations

import torch
from torch import Tensor

import fastgpt.ops.cuda  # noqa: F401  (loads fastgpt._C, registering torch.ops.fastgpt.*)
from fastgpt.ops._checks import adamw_scalars_problem

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@torch.library.register_fake("fastgpt::fused_adamw_")
def _(params, grads, exp_avgs, exp_avg_sqs, steps, lr_tensor, lr, beta1, beta2, eps, weight_decay, maximize):
    return None


def _params_problem(params: list[Tensor]) -> str | None:
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            return f"params[{i}] is not a tensor"
        reason = fastgpt.ops.cuda.device_problem(p.device)
        if reason is not None:
            return f"params[{i}] is on {p.device}; {reason}"
        if p.device != params[0].device:
            return f"params are on several devices ({params[0].device}, {p.device})"
        if p.dtype not in _DTYPES:
            return f"params[{i}] has dtype {p.dtype}; supported: float32, float16, bfloat16"
        if not p.is_contiguous():
            return f"params[{i}] is not contiguous (strides {p.stride()} for shape {tuple(p.shape)})"
    return None


def unsupported_reason(
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
) -> str | None:
    """Why these inputs are outside the kernel's limits (None when they are supported)."""
    reason = adamw_scalars_problem(lr, beta1, beta2, eps, weight_decay, maximize)
    if reason is not None:
        return reason
    reason = _params_problem(params)
    if reason is not None:
        return reason
    for name, ts in (("grads", grads), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs), ("steps", steps)):
        if len(ts) != len(params):
            return f"{name} has {len(ts)} tensors for {len(params)} params"
    for i, (p, g, m, v, s) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True)):
        if g.dtype != p.dtype or g.shape != p.shape or g.device != p.device or not g.is_contiguous():
            return f"grads[{i}] ({g.dtype}, {tuple(g.shape)}, {g.device}) must match its param and be contiguous"
        for name, t in (("exp_avgs", m), ("exp_avg_sqs", v)):
            if t.dtype != torch.float32 or t.shape != p.shape or t.device != p.device or not t.is_contiguous():
                return (
                    f"{name}[{i}] ({t.dtype}, {tuple(t.shape)}, {t.device}) must be float32, contiguous and"
                    " shaped like its param"
                )
        if not isinstance(s, Tensor) or s.numel() != 1 or s.dtype != torch.float32:
            return f"steps[{i}] must be a one-element float32 tensor, got {getattr(s, 'dtype', type(s).__name__)}"
    return None


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
    """One in-place AdamW step over lists of tensors; ``steps`` already incremented by the caller.

    ``lr`` is a float or a one-element tensor (read on the device, no host sync). Inputs are
    checked by :func:`unsupported_reason` before.
    """
    if not params:
        return
    device = params[0].device
    # a step kept elsewhere (e.g. on the CPU) is copied over; the kernel reads it on the device
    steps = [s if s.device == device else s.to(device, non_blocking=True) for s in steps]
    lr_tensor = None
    if isinstance(lr, Tensor):
        if lr.device == device:
            lr_tensor = lr.detach().reshape(()).to(torch.float32)
        else:
            lr = float(lr)  # a CPU tensor for CUDA params: reading it does not synchronize
    torch.ops.fastgpt.fused_adamw_(
        list(params),
        list(grads),
        list(exp_avgs),
        list(exp_avg_sqs),
        steps,
        lr_tensor,
        0.0 if lr_tensor is not None else float(lr),
        float(beta1),
        float(beta2),
        float(eps),
        float(weight_decay),
        bool(maximize),
    )
