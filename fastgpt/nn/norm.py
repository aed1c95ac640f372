"""Pre-norm helpers: every norm the model can use, with a fused "add then normalize".

A pre-norm block computes ``h = h + delta; y = norm(h)`` before each sublayer. ``AddNorm`` does
both in one call so RMSNorm's fused residual kernel reads the residual stream once.
"""

from __future__ import annotations

from torch import Tensor, nn

from fastgpt.nn.rms_norm import RMSNorm

NORMS = ("layer_norm", "rms_norm", "none")


class AddNorm(nn.Module):
    """``forward(h, delta) -> (norm(h + delta), h + delta)``; ``delta`` None means nothing to add."""

    def __init__(self, kind: str, dim: int, *, eps: float = 1e-5, bias: bool = True, backend: str = "auto") -> None:
        super().__init__()
        if kind == "layer_norm":
            self.norm = nn.LayerNorm(dim, eps=eps, bias=bias)
        elif kind == "rms_norm":
            self.norm = RMSNorm(dim, eps=eps, backend=backend)
        elif kind == "none":
            self.norm = nn.Identity()
        else:
            raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")

    def forward(self, h: Tensor, delta: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if delta is not None and isinstance(self.norm, RMSNorm):
            # under autocast the sublayers return bf16/fp16 while the residual stream stays fp32:
            # add in the stream's dtype, as the unfused h + delta would
            return self.norm(delta.to(h.dtype), residual=h)
        if delta is not None:
            h = h + delta
        return self.norm(h), h
