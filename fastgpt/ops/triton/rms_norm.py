"""RMSNorm, forward and backward, with an optional fused residual add, in Triton.

    h = x (+ residual, added in x's dtype)       rstd = 1 / sqrt(mean(h^2) + eps)
    y = h * rstd * weight                          (over the last dim, statistics in fp32)
    dh = rstd * (g - h_hat * mean(g * h_hat)) (+ grad of the returned h),   g = dy * weight,  h_hat = h * rstd
    dweight = sum over rows of dy * h_hat;    dx = dresidual = dh

Matches :func:`fastgpt.ops.reference.rms_norm` (``torch.nn.RMSNorm`` semantics); with a residual
it returns ``(y, h)`` so a pre-norm block reads the residual stream once.

How: one program per row in the forward. A row of up to 8192 columns is held in registers and
read once; longer rows (up to 65536) are processed in chunks of 4096, two passes (sum of squares,
then normalize; the residual sum is recomputed rather than re-read). The forward saves rstd (fp32,
one per row) and the backward re-reads h. The backward runs a fixed number of programs, each
looping over rows with a stride, and accumulates its partial dweight in fp32; the partials are
written to a (programs, N) buffer and summed by a second reduction. No atomics: deterministic.

Limits: CUDA tensors (CPU only under ``TRITON_INTERPRET=1``); x in fp16, bf16 or fp32 (bf16
under the interpreter only where it computes bf16 by value, see
:func:`fastgpt.ops.triton.interpreter_bf16_problem`), any shape (..., N) with 1 <= N <= 65536 (non-contiguous inputs are
copied to rows); weight None (no affine) or (N,) in any of those dtypes; residual like x.
Outputs are in x's dtype, dweight in weight's dtype. Outside the limits :func:`unsupported_reason` says why:
``fastgpt.ops.rms_norm`` then raises ``ValueError`` for ``backend="triton"``, and ``auto`` falls back.
Not twice differentiable.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from fastgpt.ops._backend import triton_interpreted
from fastgpt.ops._checks import eps_problem, residual_problem, rms_norm_shapes_problem
from fastgpt.ops.triton import interpreter_bf16_problem

# read once: TRITON_INTERPRET only takes effect if set before triton is imported
_INTERPRET = triton_interpreted()
MAX_N = 65536
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_BLOCK_N = 8192  # rows up to this many columns are read once, whole
_LOOP_BLOCK_N = 4096  # chunk size for longer rows


@triton.jit
def _rms_norm_load_h(
    X, R,  # this row's input and residual pointers
    cols, mask,  # column indices of the chunk and which are < N
    HAS_RESIDUAL: tl.constexpr,
):
    h = tl.load(X + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        # the sum is rounded to x's dtype, exactly like the reference's x + residual
        h = (h.to(tl.float32) + tl.load(R + cols, mask=mask, other=0.0).to(tl.float32)).to(h.dtype)
    return h


@triton.jit
def _rms_norm_fwd_kernel(
    X,  # input (M, N), unit column stride
    R,  # residual (M, N); read only when HAS_RESIDUAL
    W,  # weight (N,); read only when HAS_WEIGHT
    Y,  # output (M, N), x's dtype
    H,  # output h = x + residual (M, N); written only when HAS_RESIDUAL
    Rstd,  # output: 1 / sqrt(mean(h^2) + eps) per row, fp32 (M,)
    stride_xm, stride_rm, stride_ym, stride_hm,  # row strides
    N,  # columns
    eps,  # added to mean(h^2)
    BLOCK_N: tl.constexpr,  # columns per chunk (>= N when SINGLE_BLOCK)
    SINGLE_BLOCK: tl.constexpr,  # the row fits one chunk: read it once
    HAS_WEIGHT: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    row64 = tl.program_id(0).to(tl.int64)  # 64-bit row offsets: M * N may exceed 2^31
    X += row64 * stride_xm
    R += row64 * stride_rm
    Y += row64 * stride_ym
    H += row64 * stride_hm
    eps = tl.cast(eps, tl.float32)
    if SINGLE_BLOCK:
        cols = tl.arange(0, BLOCK_N)
        mask = cols < N
        h = _rms_norm_load_h(X, R, cols, mask, HAS_RESIDUAL)
        if HAS_RESIDUAL:
            tl.store(H + cols, h, mask=mask)
        hf = h.to(tl.float32)
        rstd = tl.rsqrt(tl.sum(hf * hf, 0) / N + eps)  # masked columns loaded as 0 add nothing
        y = hf * rstd
        if HAS_WEIGHT:
            y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=mask)
    else:
        sum_sq = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = cols < N
            h = _rms_norm_load_h(X, R, cols, mask, HAS_RESIDUAL)
            if HAS_RESIDUAL:
                tl.store(H + cols, h, mask=mask)
            hf = h.to(tl.float32)
            sum_sq += hf * hf
        rstd = tl.rsqrt(tl.sum(sum_sq, 0) / N + eps)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = cols < N
            y = _rms_norm_load_h(X, R, cols, mask, HAS_RESIDUAL).to(tl.float32) * rstd
            if HAS_WEIGHT:
                y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Rstd + row64, rstd)


@triton.jit
def _rms_norm_bwd_kernel(
    DY,  # gradient of y (M, N), unit column stride
    H,  # the normalized input h (M, N) saved by the forward
    W,  # weight (N,); read only when HAS_WEIGHT
    Rstd,  # fp32 (M,) from the forward
    DH,  # gradient of the returned h (M, N); read only when HAS_DH
    DX,  # output: gradient of x (and of residual) (M, N)
    DWPartial,  # output: fp32 (num_programs, N) per-program partial sums of dweight
    stride_dym, stride_hm, stride_dhm, stride_dxm,  # row strides
    M, N,
    BLOCK_N: tl.constexpr,  # columns per chunk (>= N when SINGLE_BLOCK)
    SINGLE_BLOCK: tl.constexpr,  # the row fits one chunk
    HAS_WEIGHT: tl.constexpr,
    HAS_DH: tl.constexpr,
):
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    DWPartial += pid.to(tl.int64) * N
    if SINGLE_BLOCK:
        cols = tl.arange(0, BLOCK_N)
        mask = cols < N
        if HAS_WEIGHT:
            w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK_N], dtype=tl.float32)
        for row in range(pid, M, num_programs):
            row64 = tl.cast(row, tl.int64)  # 64-bit row offsets: M * N may exceed 2^31
            rstd = tl.load(Rstd + row64)
            h_hat = tl.load(H + row64 * stride_hm + cols, mask=mask, other=0.0).to(tl.float32) * rstd
            dy = tl.load(DY + row64 * stride_dym + cols, mask=mask, other=0.0).to(tl.float32)
            g = dy * w if HAS_WEIGHT else dy
            c = tl.sum(g * h_hat, 0) / N
            dx = (g - h_hat * c) * rstd
            if HAS_DH:
                dx += tl.load(DH + row64 * stride_dhm + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(DX + row64 * stride_dxm + cols, dx.to(DX.dtype.element_ty), mask=mask)
            dw += dy * h_hat
        if HAS_WEIGHT:
            tl.store(DWPartial + cols, dw, mask=mask)
    else:
        for row in range(pid, M, num_programs):
            row64 = tl.cast(row, tl.int64)  # 64-bit row offsets: M * N may exceed 2^31
            rstd = tl.load(Rstd + row64)
            # pass 1: c = mean(g * h_hat) over the whole row
            acc = tl.zeros([BLOCK_N], dtype=tl.float32)
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                mask = cols < N
                h_hat = tl.load(H + row64 * stride_hm + cols, mask=mask, other=0.0).to(tl.float32) * rstd
                g = tl.load(DY + row64 * stride_dym + cols, mask=mask, other=0.0).to(tl.float32)
                if HAS_WEIGHT:
                    g = g * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
                acc += g * h_hat
            c = tl.sum(acc, 0) / N
            # pass 2: dx, and this program's dweight partial (a buffer row only it touches)
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                mask = cols < N
                h_hat = tl.load(H + row64 * stride_hm + cols, mask=mask, other=0.0).to(tl.float32) * rstd
                dy = tl.load(DY + row64 * stride_dym + cols, mask=mask, other=0.0).to(tl.float32)
                g = dy
                if HAS_WEIGHT:
                    g = dy * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
                    dw = tl.load(DWPartial + cols, mask=mask, other=0.0)
                    tl.store(DWPartial + cols, dw + dy * h_hat, mask=mask)
                dx = (g - h_hat * c) * rstd
                if HAS_DH:
                    dx += tl.load(DH + row64 * stride_dhm + cols, mask=mask, other=0.0).to(tl.float32)
                tl.store(DX + row64 * stride_dxm + cols, dx.to(DX.dtype.element_ty), mask=mask)


def _rows(t: Tensor, n: int) -> Tensor:
    """t as (M, N) rows with unit column stride (a view when possible)."""
    rows = t.reshape(-1, n)
    return rows if rows.stride(-1) == 1 or n == 1 else rows.contiguous()


def _blocking(n: int) -> tuple[int, bool, int]:
    """(BLOCK_N, SINGLE_BLOCK, num_warps) for rows of n columns."""
    block = triton.next_power_of_2(n)
    single = block <= _MAX_BLOCK_N
    block = block if single else _LOOP_BLOCK_N
    return block, single, min(max(block // 256, 1), 16)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _bwd_programs(x: Tensor, m: int, single: bool) -> int:
    if _INTERPRET or x.device.type != "cuda":
        return max(1, min(m, 3))  # several rows per program, as on GPU
    # long rows: fewer programs keep the (programs, N) fp32 partial buffer small
    return max(1, min(m, _sm_count(x.device.index or 0) * (4 if single else 1)))


@triton_op("fastgpt::rms_norm_fwd_triton", mutates_args=())
def rms_norm_fwd(
    x: Tensor, weight: Tensor | None, residual: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Forward: ``(y like x, h like x or empty (0,) without residual, rstd (M,) fp32)``."""
    n = x.shape[-1]
    x2 = _rows(x, n)
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    h = torch.empty((m, n) if residual is not None else (0,), dtype=x.dtype, device=x.device)
    rstd = torch.empty((m,), dtype=torch.float32, device=x.device)
    r2 = _rows(residual, n) if residual is not None else x2
    if m > 0:
        block, single, num_warps = _blocking(n)
        wrap_triton(_rms_norm_fwd_kernel)[(m,)](
            x2, r2, weight if weight is not None else x2, y, h if residual is not None else y, rstd,
            x2.stride(0), r2.stride(0), y.stride(0), n, n, eps,
            BLOCK_N=block, SINGLE_BLOCK=single, HAS_WEIGHT=weight is not None,
            HAS_RESIDUAL=residual is not None, num_warps=num_warps,
        )
    h = h.view(x.shape) if residual is not None else h
    return y.view(x.shape), h, rstd


@triton_op("fastgpt::rms_norm_bwd_triton", mutates_args=())
def rms_norm_bwd(
    dy: Tensor, dh: Tensor | None, h: Tensor, weight: Tensor | None, rstd: Tensor
) -> tuple[Tensor, Tensor]:
    """Backward: ``(dx like h, dweight like weight or empty (0,) without weight)``."""
    n = h.shape[-1]
    h2, dy2 = _rows(h, n), _rows(dy, n)
    dh2 = _rows(dh, n) if dh is not None else dy2
    m = h2.shape[0]
    dx = torch.empty((m, n), dtype=h.dtype, device=h.device)
    block, single, num_warps = _blocking(n)
    programs = _bwd_programs(h, m, single)
    # the looped kernel accumulates into its buffer row, so that one must start at zero
    alloc = torch.empty if single else torch.zeros
    partial = alloc((programs, n) if weight is not None else (0,), dtype=torch.float32, device=h.device)
    if m > 0:
        wrap_triton(_rms_norm_bwd_kernel)[(programs,)](
            dy2, h2, weight if weight is not None else h2, rstd, dh2, dx, partial if weight is not None else dx,
            dy2.stride(0), h2.stride(0), dh2.stride(0), dx.stride(0), m, n,
            BLOCK_N=block, SINGLE_BLOCK=single, HAS_WEIGHT=weight is not None, HAS_DH=dh is not None,
            num_warps=num_warps,
        )
    if weight is None:
        dw = torch.empty((0,), dtype=h.dtype, device=h.device)
    elif m == 0:
        dw = torch.zeros_like(weight)
    else:
        dw = partial.sum(0).to(weight.dtype)  # second stage of the dweight reduction, fp32
    return dx.view(h.shape), dw


def unsupported_reason(
    x: Tensor, weight: Tensor | None, eps: float | None = None, residual: Tensor | None = None
) -> str | None:
    """Why these inputs are outside the kernel's limits (None when they are supported)."""
    reason = rms_norm_shapes_problem(x, weight, MAX_N) or residual_problem(x, residual) or eps_problem(eps)
    if reason is not None:
        return reason
    if x.device.type != "cuda" and not (x.device.type == "cpu" and _INTERPRET):
        return f"x is on {x.device}; the Triton kernels need CUDA (or CPU under TRITON_INTERPRET=1)"
    for name, t in (("x", x), ("weight", weight)):
        if t is not None and t.dtype not in _DTYPES:
            return f"{name}'s dtype {t.dtype} is not supported (float16, bfloat16, float32)"
    if _INTERPRET and torch.bfloat16 in (x.dtype, getattr(weight, "dtype", None)) and interpreter_bf16_problem():
        return interpreter_bf16_problem()
    return None
