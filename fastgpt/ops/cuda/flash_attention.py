"""Flash attention, forward and backward, in CUDA C++ (tensor-core ``mma.sync``, sm80+).

    S = q @ k^T * scale  (+ causal mask: key j > query i gets -inf)
    P = softmax(S)        out = P @ v
    dV = P^T dO    dP = dO V^T    dS = P * (dP - rowsum(dO * out))    dQ = dS K * scale    dK = dS^T Q * scale

Shapes: q (B, Hq, T, D), k and v (B, Hkv, T, D) with Hq % Hkv == 0 (GQA; MQA when Hkv == 1);
returns (B, Hq, T, D) like ``F.scaled_dot_product_attention(q, k, v, is_causal=causal)``. Must
match :func:`fastgpt.ops.reference.flash_attention` within the tolerance PyTorch itself achieves
in the same dtype.

How (kernels in ``csrc/flash_attn/``): the forward runs one CTA of 4 warps per 64 query rows,
streaming 64-key K/V tiles through double-buffered shared memory (``cp.async``) with an online
softmax in base 2 (log2(e) folded into the scale); it saves the natural-log log-sum-exp (fp32,
(B, Hq, T)). Causal tiles above the diagonal are never visited; only diagonal and ragged tiles are
masked. The backward computes delta = rowsum(dO * out), then dK/dV with one CTA per 64-key tile
looping over every query tile of every query head of its group (GQA gradients summed in
registers, K/V never copied), then dQ with one CTA per 64-query tile. No atomics: bitwise
deterministic.

Layout: the kernels read any strides whose head dim is unit-stride and whose other strides are
multiples of 8 elements with a 16-byte aligned start (the SDPA layout and a transposed view of a
(B, T, H, D) tensor both qualify; ``out`` and the gradients keep the inputs' layouts). Other
layouts are copied to contiguous first, costing one extra read and write of that tensor.

Limits: CUDA tensors on sm80+ (A100, H100), q, k, v of one dtype, float16 or bfloat16 (float32
is not supported: use the Triton or torch backend); head dim 64 or 128; k/v as long as q (no
KV-cache decoding, S == T); any T >= 1. Outside these :func:`unsupported_reason` names the reason:
``fastgpt.ops.flash_attention`` then raises ValueError for ``backend="cuda"``, and ``auto`` falls back. Not twice
differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor

import fastgpt.ops.cuda  # noqa: F401  (loads fastgpt._C, registering torch.ops.fastgpt.*)
from fastgpt.ops._checks import attention_scalars_problem, attention_shapes_problem, attention_tensors_problem

HEAD_DIMS = (64, 128)
_DTYPES = (torch.float16, torch.bfloat16)


@torch.library.register_fake("fastgpt::flash_attn_fwd")
def _(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    B, Hq, T, _ = q.shape
    return torch.empty_like(q), q.new_empty((B, Hq, T), dtype=torch.float32)


@torch.library.register_fake("fastgpt::flash_attn_bwd")
def _(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool, scale: float,
    window: None = None, softcap: None = None, doc_ids: None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _kernel_layout(t: Tensor) -> Tensor:
    """``t`` itself when the kernels can read its strides, else a contiguous copy."""
    ok = t.stride(3) == 1 and t.storage_offset() % 8 == 0
    ok = ok and all(t.shape[d] == 1 or t.stride(d) % 8 == 0 for d in range(3))
    return t if ok else t.contiguous()


def flash_attn_fwd(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, window: None = None,
                   softcap: None = None, doc_ids: None = None) -> tuple[Tensor, Tensor]:
    """Forward: ``(out (B, Hq, T, D), lse (B, Hq, T) fp32, natural log)``; inputs already validated
    (``window``, ``softcap`` and ``doc_ids`` are refused by ``unsupported_reason``: always None here)."""
    return torch.ops.fastgpt.flash_attn_fwd(_kernel_layout(q), _kernel_layout(k), _kernel_layout(v), causal, scale)


def flash_attn_bwd(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool, scale: float,
    window: None = None, softcap: None = None, doc_ids: None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward: ``(dq, dk, dv)``; dk/dv summed over each group of query heads."""
    q, k, v, out, dout = (_kernel_layout(t) for t in (q, k, v, out, dout))
    return torch.ops.fastgpt.flash_attn_bwd(dout, q, k, v, out, lse, causal, scale)


def unsupported_reason(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = True, scale: float | None = None,
    window: int | None = None, softcap: float | None = None, doc_ids: Tensor | None = None,
) -> str | None:
    """Why these inputs are outside the kernels' limits (None when they are supported)."""
    reason = attention_tensors_problem(q, k, v) or attention_scalars_problem(causal, scale)
    if reason is not None:
        return reason
    if window is not None or softcap is not None or doc_ids is not None:
        return "window, softcap and doc_ids are not supported by the CUDA kernels yet"
    reason = fastgpt.ops.cuda.device_problem(q.device)
    if reason is not None:
        return f"tensors are on {q.device}; {reason}"
    if not (q.dtype == k.dtype == v.dtype):
        return f"q, k, v must share one dtype (got {q.dtype}, {k.dtype}, {v.dtype})"
    if q.dtype not in _DTYPES:
        return f"dtype {q.dtype} is not supported (float16, bfloat16); use the triton or torch backend"
    if not fastgpt.ops.cuda.EMULATED and torch.cuda.get_device_properties(q.device).major < 8:  # constant-folded
        return f"the kernels need compute capability 8.0+ (fp16/bf16 mma.sync); {q.device} is older"
    reason = attention_shapes_problem(q, k, v)
    if reason is not None:
        return reason
    B, Hq, _, D = q.shape
    if D not in HEAD_DIMS:
        return f"head dim {D} is not supported ({', '.join(map(str, HEAD_DIMS))})"
    if B > 65535 or Hq > 65535:
        return f"batch ({B}) and query heads ({Hq}) must each be at most 65535"
    return None
