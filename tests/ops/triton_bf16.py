"""Test-only shim: the Triton CPU interpreter computes bfloat16 by value.

The interpreter keeps a bf16 tensor as its uint16 bit patterns and hands those bits to numpy as
they are, so ``a + b``, ``tl.dot(a, b)``, comparisons and reductions on bf16 operate on integers
(upstream triton issue #11584; the fix, PR #10945, was not merged), and an fp32 -> bf16 cast
truncates where the GPU rounds to nearest even. :func:`activate` patches the interpreter's
builder so that every floating-point operation with a bf16 operand decodes the bits to fp32,
computes in fp32 and, where the result is bf16, rounds it to nearest even (NaN stays NaN).
Loads, stores, bitcasts, selects and shape ops keep moving the bits untouched.

Only the interpreter (``triton.runtime.interpreter``) is patched, never what a GPU compiles. The
patched methods were read in the interpreter of each version in ``CHECKED_VERSIONS``;
:func:`activate` raises on any other version rather than guess. While active,
``InterpreterBuilder.computes_bf16_by_value`` is True: fastgpt's Triton kernels accept bf16
under the interpreter only then (:func:`fastgpt.ops.triton.interpreter_bf16_problem`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import numpy as np
import triton
import triton.language as tl
from triton.runtime import interpreter as interp

CHECKED_VERSIONS = ("3.6.0", "3.9.0")
# binary ops that act on the bits whatever the dtype
_BITWISE = (np.bitwise_and, np.bitwise_or, np.bitwise_xor, np.left_shift, np.right_shift)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bit patterns -> the fp32 values they encode (exact)."""
    return (np.asarray(bits).astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """fp32 (or fp64, first rounded to fp32) values -> bf16 bit patterns, rounded to nearest even."""
    u = np.asarray(values, dtype=np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = np.isnan(np.asarray(values, dtype=np.float32))
    return np.where(nan, (u >> np.uint32(16)) | np.uint32(0x0040), rounded).astype(np.uint16)


def _is_bf16(handle: object) -> bool:
    return isinstance(handle, interp.TensorHandle) and handle.dtype.scalar == tl.bfloat16


def _value(handle: interp.TensorHandle) -> interp.TensorHandle:
    """``handle`` as an fp32 handle holding its values when it is bf16, else itself."""
    if _is_bf16(handle):
        return interp.TensorHandle(bf16_bits_to_f32(handle.data), tl.float32)
    return handle


def _by_value(method):
    """Wrap a builder method whose operands share one dtype: bf16 operands enter as fp32 values and
    the (then fp32) result leaves as bf16 bits."""

    @functools.wraps(method)
    def wrapper(self, *args):
        if not any(_is_bf16(a) for a in args):
            return method(self, *args)
        out = method(self, *(_value(a) for a in args))
        if out.dtype.scalar == tl.float32:
            return interp.TensorHandle(f32_to_bf16_bits(out.data), tl.bfloat16)
        return out

    return wrapper


def _binary_op(original):
    @functools.wraps(original)
    def binary_op(self, lhs, rhs, op):
        if op in _BITWISE or not (_is_bf16(lhs) or _is_bf16(rhs)):
            return original(self, lhs, rhs, op)
        out = op(_value(lhs).data, _value(rhs).data)
        if out.dtype == np.bool_:  # a comparison
            return interp.TensorHandle(out, lhs.dtype.scalar)
        return interp.TensorHandle(f32_to_bf16_bits(out), tl.bfloat16)

    return binary_op


def _dot(original):
    @functools.wraps(original)
    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if not (_is_bf16(a) or _is_bf16(b)):
            return original(self, a, b, d, input_precision, max_num_imprecise_acc)
        # products of bf16 values are exact in fp32; the sum accumulates in d's type (fp32)
        out = (np.matmul(_value(a).data, _value(b).data, dtype=np.float32) + _value(d).data).astype(np.float32)
        if _is_bf16(d):
            return interp.TensorHandle(f32_to_bf16_bits(out), tl.bfloat16)
        return interp.TensorHandle(out, d.dtype.scalar)

    return create_dot


def _cast(original):
    @functools.wraps(original)
    def cast_impl(self, src, dst_type):
        src_ty, dst_ty = src.dtype.scalar, dst_type.scalar
        if src_ty == tl.bfloat16 and dst_ty == tl.bfloat16:
            return original(self, src, dst_type)
        if src_ty == tl.bfloat16:
            return original(self, _value(src), dst_type)
        if dst_ty == tl.bfloat16:
            # fp32, fp16 and small integers are exact in fp32 (an fp64 source would be rounded twice)
            return interp.TensorHandle(f32_to_bf16_bits(src.data.astype(np.float32)), tl.bfloat16)
        return original(self, src, dst_type)

    return cast_impl


def _fp_to_fp(original):
    @functools.wraps(original)
    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        if src.dtype.scalar == tl.bfloat16 or dst_type.scalar == tl.bfloat16:
            return self.cast_impl(src, dst_type)
        return original(self, src, dst_type, rounding_mode)

    return create_fp_to_fp


def _reduction(original):
    """ReduceOps.sum / ScanOps.cumsum etc. on a bf16 tensor: in fp32, rounded once at the end."""

    @functools.wraps(original)
    def reduce(self, input, *args, **kwargs):
        if not (isinstance(input, tl.tensor) and input.dtype == tl.bfloat16):
            return original(self, input, *args, **kwargs)
        as_f32 = tl.tensor(interp.TensorHandle(bf16_bits_to_f32(input.handle.data), tl.float32),
                           input.type.with_element_ty(tl.float32) if input.type.is_block() else tl.float32)
        out = original(self, as_f32, *args, **kwargs)
        outs = out if isinstance(out, (list, tuple)) else [out]
        fixed = []
        for t in outs:
            if t.dtype == tl.float32:
                bits = f32_to_bf16_bits(t.handle.data)
                ty = t.type.with_element_ty(tl.bfloat16) if t.type.is_block() else tl.bfloat16
                t = tl.tensor(interp.TensorHandle(bits, tl.bfloat16), ty)
            fixed.append(t)
        if isinstance(out, (list, tuple)):
            return type(out)(fixed)
        return fixed[0]

    return reduce


_BUILDER_VALUE_METHODS = ("unary_op", "ternary_op", "create_fma", "create_rsqrt", "create_erf")
_ORIGINALS: dict[tuple[type, str], object] = {}


def _patches() -> list[tuple[type, str, object]]:
    builder = interp.InterpreterBuilder
    patches = [(builder, name, _by_value(getattr(builder, name))) for name in _BUILDER_VALUE_METHODS]
    patches += [
        (builder, "binary_op", _binary_op(builder.binary_op)),
        (builder, "create_dot", _dot(builder.create_dot)),
        (builder, "cast_impl", _cast(builder.cast_impl)),
        (builder, "create_fp_to_fp", _fp_to_fp(builder.create_fp_to_fp)),
        (interp.ReduceOps, "sum", _reduction(interp.ReduceOps.sum)),
        (interp.ReduceOps, "min_max", _reduction(interp.ReduceOps.min_max)),
        (interp.ScanOps, "cumsum", _reduction(interp.ScanOps.cumsum)),
        (interp.ScanOps, "cumprod", _reduction(interp.ScanOps.cumprod)),
    ]
    return patches


def check_version() -> None:
    """Raise RuntimeError unless this Triton's interpreter is one the shim was checked against."""
    if triton.__version__ not in CHECKED_VERSIONS:
        raise RuntimeError(
            f"tests/ops/triton_bf16.py was checked against Triton {', '.join(CHECKED_VERSIONS)}, not"
            f" {triton.__version__}: read triton/runtime/interpreter.py of this version, check that the"
            " patched methods still hold every bf16 computation, and add the version to CHECKED_VERSIONS"
        )


def is_active() -> bool:
    return getattr(interp.InterpreterBuilder, "computes_bf16_by_value", False)


def activate() -> None:
    """Patch the interpreter (idempotent). Raises RuntimeError on an unchecked Triton version."""
    if is_active():
        return
    check_version()
    for owner, name, patched in _patches():
        _ORIGINALS[(owner, name)] = owner.__dict__[name]
        setattr(owner, name, patched)
    interp.InterpreterBuilder.computes_bf16_by_value = True


def deactivate() -> None:
    """Undo :func:`activate`."""
    for (owner, name), original in _ORIGINALS.items():
        setattr(owner, name, original)
    _ORIGINALS.clear()
    interp.InterpreterBuilder.computes_bf16_by_value = False


@contextlib.contextmanager
def bf16_by_value() -> Iterator[None]:
    """The shim active for a ``with`` block (and restored to the previous state after it)."""
    was_active = is_active()
    activate()
    try:
        yield
    finally:
        if not was_active:
            deactivate()
