"""CUDA C++ kernels for fastgpt's ops (the extension ``fastgpt._C``), one file per op.

Importing this package loads ``fastgpt._C``, whose import registers the ``torch.ops.fastgpt.*``
custom ops (schemas and CUDA implementations in ``csrc/ops.cpp``). With ``FASTGPT_CUDA_EMULATE=1``
it loads the emulated build of the same sources instead (:mod:`fastgpt.ops.cuda.emulated_build`,
built on first use): the ops then run the kernels on CPU tensors. ``flash_attention``,
``rms_norm`` and ``fused_adamw`` each add the fake (meta) implementations for ``torch.compile``, the
host functions with the interface of :mod:`fastgpt.ops._registry` and their ``unsupported_reason``. ``fastgpt.ops``
imports them lazily for ``backend="cuda"``, only when the extension loads; importing them
without it raises ``ImportError``.
"""

from __future__ import annotations

import torch

from fastgpt.ops.cuda import emulated_build

EMULATED = emulated_build.enabled()
"""True when the ops run the emulated build (FASTGPT_CUDA_EMULATE=1, CPU tensors)."""

if EMULATED:
    emulated_build.load()
else:
    import fastgpt._C  # noqa: F401  (registers torch.ops.fastgpt.*)

OPS = (
    "flash_attn_fwd",
    "flash_attn_bwd",
    "rms_norm_fwd",
    "rms_norm_bwd",
    "fused_adamw_",
)
"""The custom ops ``fastgpt._C`` registers under ``torch.ops.fastgpt``."""


def device_problem(device: torch.device) -> str | None:
    """Why tensors on ``device`` cannot go to the kernels (None when they can)."""
    if EMULATED:
        return None if device.type == "cpu" else "the emulated CUDA build (FASTGPT_CUDA_EMULATE=1) runs on CPU tensors"
    return None if device.type == "cuda" else "the CUDA kernels need a CUDA device"
