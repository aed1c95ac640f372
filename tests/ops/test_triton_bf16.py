"""The test-only shim that makes the Triton interpreter compute bf16 by value (tests/ops/triton_bf16.py).

Its results must equal what PyTorch computes in bf16 (each operation rounded to nearest even),
the plain interpreter must be shown to get them wrong (else the shim is dead weight), an unchecked
Triton version must be refused by name, and without the shim fastgpt's kernels must keep refusing
bf16 under the interpreter.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

import fastgpt.ops as ops  # noqa: E402


@triton.jit
def _elementwise_kernel(X, Y, Out, F32, Cast, N: tl.constexpr):
    offs = tl.arange(0, N)
    x = tl.load(X + offs)
    y = tl.load(Y + offs)
    # arithmetic, comparisons and a negation on bf16, then an fp32 -> bf16 cast
    z = tl.where(x > y, x * y + x, tl.maximum(-y, x) - y * y)
    tl.store(Out + offs, z)
    tl.store(Cast + offs, tl.load(F32 + offs).to(tl.bfloat16))


@triton.jit
def _dot_sum_kernel(A, B, C, S, M: tl.constexpr):
    rows = tl.arange(0, M)
    a = tl.load(A + rows[:, None] * M + rows[None, :])
    b = tl.load(B + rows[:, None] * M + rows[None, :])
    tl.store(C + rows[:, None] * M + rows[None, :], tl.dot(a, b))  # bf16 x bf16 -> fp32
    tl.store(S + rows, tl.max(a, axis=1) + tl.sum(b, axis=1))


@pytest.fixture
def shim(triton_bf16):
    if triton_bf16 is None:
        pytest.skip("Triton is compiled here (or absent): the interpreter shim is not in use")
    return triton_bf16


def _elementwise(n: int = 64):
    torch.manual_seed(0)
    x, y = torch.randn(n).bfloat16(), torch.randn(n).bfloat16()
    f32 = torch.randn(n) * 3
    # ties to even, the largest finite values, infinities, NaN and subnormals
    f32[:8] = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 3.3895e38, float("inf"), float("-inf"),
                            float("nan"), 1e-40])
    out, cast = torch.empty(n, dtype=torch.bfloat16), torch.empty(n, dtype=torch.bfloat16)
    _elementwise_kernel[(1,)](x, y, out, f32, cast, N=n)
    want = torch.where(x > y, x * y + x, torch.maximum(-y, x) - y * y)
    return out, want, cast, f32.bfloat16()


def _dot_sum(m: int = 16):
    torch.manual_seed(1)
    a, b = torch.randn(m, m).bfloat16(), torch.randn(m, m).bfloat16()
    c, s = torch.empty(m, m), torch.empty(m, dtype=torch.bfloat16)
    _dot_sum_kernel[(1,)](a, b, c, s, M=m)
    return c, a.float() @ b.float(), s, a.max(1).values + b.float().sum(1).bfloat16()


def test_bf16_is_computed_by_value(shim):
    out, want, cast, cast_want = _elementwise()
    assert torch.equal(out, want), f"elementwise: {(out.float() - want.float()).abs().max()}"
    nan = cast_want.isnan()
    assert torch.equal(cast.isnan(), nan), "NaN is not kept"  # (its payload bits are not compared)
    assert torch.equal(cast[~nan].view(torch.int16), cast_want[~nan].view(torch.int16)), "fp32 -> bf16 is not RNE"
    c, c_want, s, s_want = _dot_sum()
    torch.testing.assert_close(c, c_want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.float(), s_want.float(), rtol=2**-8, atol=0)


def test_the_plain_interpreter_gets_bf16_wrong(shim):
    """Without the shim the same kernels are wrong (triton #11584): the shim is what makes bf16 tests mean anything."""
    shim.deactivate()
    try:
        out, want, cast, cast_want = _elementwise()
        c, c_want, _, _ = _dot_sum()
    finally:
        shim.activate()
    assert not torch.equal(out, want)
    assert not torch.equal(cast[1:2].view(torch.int16), cast_want[1:2].view(torch.int16))  # 1 + 3 * 2^-8 truncated
    assert not torch.allclose(c, c_want, rtol=1e-2, atol=1e-2)


def test_an_unchecked_triton_version_is_refused(shim, monkeypatch):
    shim.deactivate()
    try:
        monkeypatch.setattr(shim.triton, "__version__", "3.7.1")
        with pytest.raises(RuntimeError, match=r"checked against Triton .* not 3\.7\.1"):
            shim.activate()
    finally:
        monkeypatch.undo()
        shim.activate()


def test_kernels_refuse_bf16_under_the_plain_interpreter(shim):
    x = torch.randn(4, 64).bfloat16()
    q = torch.randn(1, 2, 8, 16).bfloat16()
    p, g = torch.randn(8).bfloat16(), torch.randn(8).bfloat16()
    moments = [torch.zeros(8)], [torch.zeros(8)]
    shim.deactivate()
    try:
        with pytest.raises(ValueError, match="bfloat16 is not supported by the Triton interpreter"):
            ops.rms_norm(x, None, backend="triton")
        with pytest.raises(ValueError, match="bfloat16 is not supported by the Triton interpreter"):
            ops.flash_attention(q, q, q, backend="triton")
        with pytest.raises(ValueError, match="bfloat16 is not supported by the Triton interpreter"):
            ops.fused_adamw_([p], [g], *moments, [torch.ones(())], lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                             weight_decay=0.0, backend="triton")
    finally:
        shim.activate()
    ops.rms_norm(x, None, backend="triton")  # accepted again
