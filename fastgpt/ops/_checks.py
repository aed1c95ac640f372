"""Input checks that the Triton and the CUDA kernels share.

Each returns a one-line reason when the inputs are outside what every kernel backend accepts, or
None. The backends add their own limits (device, dtypes, head dims) around these; their
``unsupported_reason`` functions are what ``backend="auto"`` consults before picking them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def attention_tensors_problem(q: Tensor, k: Tensor, v: Tensor) -> str | None:
    """q, k, v must be 4-D tensors on one device."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            return f"{name} must be a 4-D (B, H, T, D) tensor, got {getattr(t, 'shape', type(t).__name__)}"
    if not (q.device == k.device == v.device):
        return f"q, k, v are on different devices ({q.device}, {k.device}, {v.device})"
    return None


def attention_shapes_problem(q: Tensor, k: Tensor, v: Tensor) -> str | None:
    """q (B, Hq, T, D) and k, v (B, Hkv, T, D) with Hq a multiple of Hkv."""
    (B, Hq, T, D), (Bk, Hkv, S, Dk) = q.shape, k.shape
    if k.shape != v.shape:
        return f"k{tuple(k.shape)} and v{tuple(v.shape)} must have the same shape"
    if B != Bk or D != Dk:
        return f"q{tuple(q.shape)} and k{tuple(k.shape)} must share batch size and head dim"
    if S != T:
        return f"the kernel needs as many keys as queries (T={T}, S={S}); KV-cache decoding is not supported"
    if Hkv == 0 or Hq % Hkv:
        return f"query heads ({Hq}) must be a multiple of key/value heads ({Hkv})"
    return None


def rms_norm_shapes_problem(x: Tensor, weight: Tensor | None, max_n: int) -> str | None:
    """x has a last dim of 1..max_n elements; weight, when given, is (N,) on x's device."""
    if not isinstance(x, Tensor) or x.dim() == 0:
        return "x must be a tensor with at least one dimension"
    n = x.shape[-1]
    if not 1 <= n <= max_n:
        return f"the normalized dim has {n} elements; the kernels support 1..{max_n}"
    if weight is not None:
        if weight.shape != (n,):
            return f"weight shape {tuple(weight.shape)} must be ({n},)"
        if weight.device != x.device:
            return f"weight is on {weight.device}, x on {x.device}"
    return None


def residual_problem(x: Tensor, residual: Tensor | None) -> str | None:
    """A residual, when given, must match x in shape, dtype and device."""
    if residual is None:
        return None
    if not isinstance(residual, Tensor) or residual.shape != x.shape:
        return f"residual shape {tuple(getattr(residual, 'shape', ()))} must equal x's {tuple(x.shape)}"
    if residual.dtype != x.dtype or residual.device != x.device:
        return f"residual ({residual.dtype}, {residual.device}) must match x ({x.dtype}, {x.device})"
    return None


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def attention_scalars_problem(causal: object, scale: object) -> str | None:
    """causal is a bool; scale is None or a finite number."""
    if not isinstance(causal, bool):
        return f"causal must be a bool, got {causal!r}"
    if scale is not None and not _is_real(scale):
        return f"scale must be None or a finite number, got {scale!r}"
    return None


def attention_variant_problem(q: Tensor, k: Tensor, window: object, softcap: object, doc_ids: object) -> str | None:
    """window is None or an int >= 1; softcap None or a finite number > 0; doc_ids None or an int32
    (B, S) tensor on q's device (S = k's length). Whether ids decrease is not checked here (that
    needs the values; the public op checks it)."""
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
        return f"window must be None or an int >= 1, got {window!r}"
    if softcap is not None and not (_is_real(softcap) and softcap > 0):
        return f"softcap must be None or a finite number > 0, got {softcap!r}"
    if doc_ids is None:
        return None
    if not isinstance(doc_ids, Tensor):
        return f"doc_ids must be None or a tensor, got {type(doc_ids).__name__}"
    B, S = q.shape[0], k.shape[2]
    if doc_ids.shape != (B, S):
        return f"doc_ids must have shape (B, T) = ({B}, {S}), got {tuple(doc_ids.shape)}"
    if doc_ids.dtype != torch.int32:
        return f"doc_ids must be int32, got {doc_ids.dtype}"
    if doc_ids.device != q.device:
        return f"doc_ids is on {doc_ids.device}, q on {q.device}"
    return None


def eps_problem(eps: object) -> str | None:
    """eps is None (the dtype's eps) or a finite number >= 0."""
    if eps is not None and not (_is_real(eps) and eps >= 0):
        return f"eps must be None or a finite number >= 0, got {eps!r}"
    return None


def adamw_scalars_problem(
    lr: object, beta1: object, beta2: object, eps: object, weight_decay: object, maximize: object
) -> str | None:
    """lr a finite number or a one-element floating tensor; the other hyperparameters finite numbers."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1 or not lr.is_floating_point():
            return f"lr must be a number or a one-element floating tensor, got {lr.dtype} of shape {tuple(lr.shape)}"
    elif not _is_real(lr):
        return f"lr must be a finite number, got {lr!r}"
    for name, value in (("beta1", beta1), ("beta2", beta2), ("eps", eps), ("weight_decay", weight_decay)):
        if not _is_real(value):
            return f"{name} must be a finite number, got {value!r}"
    if not isinstance(maximize, bool):
        return f"maximize must be a bool, got {maximize!r}"
    return None
