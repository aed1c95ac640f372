"""Where each kernel backend's ops live: one table from backend name to its op modules.

Every op module of a backend has the same interface, so one ``autograd.Function`` per op
(:mod:`fastgpt.ops._autograd`) drives any backend:

- ``flash_attention``: ``flash_attn_fwd(q, k, v, causal, scale, window, softcap, doc_ids) -> (out, lse)``
  (lse natural log, fp32, (B, Hq, T)), ``flash_attn_bwd(dout, q, k, v, out, lse, causal, scale, window,
  softcap, doc_ids) -> (dq, dk, dv)``, where ``window`` is ``int | None``, ``softcap`` ``float | None``
  and ``doc_ids`` a contiguous int32 (B, T) tensor or None (see :func:`fastgpt.ops.flash_attention`);
  ``unsupported_reason(q, k, v, causal, scale, window=None, softcap=None, doc_ids=None)``;
- ``rms_norm``: ``rms_norm_fwd(x, weight, residual, eps) -> (y, h, rstd)``,
  ``rms_norm_bwd(dy, dh, h, weight, rstd) -> (dx, dweight)``;
- ``fused_adamw``: ``fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2,
  eps, weight_decay, maximize)``;

and each has ``unsupported_reason`` taking every argument of the public op (None when the kernel
supports them). The modules are imported on first use: importing a backend loads Triton or the
CUDA extension.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

OPS = ("flash_attention", "rms_norm", "fused_adamw")


def _triton() -> dict[str, ModuleType]:
    from fastgpt.ops.triton import flash_attention, fused_adamw, rms_norm

    return {"flash_attention": flash_attention, "rms_norm": rms_norm, "fused_adamw": fused_adamw}


def _cuda() -> dict[str, ModuleType]:
    from fastgpt.ops.cuda import flash_attention, fused_adamw, rms_norm

    return {"flash_attention": flash_attention, "rms_norm": rms_norm, "fused_adamw": fused_adamw}


KERNEL_BACKENDS: dict[str, Callable[[], dict[str, ModuleType]]] = {"cuda": _cuda, "triton": _triton}
"""Our kernel backends, best first in the fixed order, each with the loader of its op modules."""


def kernel(backend: str, op: str) -> ModuleType:
    """The module implementing ``op`` (one of :data:`OPS`) for kernel ``backend``."""
    if backend not in KERNEL_BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; choose one of {', '.join(KERNEL_BACKENDS)}")
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose one of {', '.join(OPS)}")
    return KERNEL_BACKENDS[backend]()[op]
