"""CUDA C++ kernels for fastgpt's ops (the extension ``fastgpt._C``), one file per op.

Importing this package loads ``fastgpt._C``, whose import registers the ``torch.ops.fastgpt.*``
custom ops (schemas and CUDA implementations in ``csrc/ops.cpp``). ``flash_attention``,
``rms_norm`` and ``adamw`` each add the fake (meta) implementations for ``torch.compile``, the
``autograd.Function`` and the public function with its ``unsupported_reason``. ``fastgpt.ops``
imports them lazily for ``backend="cuda"``, only when the extension loads; importing them
without it raises ``ImportError``.
"""

import fastgpt._C  # noqa: F401  (registers torch.ops.fastgpt.*)

OPS = (
    "flash_attn_fwd",
    "flash_attn_bwd",
    "rms_norm_fwd",
    "rms_norm_bwd",
    "fused_adamw_",
)
"""The custom ops ``fastgpt._C`` registers under ``torch.ops.fastgpt``."""
