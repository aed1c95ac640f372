"""Linear cross-entropy without the (N, V) logits: the torch backend, chunked over the tokens.

``loss = cross_entropy(h @ weight.T (+ bias), targets)``, with an optional tanh softcap on the
logits and a z-loss; it must match :func:`fastgpt.ops.reference.linear_cross_entropy`.

The forward walks the N tokens in chunks of :func:`chunk_rows` rows. For each chunk it makes the
chunk's logits (input dtype matmul, then fp32), their logsumexp, and - when a gradient is wanted -
the gradient of the chunk's loss with respect to the logits, which it turns at once into the
chunk's rows of grad h and its share of grad weight and grad bias (accumulated in fp32). So no
tensor larger than chunk x V ever lives, forward or backward, and the backward of a ``mean`` or
``sum`` only scales the stored gradients by the incoming scalar. With ``reduction="none"`` the
incoming gradient differs per token and is unknown in the forward: the backward walks the chunks
again with it (a second matmul pass).

Backends: only ``torch`` (this file). Our Triton kernel for this op is not written yet, and there
is no CUDA kernel for it: ``backend="triton"`` or ``"cuda"`` is a ``ValueError`` saying so, and
``auto`` runs this path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


def chunk_rows(N: int, V: int, d: int) -> int:
    """Rows per chunk: a power of two making the chunk's logits about as large as h itself
    (N * d elements), at least 128 rows so each matmul stays efficient, at most N."""
    rows = max(128, 1 << max(0, math.ceil(math.log2(max(1.0, N * d / V)))))
    return min(N, rows) if N > 0 else 1


def _chunk(
    h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, ignore_index: int,
    softcap: float | None, z_loss: float, row_scale: Tensor | None, want_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Per-token losses (n,) fp32 of one chunk and, if ``want_grad``, d(sum of row_scale * loss)/dz
    (n, V) fp32 with respect to the pre-softcap logits z."""
    z = (h @ weight.T).float()  # (n, V)
    if bias is not None:
        z += bias.float()
    if softcap is not None:
        t = torch.tanh(z / softcap)  # (n, V)
        s = t * softcap
    else:
        s = z
    counted = targets != ignore_index  # (n,)
    safe = torch.where(counted, targets, 0).long()[:, None]  # (n, 1)
    lse = torch.logsumexp(s, dim=-1)  # (n,)
    loss = lse - s.gather(1, safe)[:, 0] + z_loss * lse * lse
    loss = torch.where(counted, loss, 0.0)
    if not want_grad:
        return loss, None
    # d loss / d s = softmax(s) (1 + 2 z_loss lse) - onehot(target); written into s's storage
    coef = counted.float() * (1.0 + 2.0 * z_loss * lse)  # (n,)
    if row_scale is not None:
        coef = coef * row_scale
    ds = s.sub_(lse[:, None]).exp_().mul_(coef[:, None])
    onehot = (counted.float() if row_scale is None else counted.float() * row_scale)[:, None]
    ds.scatter_add_(1, safe, -onehot)
    if softcap is not None:
        ds.mul_(1.0 - t * t)  # d(c tanh(z/c))/dz = 1 - tanh(z/c)^2
    return loss, ds


def _run(
    h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, ignore_index: int,
    softcap: float | None, z_loss: float, row_scale: Tensor | None, want_grad: bool, rows: int,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Losses (N,) fp32 and (when ``want_grad``) grads h (N, d) in h's dtype, weight (V, d) and bias
    (V,) in fp32, of sum(row_scale * loss) (row_scale None: 1)."""
    N = h.shape[0]
    losses = torch.empty(N, dtype=torch.float32, device=h.device)
    dh = torch.empty_like(h, memory_format=torch.contiguous_format) if want_grad else None
    dw = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if want_grad else None
    db = torch.zeros(weight.shape[0], dtype=torch.float32, device=h.device) if want_grad and bias is not None else None
    for start in range(0, N, rows):
        end = min(N, start + rows)
        hc = h[start:end]
        scale = None if row_scale is None else row_scale[start:end]
        losses[start:end], dz = _chunk(hc, weight, bias, targets[start:end], ignore_index, softcap, z_loss,
                                       scale, want_grad)
        if dz is not None:
            dzc = dz.to(h.dtype)  # the logits' gradient in the input dtype, as the unfused autograd has it
            torch.matmul(dzc, weight, out=dh[start:end])
            if dzc.dtype == torch.float32:
                dw.addmm_(dzc.T, hc)
            else:
                dw += (dzc.T @ hc).float()
            if db is not None:
                db += dz.sum(0)
    return losses, dh, dw, db


class LinearCrossEntropy(torch.autograd.Function):
    """The chunked path as one autograd node: the forward keeps grads (mean/sum) or inputs (none)."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, ignore_index, softcap, z_loss, reduction, rows):
        want_grad = any(ctx.needs_input_grad[:3])
        counted = (targets != ignore_index).sum().clamp(min=1)
        losses, dh, dw, db = _run(h, weight, bias, targets, ignore_index, softcap, z_loss, None,
                                  want_grad and reduction != "none", rows)
        ctx.reduction, ctx.args = reduction, (ignore_index, softcap, z_loss)
        ctx.rows = rows
        if reduction == "none":
            ctx.save_for_backward(h, weight, bias, targets)
            return losses
        if want_grad and reduction == "mean":
            dh /= counted.to(dh.dtype)
            dw /= counted
            if db is not None:
                db /= counted
        ctx.save_for_backward(dh, dw, db)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        total = losses.sum()
        return total / counted if reduction == "mean" else total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        if ctx.reduction == "none":
            h, weight, bias, targets = ctx.saved_tensors
            _, dh, dw, db = _run(h, weight, bias, targets, *ctx.args, grad.float(), True, ctx.rows)
            dw = dw.to(weight.dtype)
            db = None if db is None else db.to(bias.dtype)
        else:
            dh, dw, db = ctx.saved_tensors
            dh = dh * grad.to(dh.dtype)
            dw = (dw * grad).to(ctx.dtypes[0])
            db = None if db is None else (db * grad).to(ctx.dtypes[1])
        needs = ctx.needs_input_grad
        return (dh if needs[0] else None, dw if needs[1] else None, db if needs[2] else None,
                None, None, None, None, None, None)


def check(h: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None, ignore_index: int,
          softcap: float | None, z_loss: float, reduction: str) -> None:
    """Raise ``ValueError`` naming the argument a user got wrong (shapes, dtypes, range, choices)."""
    name = "linear_cross_entropy"
    if h.dim() != 2:
        raise ValueError(f"{name}: h must be 2-D (N, d), got shape {tuple(h.shape)}")
    if weight.dim() != 2 or weight.shape[1] != h.shape[1]:
        raise ValueError(f"{name}: weight must be (V, d={h.shape[1]}), got shape {tuple(weight.shape)}")
    if weight.dtype != h.dtype:
        raise ValueError(f"{name}: weight dtype {weight.dtype} differs from h dtype {h.dtype}")
    if targets.shape != (h.shape[0],):
        raise ValueError(f"{name}: targets must have shape (N,)=({h.shape[0]},), got {tuple(targets.shape)}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"{name}: targets must be an integer tensor, got {targets.dtype}")
    if bias is not None:
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"{name}: bias must have shape (V,)=({weight.shape[0]},), got {tuple(bias.shape)}")
        if bias.dtype != h.dtype:
            raise ValueError(f"{name}: bias dtype {bias.dtype} differs from h dtype {h.dtype}")
    if not (h.device == weight.device == targets.device) or (bias is not None and bias.device != h.device):
        raise ValueError(f"{name}: h, weight, targets (and bias) must be on one device")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if softcap is not None and not (math.isfinite(softcap) and softcap > 0):
        raise ValueError(f"{name}: softcap must be a number > 0 or None, got {softcap!r}")
    if not (math.isfinite(z_loss) and z_loss >= 0):
        raise ValueError(f"{name}: z_loss must be a number >= 0, got {z_loss!r}")
    if not torch.compiler.is_compiling() and targets.numel():
        V = weight.shape[0]
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))
        if bool(bad.any()):
            value = int(targets[bad][0])
            raise ValueError(f"{name}: targets must lie in [0, {V}) or equal ignore_index={ignore_index}, "
                             f"got {value}")


def linear_cross_entropy(
    h: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    softcap: float | None = None,
    z_loss: float = 0.0,
    reduction: str = "mean",
    backend: str = "auto",
) -> Tensor:
    """Cross-entropy of ``h @ weight.T (+ bias)`` against ``targets`` without the (N, V) logits.

    h: (N, d); weight: (V, d), h's dtype; targets: (N,) int in [0, V) or ``ignore_index``; bias:
    (V,) or None. ``softcap`` c: logits c * tanh(z / c). ``z_loss``: adds z_loss * lse**2 per
    counted token. ``reduction``: ``mean`` (over counted tokens; 0 when none is counted),
    ``sum``, or ``none`` ((N,) losses, 0 at ignored tokens). The loss is fp32 whatever h's dtype;
    the matmuls run in h's dtype, softmax and accumulation in fp32. Gradients reach h, weight and
    bias. ``backend``: ``auto`` or ``torch`` (the chunked path of this module, the only one so far).
    """
    check(h, weight, targets, bias, ignore_index, softcap, z_loss, reduction)
    if backend in ("triton", "cuda"):
        raise ValueError(f"linear_cross_entropy: backend {backend!r} has no kernel for this op; use 'auto' or 'torch'")
    if backend not in ("auto", "torch"):
        raise ValueError(f"linear_cross_entropy: unknown backend {backend!r}; choose auto or torch")
    softcap = None if softcap is None else float(softcap)
    rows = chunk_rows(h.shape[0], weight.shape[0], h.shape[1])
    return LinearCrossEntropy.apply(h, weight, bias, targets, int(ignore_index), softcap, float(z_loss),
                                    reduction, rows)
