"""The error criterion every kernel is held to, by the tests and by ``auto``'s first-use check.

err(out, ref) <= factor * err(torch_same_dtype, ref) + atol, errors as max |diff|: ``ref`` is
computed in float64 (or fp32 where that is the reference's own precision), ``same_dtype`` by
PyTorch in ``out``'s dtype, so a kernel may be a small factor less accurate than PyTorch itself
(factor 2 for outputs, 3 for gradients, as flash-attention's tests).
"""

from __future__ import annotations

import torch
from torch import Tensor

# floor of the absolute tolerance, for results PyTorch happens to get exactly (e.g. a zero gradient)
ATOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-3}


def error_problem(name: str, out: Tensor, same_dtype: Tensor, ref: Tensor, factor: float = 2.0) -> str | None:
    """Why ``out`` fails the criterion (shape, dtype, NaN or error too large), None when it passes.

    atol is one unit in the last place of ``out``'s dtype at the reference's largest magnitude,
    and at least ``ATOL[dtype]``.
    """
    if out.shape != ref.shape:
        return f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    if out.dtype != same_dtype.dtype:
        return f"{name}: dtype {out.dtype} != {same_dtype.dtype}"
    if ref.numel() == 0:
        return None
    diff = (out.double() - ref.double()).abs()
    if diff.isnan().any():
        return f"{name}: NaN in output"
    torch_err = (same_dtype.double() - ref.double()).abs().max().item()
    atol = max(torch.finfo(out.dtype).eps * ref.abs().max().item(), ATOL[out.dtype])
    bound = factor * torch_err + atol
    err = diff.max().item()
    if not err <= bound:
        return (
            f"{name}: max error {err:.3e} (mean {diff.mean().item():.3e}) exceeds {factor} * torch's {torch_err:.3e}"
            f" + atol {atol:.3e} = {bound:.3e}"
        )
    return None
