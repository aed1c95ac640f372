"""Fused multi-tensor AdamW step in Triton: one launch updates every tensor of a dtype.

    p <- p * (1 - lr * weight_decay)                       (decoupled weight decay)
    m <- m + (1 - beta1) * (g - m)                         (torch's lerp)
    v <- beta2 * v + (1 - beta2) * g * g
    p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    (g <- -g first when maximize)

Matches :func:`fastgpt.ops.reference.fused_adamw_`, i.e. ``torch.optim.AdamW``'s math, computed
in fp32 and written back in place.

How (multi-tensor apply): every tensor is cut into chunks of BLOCK elements; a host-built lookup
table maps each program to (tensor index, chunk start) and a table of raw addresses (int64
``data_ptr``) gives each program its param/grad/moment/step pointers, which the kernel casts to
typed pointers. The chunk table depends only on the tensors' sizes and the address table only on
their addresses, so both are cached (an optimizer's tensors keep their sizes, and usually their
addresses, from step to step). ``lr`` may be a float or a 0-d tensor on the device and each
tensor's step is read from its ``steps`` tensor in the kernel: no host synchronization. Offsets
are 64-bit, so a tensor may exceed 2^31 elements. The bias corrections 1 - beta^t are computed
as -expm1(t * ln(beta)), which stays exact in fp32 even when beta^t is close to 1.

Because the kernel reads raw addresses, the op is an opaque ``torch.library.custom_op``
(``fastgpt::fused_adamw_triton``), not a ``triton_op``: ``torch.compile`` keeps it as one call.

Limits: CUDA tensors (CPU only under ``TRITON_INTERPRET=1``, where the address tables work on host
memory); params and grads in fp32, fp16 or bf16 (bf16 under the interpreter only where it
computes bf16 by value, see :func:`fastgpt.ops.triton.interpreter_bf16_problem`), grads and
params of matching shape and strides, dense (contiguous or another non-overlapping layout
shared by the four tensors); exp_avg and exp_avg_sq fp32 like the param; steps scalar tensors
(fp32 ones on the params' device are read in place, others are first copied there);
0 <= beta < 1. Outside these :func:`unsupported_reason` says why (``fastgpt.ops.fused_adamw_``
then raises ``ValueError`` for ``backend="triton"``; ``auto`` falls back).
fp16/bf16 params are rounded to nearest after each step (no
fp32 master copy is kept here).
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastgpt.ops._backend import triton_interpreted
from fastgpt.ops._checks import adamw_scalars_problem
from fastgpt.ops.triton import interpreter_bf16_problem

# read once: TRITON_INTERPRET only takes effect if set before triton is imported
_INTERPRET = triton_interpreted()
_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
_BLOCK = 4096  # elements per program on GPU
_INTERPRET_BLOCK = 64  # small chunks so CPU tests cross chunk boundaries


@triton.jit
def _one_minus_pow(
    log_beta,  # ln(beta), fp32
    step,  # t, fp32
):
    # 1 - beta^t = -expm1(t * ln(beta)); a Taylor series for small |x| avoids the cancellation
    # of 1 - exp(x) when beta^t ~ 1 (beta2 = 0.999 at t = 1 would lose 4 of fp32's 7 digits)
    x = step * log_beta
    series = x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0)))))
    return -tl.where(tl.abs(x) < 0.1, series, tl.exp(x) - 1.0)


@triton.jit
def _fused_adamw_kernel(
    Ptrs,  # int64 (5, N_TENSORS): addresses of params, grads, exp_avgs, exp_avg_sqs, steps
    Numels,  # int64 (N_TENSORS,): elements of each tensor
    ChunkTensor,  # int32 (programs,): the tensor each program updates
    ChunkStart,  # int64 (programs,): the first element of its chunk
    Lr,  # fp32 0-d tensor holding lr; read only when LR_IS_TENSOR
    lr,  # learning rate as a number (when not LR_IS_TENSOR)
    one_minus_beta1, one_minus_beta2,  # 1 - beta, computed on the host in float64
    beta2,  # second-moment decay rate
    log_beta1, log_beta2,  # ln(beta1), ln(beta2), computed on the host in float64
    eps,  # denominator guard
    weight_decay,  # decoupled weight decay
    N_TENSORS,  # tensors in the tables
    P_DTYPE: tl.constexpr,  # param element type
    G_DTYPE: tl.constexpr,  # grad element type
    LR_IS_TENSOR: tl.constexpr,  # read lr from Lr
    MAXIMIZE: tl.constexpr,  # ascend instead of descend
    BLOCK: tl.constexpr,  # elements per program
):
    pid = tl.program_id(0)
    t = tl.load(ChunkTensor + pid)
    start = tl.load(ChunkStart + pid)
    n = tl.load(Numels + t)
    # raw addresses -> typed pointers
    param = tl.load(Ptrs + t).to(tl.pointer_type(P_DTYPE))
    grad = tl.load(Ptrs + N_TENSORS + t).to(tl.pointer_type(G_DTYPE))
    exp_avg = tl.load(Ptrs + 2 * N_TENSORS + t).to(tl.pointer_type(tl.float32))
    exp_avg_sq = tl.load(Ptrs + 3 * N_TENSORS + t).to(tl.pointer_type(tl.float32))
    step = tl.load(tl.load(Ptrs + 4 * N_TENSORS + t).to(tl.pointer_type(tl.float32)))
    if LR_IS_TENSOR:
        lr = tl.load(Lr)
    lr = tl.cast(lr, tl.float32)
    one_minus_beta1 = tl.cast(one_minus_beta1, tl.float32)
    one_minus_beta2 = tl.cast(one_minus_beta2, tl.float32)
    beta2 = tl.cast(beta2, tl.float32)
    eps = tl.cast(eps, tl.float32)
    weight_decay = tl.cast(weight_decay, tl.float32)

    offs = start + tl.arange(0, BLOCK).to(tl.int64)  # 64-bit: tensors may exceed 2^31 elements
    mask = offs < n
    p = tl.load(param + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(grad + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(exp_avg + offs, mask=mask, other=0.0)
    v = tl.load(exp_avg_sq + offs, mask=mask, other=1.0)  # 1 keeps masked lanes free of 0/0
    if MAXIMIZE:
        g = -g
    p = p * (1.0 - lr * weight_decay)
    m = m + one_minus_beta1 * (g - m)
    v = v * beta2 + one_minus_beta2 * g * g
    bias_correction1 = _one_minus_pow(tl.cast(log_beta1, tl.float32), step)
    bias_correction2 = _one_minus_pow(tl.cast(log_beta2, tl.float32), step)
    # IEEE square roots (tl.sqrt is approximate on GPU), as torch computes them
    denom = tl.sqrt_rn(v) / tl.sqrt_rn(bias_correction2) + eps
    p = p - (lr / bias_correction1) * (m / denom)
    tl.store(param + offs, p.to(P_DTYPE), mask=mask)
    tl.store(exp_avg + offs, m, mask=mask)
    tl.store(exp_avg_sq + offs, v, mask=mask)


@functools.lru_cache(maxsize=16)
def _chunk_table(numels: tuple[int, ...], block: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(Numels int64, ChunkTensor int32, ChunkStart int64) on ``device`` for tensors of these sizes."""
    sizes = torch.tensor(numels, dtype=torch.int64)
    chunks = (sizes + block - 1) // block  # (n_tensors,)
    tensor = torch.repeat_interleave(torch.arange(len(numels)), chunks)  # (n_chunks,)
    first_chunk = torch.cumsum(chunks, 0) - chunks  # (n_tensors,) index of each tensor's first chunk
    start = (torch.arange(len(tensor)) - first_chunk[tensor]) * block  # (n_chunks,)
    return _to_device(sizes, device), _to_device(tensor.to(torch.int32), device), _to_device(start, device)


@functools.lru_cache(maxsize=16)
def _pointer_table(ptrs: tuple[int, ...], device: torch.device) -> Tensor:
    """The addresses as an int64 (5, n_tensors) tensor on ``device`` (keyed by the addresses)."""
    return _to_device(torch.tensor(ptrs, dtype=torch.int64).view(5, -1), device)


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    # from pinned memory the copy is asynchronous: building a table never waits for the GPU
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def _is_dense(t: Tensor) -> bool:
    """t's elements fill exactly numel() consecutive slots of memory (any dim order)."""
    expected = 1
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride(), strict=True) if s != 1):
        if stride != expected:
            return False
        expected *= size
    return True


@torch.library.custom_op("fastgpt::fused_adamw_triton", mutates_args=("params", "exp_avgs", "exp_avg_sqs"))
def fused_adamw_op(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    lr_tensor: Tensor | None,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    """One launch per (param dtype, grad dtype) group; inputs already validated."""
    if not params:
        return
    device = params[0].device
    block = _INTERPRET_BLOCK if _INTERPRET else _BLOCK
    log_beta1 = math.log(beta1) if beta1 > 0 else float("-inf")
    log_beta2 = math.log(beta2) if beta2 > 0 else float("-inf")
    groups: dict[tuple[torch.dtype, torch.dtype], list[int]] = {}
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        if p.numel() > 0:
            groups.setdefault((p.dtype, g.dtype), []).append(i)
    for (p_dtype, g_dtype), idx in groups.items():
        numels, chunk_tensor, chunk_start = _chunk_table(tuple(params[i].numel() for i in idx), block, device)
        ptrs = _pointer_table(
            tuple(ts[i].data_ptr() for ts in (params, grads, exp_avgs, exp_avg_sqs, steps) for i in idx), device
        )
        _fused_adamw_kernel[(chunk_tensor.numel(),)](
            ptrs, numels, chunk_tensor, chunk_start, lr_tensor if lr_tensor is not None else numels,
            lr, 1.0 - beta1, 1.0 - beta2, beta2, log_beta1, log_beta2, eps, weight_decay, len(idx),
            P_DTYPE=_DTYPES[p_dtype], G_DTYPE=_DTYPES[g_dtype], LR_IS_TENSOR=lr_tensor is not None,
            MAXIMIZE=maximize, BLOCK=block, num_warps=8,
        )


@fused_adamw_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, steps, lr_tensor, lr, beta1, beta2, eps, weight_decay, maximize):
    return None


def _params_problem(params: list[Tensor]) -> str | None:
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            return f"params[{i}] is not a tensor"
        if p.device.type != "cuda" and not (p.device.type == "cpu" and _INTERPRET):
            return f"params[{i}] is on {p.device}; the Triton kernels need CUDA (or CPU under TRITON_INTERPRET=1)"
        if p.device != params[0].device:
            return f"params are on several devices ({params[0].device}, {p.device})"
        if p.dtype not in _DTYPES:
            return f"params[{i}] has dtype {p.dtype}; supported: float32, float16, bfloat16"
        if p.dtype == torch.bfloat16 and _INTERPRET and interpreter_bf16_problem():
            return interpreter_bf16_problem()
        if not _is_dense(p):
            return f"params[{i}] is not dense in memory (strides {p.stride()} for shape {tuple(p.shape)})"
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
    lists = {"grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs, "steps": steps}
    for name, ts in lists.items():
        if len(ts) != len(params):
            return f"{name} has {len(ts)} tensors for {len(params)} params"
    reason = _params_problem(params)
    if reason is not None:
        return reason
    for i, (p, g, m, v, s) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True)):
        if g.dtype not in _DTYPES:
            return f"grads[{i}] has unsupported dtype {g.dtype}"
        if g.dtype == torch.bfloat16 and _INTERPRET and interpreter_bf16_problem():
            return f"grads[{i}]: {interpreter_bf16_problem()}"
        for name, t in (("grads", g), ("exp_avgs", m), ("exp_avg_sqs", v)):
            if t.shape != p.shape or t.device != p.device or (p.numel() > 1 and t.stride() != p.stride()):
                return f"{name}[{i}] ({tuple(t.shape)}, strides {t.stride()}, {t.device}) must match its param"
        if m.dtype != torch.float32 or v.dtype != torch.float32:
            return f"exp_avgs[{i}]/exp_avg_sqs[{i}] must be float32, got {m.dtype}/{v.dtype}"
        if not isinstance(s, Tensor) or s.numel() != 1 or not s.is_floating_point():
            return f"steps[{i}] must be a floating-point scalar tensor, got {getattr(s, 'shape', s)}"
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        return f"betas ({beta1}, {beta2}) must be in [0, 1)"
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

    ``lr`` is a float or a 0-d tensor (read on the device, no host sync). Inputs are checked
    by :func:`unsupported_reason` before.
    """
    if not params:
        return
    device = params[0].device
    if any(s.device != device or s.dtype != torch.float32 for s in steps):
        # e.g. step counters kept on the CPU: one small copy brings all of them over
        steps = torch.stack([s.detach().reshape(()).float() for s in steps]).to(device).unbind()
    lr_tensor = None
    if isinstance(lr, Tensor):
        if lr.device == device:
            lr_tensor = lr.detach().reshape(()).to(torch.float32)
        else:
            lr_tensor = None
            lr = float(lr)  # a CPU tensor for CUDA params: reading it does not synchronize
    fused_adamw_op(
        list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), list(steps), lr_tensor,
        0.0 if lr_tensor is not None else float(lr), float(beta1), float(beta2), float(eps),
        float(weight_decay), bool(maximize),
    )
