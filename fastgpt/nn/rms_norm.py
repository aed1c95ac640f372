"""``RMSNorm``: a drop-in for ``torch.nn.RMSNorm`` that runs fastgpt's kernels."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from fastgpt.ops import rms_norm


class RMSNorm(nn.Module):
    """Same constructor, state_dict keys and numerics as ``torch.nn.RMSNorm``, plus ``backend``.

    ``forward(x, residual=None)``: with ``residual``, returns ``(norm(x + residual), x + residual)``
    from one fused pass.
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (int(normalized_shape),)
        self.normalized_shape = tuple(normalized_shape)
        if len(self.normalized_shape) != 1:
            raise ValueError(f"RMSNorm normalizes over the last dim only; got normalized_shape={self.normalized_shape}")
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.backend = backend
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(self.normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        return rms_norm(x, self.weight, self.eps, residual=residual, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"backend={self.backend!r}")
