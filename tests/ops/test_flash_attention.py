"""flash_attention: every backend against float64 attention math written here, forward and backward.

Accuracy is judged the flash-attention way: a backend's max error against the float64 math may be
at most 2x (3x for gradients) the error of the same math run by PyTorch in the inputs' dtype, plus
one ulp. The math (``_attention_math``: an explicit softmax(q k^T * scale + causal mask) v, GQA by
repeating K/V) is independent of the code under test, so the torch backend (SDPA) is checked too.
Inputs a kernel refuses (cuda: fp32, head dims other than 64/128) are skipped with its own reason.
CPU runs use tiny shapes (the Triton interpreter and the CUDA emulator are slow); the GPU tests
use realistic ones.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

import fastgpt.ops as ops
from fastgpt.ops import reference, torch_path

CUDA = torch.cuda.is_available()

# (B, Hq, Hkv, T, D, transposed): transposed inputs are (B, H, T, D) views of (B, T, H, D) memory
SHAPES = [
    pytest.param((1, 2, 2, 1, 64, False), id="T1-D64"),
    pytest.param((1, 2, 2, 17, 16, True), id="T17-D16-bthd"),
    pytest.param((2, 4, 2, 33, 48, True), id="gqa-T33-D48-bthd"),
    pytest.param((1, 2, 1, 40, 24, False), id="gqa-T40-D24"),
    pytest.param((1, 4, 1, 64, 64, False), id="mqa-T64-D64"),
    pytest.param((1, 4, 2, 77, 64, True), id="gqa-T77-D64-bthd"),
    pytest.param((1, 2, 2, 37, 128, True), id="T37-D128-bthd"),
    pytest.param((1, 3, 1, 21, 128, False), id="mqa-T21-D128"),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _make(B: int, H: int, T: int, D: int, dtype: torch.dtype, device: str, layout: str = "bhtd") -> torch.Tensor:
    """A (B, H, T, D) tensor in the given memory layout.

    bhtd: contiguous (the SDPA layout); bthd: a transposed view of (B, T, H, D) memory; sliced: the
    first D columns of a (B, H, T, 2D) tensor; tdlast: a transposed (B, H, D, T) tensor (strided head dim).
    """
    if layout == "bhtd":
        return torch.randn(B, H, T, D, dtype=dtype, device=device)
    if layout == "bthd":
        return torch.randn(B, T, H, D, dtype=dtype, device=device).transpose(1, 2)
    if layout == "sliced":
        return torch.randn(B, H, T, 2 * D, dtype=dtype, device=device)[..., :D]
    if layout == "tdlast":
        return torch.randn(B, H, D, T, dtype=dtype, device=device).transpose(2, 3)
    raise AssertionError(layout)


def _attention_math(q, k, v, causal: bool, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale, causal mask: key j > query i gets -inf) v, written out, in q's dtype."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)  # (B, Hq, T, D)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, Hq, T, T)
    if causal:
        T = q.shape[2]
        above = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(above, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _out_and_grads(fn, q, k, v, dout, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """[out, dq, dk, dv] of fn on fresh leaves (cast to ``dtype`` if given; layout kept)."""
    leaves = [(x.detach() if dtype is None else x.detach().to(dtype)).requires_grad_() for x in (q, k, v)]
    out = fn(*leaves)
    return [out, *torch.autograd.grad(out, leaves, dout.to(out.dtype))]


def _check(assert_err_close, fn, q, k, v, dout, causal: bool, scale: float | None = None) -> None:
    """fn's out and gradients against the float64 math, bounded by the same math's error in q's dtype."""
    got = _out_and_grads(fn, q, k, v, dout)
    ref = _out_and_grads(lambda q, k, v: _attention_math(q, k, v, causal, scale), q, k, v, dout, torch.float64)
    same = _out_and_grads(lambda q, k, v: _attention_math(q, k, v, causal, scale), q, k, v, dout)
    for name, a, b, r, factor in zip(("out", "dq", "dk", "dv"), got, same, ref, (2, 3, 3, 3), strict=True):
        assert_err_close(name, a, b, r, factor)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_flash_attention(backend, dtype, shape, causal, device, skip_unsupported, assert_err_close):
    torch.manual_seed(0)
    B, Hq, Hkv, T, D, transposed = shape
    layout = "bthd" if transposed else "bhtd"
    q = _make(B, Hq, T, D, dtype, device, layout)
    k, v = (_make(B, Hkv, T, D, dtype, device, layout) for _ in range(2))
    skip_unsupported(backend, "flash_attention", q, k, v)
    dout = torch.randn(B, Hq, T, D, dtype=dtype, device=device)

    def fn(q, k, v):
        return ops.flash_attention(q, k, v, causal=causal, backend=backend)

    _check(assert_err_close, fn, q, k, v, dout, causal)


@pytest.mark.parametrize("scale", [0.0, 0.3, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_flash_attention_scale_and_zero_stride_grad(
    backend, dtype, scale, device, skip_unsupported, assert_err_close, request
):
    """A custom scale (0 gives uniform weights), and a gradient with zero strides (from ``out.sum()``)."""
    if backend == "torch" and scale == 0.0 and device == "cpu":
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="F.scaled_dot_product_attention on CPU returns NaN for is_causal=True, scale=0.0"
            " (PyTorch's bug, seen in 2.13): the torch backend inherits it"))
    torch.manual_seed(0)
    q, k, v = (_make(1, 2, 19, 64, dtype, device) for _ in range(3))
    skip_unsupported(backend, "flash_attention", q, k, v)
    dout = torch.ones(1, 1, 1, 1, dtype=dtype, device=device).expand(1, 2, 19, 64)

    def fn(q, k, v):
        return ops.flash_attention(q, k, v, causal=True, scale=scale, backend=backend)

    _check(assert_err_close, fn, q, k, v, dout, causal=True, scale=scale)


@pytest.mark.parametrize("layout", ["sliced", "tdlast"])
def test_flash_attention_other_layouts(backend, layout, device, skip_unsupported, assert_err_close):
    """Non-contiguous inputs beyond the (B, T, H, D) view: a column slice, a strided head dim."""
    torch.manual_seed(1)
    q = _make(1, 4, 45, 64, torch.float16, device, layout)
    k, v = (_make(1, 2, 45, 64, torch.float16, device, layout) for _ in range(2))
    skip_unsupported(backend, "flash_attention", q, k, v)
    dout = torch.randn(1, 4, 45, 64, dtype=torch.float16, device=device)

    def fn(q, k, v):
        return ops.flash_attention(q, k, v, causal=True, backend=backend)

    _check(assert_err_close, fn, q, k, v, dout, causal=True)


def test_cuda_output_keeps_the_input_layout(backend_or_skip, device):
    """The CUDA kernels read (B, T, H, D) views in place: out and dq keep q's layout."""
    backend_or_skip("cuda")
    q = _make(1, 4, 33, 64, torch.bfloat16, device, "bthd").requires_grad_()
    k, v = (_make(1, 2, 33, 64, torch.bfloat16, device, "bthd").requires_grad_() for _ in range(2))
    out = ops.flash_attention(q, k, v, backend="cuda")
    assert out.stride() == torch.empty_like(q).stride()
    out.sum().backward()
    assert q.grad.stride() == torch.empty_like(q).stride()


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("S", [23, 30], ids=["S=T", "S>T"])
def test_reference_definition_against_the_math(causal, S, device):
    """reference.flash_attention (GQA without copies; S > T: the causal mask aligned to the end) in
    float64 against the math written here, values and gradients."""
    torch.manual_seed(0)
    q = _make(2, 6, 23, 16, torch.float64, device, "bthd").requires_grad_()
    k, v = (_make(2, 3, S, 16, torch.float64, device).requires_grad_() for _ in range(2))
    dout = torch.randn(2, 6, 23, 16, dtype=torch.float64, device=device)
    got = reference.flash_attention(q, k, v, causal)
    # the math with S keys: query i sees keys <= i + S - T
    group = 2
    kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = (q @ kk.transpose(-2, -1)) / math.sqrt(16)
    if causal:
        scores = scores.masked_fill(torch.ones(23, S, dtype=torch.bool, device=device).triu(1 + S - 23), float("-inf"))
    want = torch.softmax(scores, -1) @ vv
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), dout), torch.autograd.grad(want, (q, k, v), dout), strict=True):
        torch.testing.assert_close(a, b)
    out32 = reference.flash_attention(q.float(), k.float(), v.float(), causal)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), want, rtol=1e-5, atol=1e-5)
    # the torch backend's SDPA form, also for S > T
    torch.testing.assert_close(torch_path.flash_attention(q, k, v, causal), want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_torch_path_on_cpu_computes_half_precision_in_fp32(dtype: torch.dtype) -> None:
    # PyTorch's CPU kernel is slow in bf16 at small head_dim: fp32 inside, the input dtype outside,
    # also under autocast (which would otherwise run SDPA in bf16 again)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 29, 32, generator=g).to(dtype).requires_grad_() for _ in range(3))
    dout = torch.randn(3, 4, 29, 32, generator=g).to(dtype)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    want = torch.nn.functional.scaled_dot_product_attention(q32, k32, v32, is_causal=True)
    wants = torch.autograd.grad(want, (q32, k32, v32), dout.float())
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            got = torch_path.flash_attention(q, k, v, True)
        assert got.dtype == dtype
        assert torch.equal(got, want.to(dtype))
        for a, b in zip(torch.autograd.grad(got, (q, k, v), dout), wants, strict=True):
            assert a.dtype == dtype and torch.equal(a, b.to(dtype))


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


def test_cuda_rejects_unsupported_inputs(device, backend_or_skip):
    backend_or_skip("cuda")
    from fastgpt.ops.cuda.flash_attention import unsupported_reason

    def flash_attention(q, k, v):
        return ops.flash_attention(q, k, v, backend="cuda")

    q = torch.randn(1, 2, 16, 96, device=device, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"head dim 96 is not supported \(64, 128\)"):
        flash_attention(q, q, q)
    q32 = torch.randn(1, 2, 16, 64, device=device)
    assert "float32" in unsupported_reason(q32, q32, q32)
    with pytest.raises(ValueError, match="float32"):
        flash_attention(q32, q32, q32)
    q16 = torch.randn(1, 3, 16, 64, device=device, dtype=torch.float16)
    k16 = torch.randn(1, 2, 16, 64, device=device, dtype=torch.float16)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        flash_attention(q16, k16, k16)
    k_long = torch.randn(1, 3, 32, 64, device=device, dtype=torch.float16)
    with pytest.raises(ValueError, match="KV-cache"):
        flash_attention(q16, k_long, k_long)
    # auto falls back to the reference instead of raising
    auto = ops.flash_attention(q32, q32, q32, backend="auto")
    torch.testing.assert_close(auto, reference.flash_attention(q32, q32, q32))


# ---- GPU only: realistic sizes, determinism, memory, torch.library and torch.compile ----

GPU_SHAPES = [
    pytest.param((2, 8, 2, 1023, 64), id="gqa-T1023-D64"),
    pytest.param((1, 4, 4, 2048, 128), id="T2048-D128"),
    pytest.param((1, 2, 1, 8192, 128), id="mqa-T8192-D128"),
    pytest.param((2, 3, 3, 4096, 64), id="T4096-D64"),
    pytest.param((1, 4, 2, 777, 96), id="gqa-T777-D96"),
    pytest.param((1, 2, 2, 513, 256), id="T513-D256"),
    pytest.param((2, 8, 1, 203, 128), id="mqa-T203-D128"),
    pytest.param((2, 3, 3, 113, 64), id="T113-D64"),
]
# the fused-ops names of each backend's forward and backward
_OPS = {"triton": ("flash_attn_fwd_triton", "flash_attn_bwd_triton"), "cuda": ("flash_attn_fwd", "flash_attn_bwd")}


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["bhtd", "bthd"])
@pytest.mark.parametrize("name", ["triton", "cuda"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_flash_attention_gpu(name, dtype, shape, causal, layout, backend_or_skip, skip_unsupported, assert_err_close):
    backend_or_skip(name, "cuda")
    torch.manual_seed(0)
    B, Hq, Hkv, T, D = shape
    q = _make(B, Hq, T, D, dtype, "cuda", layout)
    k, v = (_make(B, Hkv, T, D, dtype, "cuda", layout) for _ in range(2))
    skip_unsupported(name, "flash_attention", q, k, v)
    dout = torch.randn(B, Hq, T, D, dtype=dtype, device="cuda")

    def fn(q, k, v):
        return ops.flash_attention(q, k, v, causal=causal, backend=name)

    _check(assert_err_close, fn, q, k, v, dout, causal)


@pytest.mark.parametrize("D", [64, 128, 256])
@pytest.mark.parametrize("name", ["triton", "cuda"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_flash_attention_gpu_fp32(name, D, backend_or_skip, skip_unsupported, assert_err_close):
    """fp32 uses IEEE dots (no TF32): as accurate as PyTorch's fp32 attention, at every head dim."""
    backend_or_skip(name, "cuda")
    torch.manual_seed(0)
    q = _make(1, 4, 300, D, torch.float32, "cuda")
    k, v = (_make(1, 2, 300, D, torch.float32, "cuda") for _ in range(2))
    skip_unsupported(name, "flash_attention", q, k, v)
    dout = torch.randn_like(q)

    def fn(q, k, v):
        return ops.flash_attention(q, k, v, causal=True, backend=name)

    _check(assert_err_close, fn, q, k, v, dout, causal=True)


@pytest.mark.parametrize("Hkv", [8, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("name", ["triton", "cuda"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_flash_attention_deterministic(name, D, Hkv, backend_or_skip):
    backend_or_skip(name, "cuda")
    torch.manual_seed(0)
    q = _make(2, 8, 2049, D, torch.bfloat16, "cuda")
    k, v = (_make(2, Hkv, 2049, D, torch.bfloat16, "cuda") for _ in range(2))
    dout = torch.randn_like(q)

    def run():
        return _out_and_grads(lambda q, k, v: ops.flash_attention(q, k, v, backend=name), q, k, v, dout)

    first, second = run(), run()
    for label, a, b in zip(("out", "dq", "dk", "dv"), first, second, strict=True):
        assert torch.equal(a, b), f"{label} differs between two identical runs"


@pytest.mark.parametrize("name", ["triton", "cuda"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_flash_attention_memory_is_linear_in_T(name, backend_or_skip):
    """No T x T buffer: forward + backward at T=8192 use a small multiple of the inputs' size."""
    backend_or_skip(name, "cuda")
    q, k, v = (_make(1, 4, 8192, 64, torch.bfloat16, "cuda").requires_grad_() for _ in range(3))
    ops.flash_attention(q, k, v, backend=name).sum().backward()  # autotune first (it allocates)
    q.grad = k.grad = v.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    ops.flash_attention(q, k, v, backend=name).sum().backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    io = 8 * q.numel() * q.element_size()  # out, dout, dq, dk, dv and friends
    assert peak < io, f"peak extra memory {peak / 2**20:.1f} MiB; a T x T matrix would be {8192**2 * 2 / 2**20:.0f} MiB"


@pytest.mark.parametrize("name", ["triton", "cuda"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_flash_attention_opcheck(name, backend_or_skip):
    backend_or_skip(name, "cuda")
    importlib.import_module(f"fastgpt.ops.{name}.flash_attention")  # registers the ops / fake implementations
    fwd, bwd = (getattr(torch.ops.fastgpt, op).default for op in _OPS[name])
    torch.manual_seed(0)
    for layout in ("bhtd", "bthd"):
        q = _make(2, 4, 200, 64, torch.float16, "cuda", layout)
        k, v = (_make(2, 2, 200, 64, torch.float16, "cuda", layout) for _ in range(2))
        scale = 1 / math.sqrt(64)
        torch.library.opcheck(fwd, (q, k, v, True, scale))
        out, lse = fwd(q, k, v, True, scale)
        torch.library.opcheck(bwd, (torch.randn_like(out), q, k, v, out, lse, True, scale))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("name", ["triton", "cuda"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_flash_attention_compile_matches_eager(name, causal, backend_or_skip):
    backend_or_skip(name, "cuda")
    torch.manual_seed(0)
    q = _make(2, 8, 300, 64, torch.bfloat16, "cuda", "bthd")
    k, v = (_make(2, 4, 300, 64, torch.bfloat16, "cuda", "bthd") for _ in range(2))
    dout = torch.randn(2, 8, 300, 64, dtype=torch.bfloat16, device="cuda")

    def fn(q, k, v):
        return ops.flash_attention(q, k, v, causal=causal, backend=name) * 2

    compiled = torch.compile(fn, fullgraph=True)
    eager = _out_and_grads(fn, q, k, v, dout)
    got = _out_and_grads(compiled, q, k, v, dout)
    for label, a, b in zip(("out", "dq", "dk", "dv"), got, eager, strict=True):
        # Inductor may autotune the Triton kernels again and pick other blocks: not bitwise equal
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2, msg=lambda m, label=label: f"{label}: {m}")
