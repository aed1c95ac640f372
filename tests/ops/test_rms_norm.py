"""rms_norm (with and without weight / fused residual): every backend against a float64 reference.

The kernel's max error may be at most 2x (3x for gradients) the reference's own error in the same
dtype, plus one ulp. Gradients flow from both returned tensors when there is a residual.
"""

from __future__ import annotations

import pytest
import torch

import fastgpt.ops as ops
from fastgpt.ops import reference

CUDA = torch.cuda.is_available()

SHAPES = [
    pytest.param((3, 1), id="N1"),
    pytest.param((2, 5, 48), id="N48"),
    pytest.param((7, 100), id="N100"),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(shape, dtype, device, affine: bool, residual: bool, transposed: bool = False):
    torch.manual_seed(0)
    if transposed:  # last dim not contiguous
        x = torch.randn(shape[::-1], dtype=dtype, device=device).transpose(0, -1)
    else:
        x = torch.randn(shape, dtype=dtype, device=device)
    w = 1 + 0.5 * torch.randn(shape[-1], dtype=dtype, device=device) if affine else None
    r = torch.randn(shape, dtype=dtype, device=device) if residual else None
    return x, w, r


def _outs_and_grads(fn, x, w, r, couts, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """[outputs..., grads of present inputs...] of fn on fresh leaves (cast to ``dtype`` if given)."""
    leaves = [
        None if t is None else (t.detach() if dtype is None else t.detach().to(dtype)).requires_grad_()
        for t in (x, w, r)
    ]
    outs = fn(*leaves)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    present = [t for t in leaves if t is not None]
    return outs + list(torch.autograd.grad(outs, present, [c.to(o.dtype) for c, o in zip(couts, outs, strict=True)]))


def _check(assert_err_close, fn, x, w, r, eps):
    couts = [torch.randn_like(x) for _ in range(1 if r is None else 2)]
    got = _outs_and_grads(fn, x, w, r, couts)
    ref = _outs_and_grads(lambda x, w, r: reference.rms_norm(x, w, eps, r), x, w, r, couts, torch.float64)
    same = _outs_and_grads(lambda x, w, r: reference.rms_norm(x, w, eps, r), x, w, r, couts)
    grads = [name for name, t in zip(("dx", "dweight", "dresidual"), (x, w, r), strict=True) if t is not None]
    names = ["y", "h"][: len(couts)] + grads
    for i, (name, a, b, c) in enumerate(zip(names, got, same, ref, strict=True)):
        assert_err_close(name, a, b, c, 2 if i < len(couts) else 3)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("affine", [True, False], ids=["weight", "noweight"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm(backend, dtype, shape, affine, residual, device, dtype_or_skip, assert_err_close):
    dtype_or_skip(dtype)
    x, w, r = _inputs(shape, dtype, device, affine, residual)
    eps = torch.finfo(dtype).eps

    def fn(x, w, r):
        return ops.rms_norm(x, w, None, r, backend=backend)

    _check(assert_err_close, fn, x, w, r, eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_rms_norm_noncontiguous_and_eps(backend, dtype, device, assert_err_close):
    x, w, r = _inputs((6, 40), dtype, device, affine=True, residual=True, transposed=True)
    r = r.t().contiguous().t()  # residual with the transposed layout too

    def fn(x, w, r):
        return ops.rms_norm(x, w, 1e-2, r, backend=backend)

    _check(assert_err_close, fn, x, w, r, 1e-2)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_rms_norm_long_rows(dtype, residual, device, backend_or_skip, assert_err_close, monkeypatch):
    """The looped kernel (rows longer than one block), forced on small rows by shrinking the blocks."""
    backend_or_skip("triton")
    from fastgpt.ops.triton import rms_norm as kernel

    if device != "cuda":
        monkeypatch.setattr(kernel, "_MAX_BLOCK_N", 32)
        monkeypatch.setattr(kernel, "_LOOP_BLOCK_N", 16)
    n = 100 if device != "cuda" else 65536
    x, w, r = _inputs((5, n), dtype, device, affine=True, residual=residual)

    def fn(x, w, r):
        return ops.rms_norm(x, w, None, r, backend="triton")

    _check(assert_err_close, fn, x, w, r, torch.finfo(dtype).eps)


def test_rms_norm_only_h_used(backend, device):
    """With a residual, a loss that uses only h still gives x and residual a gradient of 1."""
    x, w, r = _inputs((4, 24), torch.float32, device, affine=True, residual=True)
    x.requires_grad_()
    r.requires_grad_()
    _, h = ops.rms_norm(x, w, None, r, backend=backend)
    h.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    torch.testing.assert_close(r.grad, torch.ones_like(r))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_reference_matches_torch_rmsnorm(dtype, device):
    torch.manual_seed(0)
    x = torch.randn(3, 7, 64, dtype=dtype, device=device, requires_grad=True)
    norm = torch.nn.RMSNorm(64, dtype=dtype, device=device)
    with torch.no_grad():
        norm.weight.normal_()
    w = norm.weight.detach().clone().requires_grad_()
    y_ref = reference.rms_norm(x, w)
    y_torch = norm(x)
    torch.testing.assert_close(y_ref, y_torch)
    g = torch.randn_like(y_ref)
    torch.testing.assert_close(torch.autograd.grad(y_ref, (x, w), g), torch.autograd.grad(y_torch, (x, norm.weight), g))


def test_triton_rejects_unsupported_inputs(device, backend_or_skip):
    backend_or_skip("triton")
    from fastgpt.ops.triton import rms_norm as kernel

    x = torch.randn(2, 8, device=device)
    assert kernel.unsupported_reason(x, torch.ones(8, device=device)) is None
    assert "65536" in kernel.unsupported_reason(torch.empty(1, 65537, device=device), None)
    with pytest.raises(ValueError, match="float64"):
        ops.rms_norm(x.double(), None, backend="triton")
    with pytest.raises(ValueError, match="weight shape"):
        ops.rms_norm(x, torch.ones(7, device=device), backend="triton")
    with pytest.raises(ValueError, match="residual"):
        ops.rms_norm(x, None, residual=torch.randn(2, 7, device=device), backend="triton")
    with pytest.raises(ValueError, match="residual"):
        kernel.rms_norm(x, None, 1e-6, residual=x.half())


# ---- GPU only: large rows, bf16, determinism, torch.library and torch.compile ----


@pytest.mark.parametrize("shape", [(4096, 768), (8, 1000, 4097), (64, 8192), (32, 65536)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_rms_norm_gpu(dtype, shape, backend_or_skip, assert_err_close):
    backend_or_skip("triton", "cuda")
    x, w, r = _inputs(shape, dtype, "cuda", affine=True, residual=True)

    def fn(x, w, r):
        return ops.rms_norm(x, w, None, r, backend="triton")

    _check(assert_err_close, fn, x, w, r, torch.finfo(dtype).eps)


@pytest.mark.parametrize("n", [2048, 65536])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_rms_norm_deterministic(n, backend_or_skip):
    backend_or_skip("triton", "cuda")
    x, w, r = _inputs((4096, n) if n < 65536 else (256, n), torch.bfloat16, "cuda", affine=True, residual=True)
    couts = [torch.randn_like(x), torch.randn_like(x)]

    def run():
        return _outs_and_grads(lambda x, w, r: ops.rms_norm(x, w, None, r, backend="triton"), x, w, r, couts)

    for a, b in zip(run(), run(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_rms_norm_opcheck(backend_or_skip):
    backend_or_skip("triton", "cuda")
    from fastgpt.ops.triton import rms_norm as kernel  # noqa: F401  (registers the ops)

    x, w, r = _inputs((3, 50, 768), torch.bfloat16, "cuda", affine=True, residual=True)
    for weight, residual in ((w, r), (None, None), (w, None)):
        torch.library.opcheck(torch.ops.fastgpt.rms_norm_fwd_triton.default, (x, weight, 1e-6, residual))
        y, h, rstd = torch.ops.fastgpt.rms_norm_fwd_triton(x, weight, 1e-6, residual)
        hh = h if residual is not None else x
        dh = torch.randn_like(x) if residual is not None else None
        torch.library.opcheck(
            torch.ops.fastgpt.rms_norm_bwd_triton.default, (torch.randn_like(y), hh, weight, rstd, dh)
        )


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_rms_norm_compile_matches_eager(residual, backend_or_skip):
    backend_or_skip("triton", "cuda")
    from fastgpt.ops.triton.rms_norm import rms_norm

    x, w, r = _inputs((4, 77, 768), torch.bfloat16, "cuda", affine=True, residual=residual)

    def fn(x, w, r):
        out = rms_norm(x, w, 1e-6, r)
        return (out[0] * 2 + out[1]) if r is not None else out * 2

    couts = [torch.randn_like(x)]
    eager = _outs_and_grads(fn, x, w, r, couts)
    got = _outs_and_grads(torch.compile(fn, fullgraph=True), x, w, r, couts)
    for a, b in zip(got, eager, strict=True):  # Inductor fuses the bf16 epilogue: rounding differs
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
