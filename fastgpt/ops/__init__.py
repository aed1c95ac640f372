"""Public functional API of fastgpt's ops.

Each op takes ``backend="auto" | "torch" | "triton" | "cuda"``. ``torch`` runs PyTorch's own
kernels (:mod:`fastgpt.ops.torch_path`: SDPA, ``F.rms_norm``, torch's fused/foreach AdamW), which
like ours are tested against the pure-PyTorch truth in :mod:`fastgpt.ops.reference`; ``triton``
and ``cuda`` run our kernels, found through :mod:`fastgpt.ops._registry` and driven by one
``autograd.Function`` per op (:mod:`fastgpt.ops._autograd`). Every argument of an op reaches the
kernel's ``unsupported_reason``: an explicit kernel backend raises ``ValueError`` with it, and
``auto`` never picks a kernel that refuses the inputs. Among those that accept them, ``auto``
picks by a check and a measurement (:mod:`fastgpt.ops.autotune`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastgpt.ops import _autotune_cache, autotune, torch_path
from fastgpt.ops._autograd import FlashAttention, RMSNorm
from fastgpt.ops._backend import BackendUnavailable, available_backends, require
from fastgpt.ops._checks import attention_variant_problem
from fastgpt.ops._registry import kernel
from fastgpt.ops.autotune import choose, set_autotune_group
from fastgpt.ops.linear_cross_entropy import linear_cross_entropy

__all__ = [
    "BackendUnavailable",
    "autotune_choices",
    "autotune_summary",
    "available_backends",
    "doc_ids_from_cu_seqlens",
    "flash_attention",
    "fused_adamw_",
    "linear_cross_entropy",
    "resolve_backend",
    "rms_norm",
    "set_autotune_group",
]


def resolve_backend(backend: str, op: str, device: torch.device, *args: object, **kwargs: object) -> str:
    """The backend that runs ``op`` (``flash_attention``, ``rms_norm``, ``fused_adamw``) on these arguments.

    ``auto`` chooses (:func:`fastgpt.ops.autotune.choose`); an explicit backend that cannot run
    here raises ``BackendUnavailable``, one whose kernel refuses the arguments ``ValueError``.
    """
    if backend == "auto":
        args = (*args, kwargs) if op == "fused_adamw" else args
        if torch.compiler.is_compiling():
            from fastgpt.ops import _compiling  # loaded while tracing, when torch._dynamo already is

            return _compiling.choose(op, device, args)
        return choose(op, device, args)
    require(backend, device)
    if backend != "torch":
        reason = kernel(backend, op).unsupported_reason(*args, **kwargs)
        if reason is not None:
            raise ValueError(f"{op} ({backend}): {reason}")
    return backend


def autotune_choices() -> dict[str, str]:
    """{readable key (op, device, dtype, shape class): backend} for every choice ``auto`` knows."""
    return {key: record["backend"] for key, record in sorted(_autotune_cache.records().items())}


def autotune_summary() -> str:
    """One line naming the backend ``auto`` runs for each (op, device, dtype, shape class) it met so far.

    For a training log, after the first step: the choices made, read from the cache, or received
    from rank 0.
    """
    choices = autotune.used()
    if not choices:
        return "ops (auto): torch path for every op (no kernel of ours competes on this device)"
    return "ops (auto): " + "; ".join(f"{key} -> {backend}" for key, backend in choices.items())


def flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = True,
    scale: float | None = None,
    *,
    window: int | None = None,
    softcap: float | None = None,
    doc_ids: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Causal (or bidirectional) attention, a drop-in for ``F.scaled_dot_product_attention``.

    q: (B, Hq, T, D); k, v: (B, Hkv, S, D) with Hq % Hkv == 0 (GQA/MQA when Hkv < Hq) and S >= T
    (S > T only when decoding with a KV cache; the kernels take S == T and ``auto`` falls back to
    the torch path otherwise). Returns (B, Hq, T, D). ``scale`` defaults to 1/sqrt(D).

    - ``window`` W (an int >= 1): query i sees keys j with i - W < j <= i (causal) or |i - j| < W.
    - ``softcap`` c (a number > 0): scores s become c * tanh(s / c) before the softmax.
    - ``doc_ids`` (B, S) int32, non-decreasing along each row: query i sees key j only when
      both carry the same id (packed documents; :func:`doc_ids_from_cu_seqlens` converts
      FlashAttention's ``cu_seqlens``). Checking that the ids never decrease reads them (one
      device sync), except under ``torch.compile``, where it is skipped.

    The masks combine; with S > T they are aligned to the end (query i stands at position i + S - T).
    """
    _check_attention(q, k, v)
    reason = attention_variant_problem(q, k, window, softcap, doc_ids)
    if reason is not None:
        raise ValueError(f"flash_attention: {reason}")
    if doc_ids is not None:
        if not torch.compiler.is_compiling() and bool((doc_ids[:, 1:] < doc_ids[:, :-1]).any()):
            raise ValueError("flash_attention: doc_ids must be non-decreasing along each row")
        doc_ids = doc_ids.contiguous()
    softcap = None if softcap is None else float(softcap)
    args = (q, k, v, causal, scale, window, softcap, doc_ids)
    name = resolve_backend(backend, "flash_attention", q.device, *args)
    if name == "torch":
        return torch_path.flash_attention(*args)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return FlashAttention.apply(name, q, k, v, causal, scale, window, softcap, doc_ids)


def doc_ids_from_cu_seqlens(cu_seqlens: Tensor, T: int) -> Tensor:
    """The (B, T) int32 ``doc_ids`` of a packed batch given by FlashAttention's ``cu_seqlens``.

    ``cu_seqlens`` (N + 1,) integer: cumulative document lengths over the flat (B * T,) token axis,
    0 first, non-decreasing, B * T last; document n covers tokens [cu_seqlens[n], cu_seqlens[n + 1])
    and gets id n. A document running past the end of a row continues, under the same id, in the
    next row, where its two parts cannot see each other (attention never crosses rows).
    """
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"doc_ids_from_cu_seqlens: T must be an int >= 1, got {T!r}")
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError("doc_ids_from_cu_seqlens: cu_seqlens must be a 1-D tensor of N + 1 >= 2 offsets")
    if cu_seqlens.is_floating_point() or cu_seqlens.is_complex() or cu_seqlens.dtype == torch.bool:
        raise ValueError(f"doc_ids_from_cu_seqlens: cu_seqlens must be integer, got {cu_seqlens.dtype}")
    bounds = cu_seqlens.to(torch.int64)
    total = int(bounds[-1])
    if int(bounds[0]) != 0 or bool((bounds[1:] < bounds[:-1]).any()):
        raise ValueError("doc_ids_from_cu_seqlens: cu_seqlens must start at 0 and never decrease")
    if total == 0 or total % T:
        raise ValueError(f"doc_ids_from_cu_seqlens: the last offset ({total}) must be a positive multiple of T={T}")
    tokens = torch.arange(total, device=cu_seqlens.device)
    ids = torch.searchsorted(bounds[1:], tokens, right=True)  # (B * T,) the document of each token
    return ids.to(torch.int32).reshape(total // T, T)


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
    name = resolve_backend(backend, "rms_norm", x.device, x, weight, eps, residual)
    eps = torch.finfo(x.dtype).eps if eps is None else float(eps)
    if name == "torch":
        return torch_path.rms_norm(x, weight, eps, residual)
    return RMSNorm.apply(name, x, weight, residual, eps)


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
    hyper = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, maximize=maximize)
    lists = (params, grads, exp_avgs, exp_avg_sqs, steps)
    name = resolve_backend(backend, "fused_adamw", params[0].device, *lists, **hyper)
    impl = torch_path if name == "torch" else kernel(name, "fused_adamw")
    impl.fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, steps, **hyper)


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
