"""Public functional API of fastgpt's ops.

Each op takes ``backend="auto" | "torch" | "triton" | "cuda"``. ``torch`` runs the reference in
:mod:`fastgpt.ops.reference` (attention through its SDPA form, ``sdpa_attention``); ``triton``
and ``cuda`` run our kernels. ``auto`` takes the best backend available for the tensors' device
whose kernel supports the inputs, falling back to the reference otherwise.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor

from fastgpt.ops import reference
from fastgpt.ops._backend import BackendUnavailable, available_backends, candidates

__all__ = [
    "BackendUnavailable",
    "available_backends",
    "flash_attention",
    "fused_adamw_",
    "resolve_backend",
    "rms_norm",
]


def _kernel_module(backend: str, op: str) -> ModuleType:
    return importlib.import_module(f"fastgpt.ops.{backend}.{op}")


def resolve_backend(backend: str, op: str, device: torch.device, *args: object) -> ModuleType:
    """The module implementing ``op`` for ``backend`` (the reference module for ``torch``).

    With ``auto``, a kernel whose ``unsupported_reason(*args)`` names a reason is skipped; with an
    explicit backend, the kernel module itself raises ``ValueError`` for unsupported inputs.
    """
    for name in candidates(backend, device):
        if name == "torch":
            return reference
        module = _kernel_module(name, op)
        if backend != "auto" or module.unsupported_reason(*args) is None:
            return module
    return reference


def flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = True,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """Causal (or bidirectional) attention, a drop-in for ``F.scaled_dot_product_attention``.

    q: (B, Hq, T, D); k, v: (B, Hkv, S, D) with Hq % Hkv == 0 (GQA/MQA when Hkv < Hq) and S >= T
    (S > T only when decoding with a KV cache; the kernels take S == T and ``auto`` falls back to
    the reference otherwise). Returns (B, Hq, T, D). ``scale`` defaults to 1/sqrt(D).
    """
    _check_attention(q, k, v)
    impl = resolve_backend(backend, "flash_attention", q.device, q, k, v)
    if impl is reference:
        return reference.sdpa_attention(q, k, v, causal, scale)
    return impl.flash_attention(q, k, v, causal, scale)


def rms_norm(
    x: Tensor,
    weight: Tensor | None,
    eps: float | None = None,
    residual: Tensor | None = None,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """RMSNorm over the last dim (``torch.nn.RMSNorm`` semantics; eps None = dtype's eps).

    With ``residual`` returns ``(rms_norm(x + residual), x + residual)``.
    """
    if weight is not None and weight.shape != x.shape[-1:]:
        raise ValueError(
            f"rms_norm: weight shape {tuple(weight.shape)} does not match the last dim of x {tuple(x.shape)}"
        )
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"rms_norm: residual shape {tuple(residual.shape)} differs from x {tuple(x.shape)}")
    eps = torch.finfo(x.dtype).eps if eps is None else float(eps)
    impl = resolve_backend(backend, "rms_norm", x.device, x, weight)
    return impl.rms_norm(x, weight, eps, residual)


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
    backend: str = "auto",
) -> None:
    """One in-place AdamW step over lists of tensors (``steps`` already incremented)."""
    if not params:
        return
    impl = resolve_backend(backend, "fused_adamw", params[0].device, params)
    impl.fused_adamw_(
        params, grads, exp_avgs, exp_avg_sqs, steps,
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, maximize=maximize,
    )


def _check_attention(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "flash_attention expects 4-D (B, H, T, D) tensors, "
            f"got q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(f"flash_attention: k{tuple(k.shape)} and v{tuple(v.shape)} must have the same shape")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3] or q.shape[2] > k.shape[2]:
        raise ValueError(
            f"flash_attention: q{tuple(q.shape)} and k{tuple(k.shape)} must share batch and head dim,"
            " and q may not be longer than k"
        )
    if q.shape[1] % k.shape[1]:
        raise ValueError(
            f"flash_attention: query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(f"flash_attention: q, k, v on different devices ({q.device}, {k.device}, {v.device})")
