"""Triton kernels for fastgpt's ops, one file per op.

``flash_attention``, ``rms_norm`` and ``fused_adamw`` each hold their kernels, the host launchers
with the interface of :mod:`fastgpt.ops._registry`, the ``torch.library`` custom ops and the op's
``unsupported_reason``; one ``autograd.Function`` per op (:mod:`fastgpt.ops._autograd`) drives
them. ``fastgpt.ops`` imports them lazily for ``backend="triton"`` (and when ``auto`` considers
Triton); nothing heavy happens at package import. Set ``TRITON_INTERPRET=1``
(before importing these modules) to run the kernels slowly on CPU tensors.
"""


def interpreter_bf16_problem() -> str | None:
    """Why bf16 cannot run in the Triton interpreter here (None when it can).

    The interpreter stores bf16 as uint16 and computes arithmetic and ``tl.dot`` on the bit
    patterns (triton issue #11584), so bf16 kernels under ``TRITON_INTERPRET=1`` give wrong
    numbers. The test suite's shim (tests/ops/triton_bf16.py) patches the interpreter to compute
    bf16 by value and marks it with ``InterpreterBuilder.computes_bf16_by_value``; only then is
    bf16 accepted there. Call it only under the interpreter.
    """
    from triton.runtime import interpreter

    if getattr(interpreter.InterpreterBuilder, "computes_bf16_by_value", False):
        return None
    return "bfloat16 is not supported by the Triton interpreter (it computes on the bit patterns, triton #11584)"
