"""flash_attention: every backend against a float64 reference, plus the Triton kernel's own checks.

Accuracy is judged the flash-attention way: the kernel's max error against the float64 reference
may be at most 2x (3x for gradients) PyTorch's own error in the same dtype, plus one ulp.
CPU runs use tiny shapes (the Triton interpreter is slow); the GPU tests use realistic ones.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fastgpt.ops as ops
from fastgpt.ops import reference

CUDA = torch.cuda.is_available()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]

# (B, Hq, Hkv, T, D, transposed): transposed inputs are (B, H, T, D) views of (B, T, H, D) memory
SHAPES = [
    pytest.param((1, 2, 2, 1, 16, False), id="T1"),
    pytest.param((1, 2, 2, 17, 16, True), id="T17-bthd"),
    pytest.param((2, 4, 2, 33, 48, True), id="gqa-T33-D48-bthd"),
    pytest.param((1, 4, 1, 64, 64, False), id="mqa-T64"),
    pytest.param((1, 2, 1, 40, 24, False), id="gqa-T40-D24"),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _make(B: int, H: int, T: int, D: int, dtype: torch.dtype, device: str, transposed: bool = False) -> torch.Tensor:
    if transposed:
        return torch.randn(B, T, H, D, dtype=dtype, device=device).transpose(1, 2)  # (B, H, T, D)
    return torch.randn(B, H, T, D, dtype=dtype, device=device)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float | None = None):
    """PyTorch's own attention in the inputs' dtype (GQA by repeating K/V)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


def _out_and_grads(fn, q, k, v, dout, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """[out, dq, dk, dv] of fn on fresh leaves (cast to ``dtype`` if given; layout kept)."""
    leaves = [(x.detach() if dtype is None else x.detach().to(dtype)).requires_grad_() for x in (q, k, v)]
    out = fn(*leaves)
    return [out, *torch.autograd.grad(out, leaves, dout.to(out.dtype))]


def _check_against_reference(assert_err_close, fn, q, k, v, dout, causal: bool, scale: float | None = None) -> None:
    got = _out_and_grads(fn, q, k, v, dout)
    ref = _out_and_grads(
        lambda q, k, v: reference.flash_attention(q, k, v, causal, scale), q, k, v, dout, torch.float64
    )
    same = _out_and_grads(lambda q, k, v: _sdpa(q, k, v, causal, scale), q, k, v, dout)
    for name, a, b, r, factor in zip(("out", "dq", "dk", "dv"), got, same, ref, (2, 3, 3, 3), strict=True):
        assert_err_close(name, a, b, r, factor)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_flash_attention(backend, dtype, shape, causal, device, dtype_or_skip, assert_err_close):
    dtype_or_skip(dtype)
    torch.manual_seed(0)
    B, Hq, Hkv, T, D, transposed = shape
    q = _make(B, Hq, T, D, dtype, device, transposed)
    k, v = (_make(B, Hkv, T, D, dtype, device, transposed) for _ in range(2))
    dout = torch.randn(B, Hq, T, D, dtype=dtype, device=device)

    def fn(q, k, v):
        return ops.flash_attention(q, k, v, causal=causal, backend=backend)

    _check_against_reference(assert_err_close, fn, q, k, v, dout, causal)


def test_flash_attention_scale_and_zero_stride_grad(backend, device, assert_err_close):
    """A custom scale, and a gradient with zero strides (from ``out.sum()``)."""
    torch.manual_seed(0)
    q, k, v = (_make(1, 2, 19, 32, torch.float32, device) for _ in range(3))
    dout = torch.ones(1, 1, 1, 1, device=device).expand(1, 2, 19, 32)

    def fn(q, k, v):
        return ops.flash_attention(q, k, v, causal=False, scale=0.3, backend=backend)

    _check_against_reference(assert_err_close, fn, q, k, v, dout, causal=False, scale=0.3)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_reference_matches_sdpa(causal, device):
    """The reference (GQA without copies) against F.scaled_dot_product_attention, in float64."""
    torch.manual_seed(0)
    q = _make(2, 6, 23, 16, torch.float64, device, transposed=True)
    k, v = (_make(2, 3, 23, 16, torch.float64, device) for _ in range(2))
    torch.testing.assert_close(reference.flash_attention(q, k, v, causal), _sdpa(q, k, v, causal))
    out32 = reference.flash_attention(q.float(), k.float(), v.float(), causal)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), _sdpa(q, k, v, causal), rtol=1e-5, atol=1e-5)


def test_triton_rejects_unsupported_inputs(device, backend_or_skip):
    backend_or_skip("triton")
    from fastgpt.ops.triton.flash_attention import unsupported_reason

    def qkv(Hq=2, Hkv=2, T=8, S=8, D=16, dtype=torch.float32):
        return (
            torch.randn(1, Hq, T, D, dtype=dtype, device=device),
            torch.randn(1, Hkv, S, D, dtype=dtype, device=device),
            torch.randn(1, Hkv, S, D, dtype=dtype, device=device),
        )

    assert unsupported_reason(*qkv()) is None
    assert "head dim 300" in unsupported_reason(*qkv(D=300))
    with pytest.raises(ValueError, match="head dim 300"):
        ops.flash_attention(*qkv(D=300), backend="triton")
    with pytest.raises(ValueError, match="float64"):
        ops.flash_attention(*qkv(dtype=torch.float64), backend="triton")
    with pytest.raises(ValueError, match="as many keys as queries"):
        ops.flash_attention(*qkv(S=12), backend="triton")
    with pytest.raises(ValueError):
        ops.flash_attention(*qkv(Hq=3, Hkv=2), backend="triton")
    q, k, v = qkv()
    with pytest.raises(ValueError, match="dtypes"):
        ops.flash_attention(q, k.half(), v, backend="triton")
    with pytest.raises(ValueError, match="same shape"):
        ops.flash_attention(q, k, v[..., :8], backend="triton")
    # auto falls back to the reference instead of raising
    q, k, v = qkv(D=300)
    torch.testing.assert_close(ops.flash_attention(q, k, v, backend="auto"), reference.flash_attention(q, k, v))


# ---- GPU only: realistic sizes, bf16, determinism, torch.library and torch.compile ----

GPU_SHAPES = [
    pytest.param((2, 8, 2, 1023, 64), id="gqa-T1023-D64"),
    pytest.param((1, 4, 4, 2048, 128), id="T2048-D128"),
    pytest.param((1, 2, 1, 8192, 128), id="mqa-T8192-D128"),
    pytest.param((1, 4, 2, 777, 96), id="gqa-T777-D96"),
    pytest.param((1, 2, 2, 513, 256), id="T513-D256"),
]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("transposed", [False, True], ids=["bhtd", "bthd"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_flash_attention_gpu(dtype, shape, causal, transposed, backend_or_skip, assert_err_close):
    backend_or_skip("triton", "cuda")
    torch.manual_seed(0)
    B, Hq, Hkv, T, D = shape
    q = _make(B, Hq, T, D, dtype, "cuda", transposed)
    k, v = (_make(B, Hkv, T, D, dtype, "cuda", transposed) for _ in range(2))
    dout = torch.randn(B, Hq, T, D, dtype=dtype, device="cuda")

    def fn(q, k, v):
        return ops.flash_attention(q, k, v, causal=causal, backend="triton")

    _check_against_reference(assert_err_close, fn, q, k, v, dout, causal)


@pytest.mark.parametrize("D", [64, 128, 256])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_flash_attention_gpu_fp32(D, backend_or_skip, assert_err_close):
    """fp32 uses IEEE dots (no TF32): as accurate as PyTorch's fp32 attention, at every head dim."""
    backend_or_skip("triton", "cuda")
    torch.manual_seed(0)
    q = _make(1, 4, 300, D, torch.float32, "cuda")
    k, v = (_make(1, 2, 300, D, torch.float32, "cuda") for _ in range(2))
    dout = torch.randn_like(q)

    def fn(q, k, v):
        return ops.flash_attention(q, k, v, causal=True, backend="triton")

    _check_against_reference(assert_err_close, fn, q, k, v, dout, causal=True)


@pytest.mark.parametrize("Hkv", [8, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_flash_attention_deterministic(Hkv, backend_or_skip):
    backend_or_skip("triton", "cuda")
    torch.manual_seed(0)
    q = _make(2, 8, 4096, 128, torch.bfloat16, "cuda")
    k, v = (_make(2, Hkv, 4096, 128, torch.bfloat16, "cuda") for _ in range(2))
    dout = torch.randn_like(q)

    def run():
        return _out_and_grads(lambda q, k, v: ops.flash_attention(q, k, v, backend="triton"), q, k, v, dout)

    first, second = run(), run()
    for name, a, b in zip(("out", "dq", "dk", "dv"), first, second, strict=True):
        assert torch.equal(a, b), f"{name} differs between two identical runs"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_flash_attention_memory_is_linear_in_T(backend_or_skip):
    """No T x T buffer: forward + backward at T=8192 use a small multiple of the inputs' size."""
    backend_or_skip("triton", "cuda")
    q, k, v = (_make(1, 4, 8192, 64, torch.bfloat16, "cuda").requires_grad_() for _ in range(3))
    ops.flash_attention(q, k, v, backend="triton").sum().backward()  # autotune first (it allocates)
    q.grad = k.grad = v.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    ops.flash_attention(q, k, v, backend="triton").sum().backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    io = 8 * q.numel() * q.element_size()  # out, dout, dq, dk, dv and friends
    assert peak < io, f"peak extra memory {peak / 2**20:.1f} MiB; a T x T matrix would be {8192**2 * 2 / 2**20:.0f} MiB"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_flash_attention_opcheck(backend_or_skip):
    backend_or_skip("triton", "cuda")
    from fastgpt.ops.triton import flash_attention as fa  # noqa: F401  (registers the ops)

    torch.manual_seed(0)
    q = _make(2, 4, 200, 64, torch.float16, "cuda", transposed=True)
    k, v = (_make(2, 2, 200, 64, torch.float16, "cuda") for _ in range(2))
    scale = 1 / math.sqrt(64)
    torch.library.opcheck(torch.ops.fastgpt.flash_attn_fwd_triton.default, (q, k, v, True, scale))
    out, lse = torch.ops.fastgpt.flash_attn_fwd_triton(q, k, v, True, scale)
    dout = torch.randn_like(out)
    torch.library.opcheck(torch.ops.fastgpt.flash_attn_bwd_triton.default, (dout, q, k, v, out, lse, True, scale))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_flash_attention_compile_matches_eager(causal, backend_or_skip):
    backend_or_skip("triton", "cuda")
    from fastgpt.ops.triton.flash_attention import flash_attention

    torch.manual_seed(0)
    q = _make(2, 8, 300, 64, torch.bfloat16, "cuda", transposed=True)
    k, v = (_make(2, 4, 300, 64, torch.bfloat16, "cuda", transposed=True) for _ in range(2))
    dout = torch.randn(2, 8, 300, 64, dtype=torch.bfloat16, device="cuda")

    def fn(q, k, v):
        return flash_attention(q, k, v, causal) * 2

    compiled = torch.compile(fn, fullgraph=True)
    eager = _out_and_grads(fn, q, k, v, dout)
    got = _out_and_grads(compiled, q, k, v, dout)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, eager, strict=True):
        # Inductor may autotune the kernels again and pick other blocks: not bitwise equal
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("S", [23, 30], ids=["S=T", "S>T"])
def test_torch_backend_sdpa_form_matches_reference(causal, S, device):
    """backend="torch" runs reference.sdpa_attention: same values and gradients as the definition."""
    torch.manual_seed(0)
    q = _make(2, 6, 23, 16, torch.float64, device, transposed=True).requires_grad_()
    k, v = (_make(2, 3, S, 16, torch.float64, device).requires_grad_() for _ in range(2))
    dout = torch.randn(2, 6, 23, 16, dtype=torch.float64, device=device)
    outs = [f(q, k, v, causal) for f in (reference.flash_attention, reference.sdpa_attention)]
    grads = [torch.autograd.grad(o, (q, k, v), dout) for o in outs]
    torch.testing.assert_close(outs[1], outs[0])
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b)
