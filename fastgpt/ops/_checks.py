"""Input checks that the Triton and the CUDA kernels share.

Each returns a one-line reason when the inputs are outside what every kernel backend accepts, or
None. The backends add their own limits (device, dtypes, head dims) around these; their
``unsupported_reason`` functions are what ``backend="auto"`` consults before picking them.
"""

from __future__ import annotations

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
