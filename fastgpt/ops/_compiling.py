"""``auto``'s choice while ``torch.compile`` traces an op: made outside the graph, kept as a constant.

:func:`fastgpt.ops.resolve_backend` imports this module only while tracing, when ``torch._dynamo``
(which ``torch.compiler.assume_constant_result`` loads) is already loaded: importing it with
fastgpt would cost seconds and load Triton before a caller could set ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import torch

import fastgpt.ops.autotune as autotune


@torch.compiler.assume_constant_result
def _candidate_names(device: str) -> tuple[str, ...]:
    return tuple(autotune.kernel_candidates(torch.device(device)))


@torch.compiler.assume_constant_result
def _pick(spec: tuple, supported: tuple[str, ...]) -> str:
    return autotune.decide(spec, supported)["backend"]


def choose(op: str, device: torch.device, args: tuple) -> str:
    """:func:`fastgpt.ops.autotune.choose`, its measurement and cache lookup run when tracing."""
    return autotune.choose(op, device, args, _candidate_names, _pick)
