"""rms_norm (with and without weight / fused residual): every backend against float64 math written here.

The math (``_rms_norm_math``: h = x + residual, y = h / sqrt(mean(h^2) + eps) * weight) is
independent of the code under test. A backend's max error against it in float64 may be at most 2x
(3x for gradients) the error of the same math run in fp32 and rounded to the inputs' dtype (what
an ideal kernel with fp32 statistics returns), plus one ulp. Gradients flow from both returned
tensors when there is a residual. Inputs a kernel refuses are skipped with its own reason.
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
    pytest.param((4, 1000), id="N1000"),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(shape, dtype, device, affine: bool, residual: bool, transposed: bool = False, w_dtype=None):
    torch.manual_seed(0)
    if transposed:  # last dim not contiguous
        x = torch.randn(shape[::-1], dtype=dtype, device=device).transpose(0, -1)
    else:
        x = torch.randn(shape, dtype=dtype, device=device)
    w = 1 + 0.5 * torch.randn(shape[-1], dtype=w_dtype or dtype, device=device) if affine else None
    r = torch.randn(shape, dtype=dtype, device=device) if residual else None
    return x, w, r


def _rms_norm_math(x, w, eps: float, r):
    """x (+ r) normalized by its root mean square over the last dim, times w, in the inputs' dtype."""
    h = x if r is None else x + r
    y = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if w is not None:
        y = y * w
    return y if r is None else (y, h)


def _outs_and_grads(fn, x, w, r, couts, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """[outputs..., grads of present inputs...] of fn on fresh leaves (cast to ``dtype`` if given,
    results cast back to the inputs' dtypes)."""
    leaves = [
        None if t is None else (t.detach() if dtype is None else t.detach().to(dtype)).requires_grad_()
        for t in (x, w, r)
    ]
    outs = fn(*leaves)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    present = [(t, orig) for t, orig in zip(leaves, (x, w, r), strict=True) if t is not None]
    couts = [c.to(o.dtype) for c, o in zip(couts, outs, strict=True)]
    grads = torch.autograd.grad(outs, [t for t, _ in present], couts)
    if dtype is None or dtype == torch.float64:
        return outs + list(grads)
    return [o.to(x.dtype) for o in outs] + [g.to(orig.dtype) for g, (_, orig) in zip(grads, present, strict=True)]


def _check(assert_err_close, fn, x, w, r, eps):
    couts = [torch.randn_like(x) for _ in range(1 if r is None else 2)]
    got = _outs_and_grads(fn, x, w, r, couts)
    ref = _outs_and_grads(lambda x, w, r: _rms_norm_math(x, w, eps, r), x, w, r, couts, torch.float64)
    same = _outs_and_grads(lambda x, w, r: _rms_norm_math(x, w, eps, r), x, w, r, couts, torch.float32)
    grads = [name for name, t in zip(("dx", "dweight", "dresidual"), (x, w, r), strict=True) if t is not None]
    names = ["y", "h"][: len(couts)] + grads
    for i, (name, a, b, c) in enumerate(zip(names, got, same, ref, strict=True)):
        assert_err_close(name, a, b, c, 2 if i < len(couts) else 3)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("affine", [True, False], ids=["weight", "noweight"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm(backend, dtype, shape, affine, residual, device, skip_unsupported, assert_err_close):
    x, w, r = _inputs(shape, dtype, device, affine, residual)
    skip_unsupported(backend, "rms_norm", x, w)
    eps = torch.finfo(dtype).eps

    def fn(x, w, r):
        return ops.rms_norm(x, w, None, r, backend=backend)

    _check(assert_err_close, fn, x, w, r, eps)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_noncontiguous_and_eps(backend, dtype, device, skip_unsupported, assert_err_close):
    x, w, r = _inputs((6, 40), dtype, device, affine=True, residual=True, transposed=True)
    r = r.t().contiguous().t()  # residual with the transposed layout too
    skip_unsupported(backend, "rms_norm", x, w)

    def fn(x, w, r):
        return ops.rms_norm(x, w, 1e-2, r, backend=backend)

    _check(assert_err_close, fn, x, w, r, 1e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_rms_norm_fp32_weight_for_low_precision_x(backend, dtype, device, skip_unsupported, assert_err_close):
    """A weight in fp32 for fp16/bf16 x (a mixed-precision module); dweight comes back in fp32."""
    x, w, _ = _inputs((5, 3, 64), dtype, device, affine=True, residual=False, w_dtype=torch.float32)
    skip_unsupported(backend, "rms_norm", x, w)

    def fn(x, w, r):
        return ops.rms_norm(x, w, 1e-5, backend=backend)

    _check(assert_err_close, fn, x, w, None, 1e-5)


def test_rms_norm_unaligned_start(backend, device, skip_unsupported, assert_err_close):
    """An input whose first element is not 16-byte aligned (the kernels' element-wise path)."""
    torch.manual_seed(0)
    x = torch.randn(9 * 64 + 1, dtype=torch.bfloat16, device=device)[1:].view(9, 64)
    w = torch.rand(64, dtype=torch.bfloat16, device=device) + 0.5
    skip_unsupported(backend, "rms_norm", x, w)

    def fn(x, w, r):
        return ops.rms_norm(x, w, 1e-6, backend=backend)

    _check(assert_err_close, fn, x, w, None, 1e-6)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rms_norm_long_rows(dtype, residual, device, backend_or_skip, assert_err_close, monkeypatch):
    """The Triton looped kernel (rows longer than one block), forced on small rows by shrinking the blocks."""
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


def test_torch_rmsnorm_agrees_with_the_math(device):
    """torch.nn.RMSNorm (whose semantics the reference follows) against the math, in float64."""
    torch.manual_seed(0)
    x = torch.randn(3, 7, 64, dtype=torch.float64, device=device)
    norm = torch.nn.RMSNorm(64, dtype=torch.float64, device=device)
    with torch.no_grad():
        norm.weight.normal_()
    eps = torch.finfo(torch.float64).eps
    torch.testing.assert_close(norm(x), _rms_norm_math(x, norm.weight, eps, None))
    torch.testing.assert_close(reference.rms_norm(x, norm.weight), _rms_norm_math(x, norm.weight, eps, None))


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
        ops.rms_norm(x, None, 1e-6, residual=x.half(), backend="triton")


def test_cuda_rejects_unsupported_inputs(device, backend_or_skip):
    backend_or_skip("cuda")
    from fastgpt.ops.cuda.rms_norm import unsupported_reason

    with pytest.raises(ValueError, match="65537 elements"):
        ops.rms_norm(torch.randn(2, 65537, device=device), None, 1e-6, backend="cuda")
    assert "float64" in unsupported_reason(torch.randn(2, 8, device=device, dtype=torch.float64), None)
    x = torch.randn(2, 8, device=device)
    assert "weight shape" in unsupported_reason(x, torch.ones(9, device=device), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        ops.rms_norm(x, None, 1e-6, x.half(), backend="cuda")


# ---- GPU only: large rows, determinism, torch.library and torch.compile ----

KERNELS = ["triton", "cuda"]


def _kernel(name: str):
    import importlib

    return importlib.import_module(f"fastgpt.ops.{name}.rms_norm")


@pytest.mark.parametrize("shape", [(4096, 768), (8, 1000, 4097), (64, 8192), (32, 65536), (301, 4095)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_rms_norm_gpu(name, dtype, shape, backend_or_skip, skip_unsupported, assert_err_close):
    backend_or_skip(name, "cuda")
    x, w, r = _inputs(shape, dtype, "cuda", affine=True, residual=True)
    skip_unsupported(name, "rms_norm", x, w)

    def fn(x, w, r):
        return ops.rms_norm(x, w, None, r, backend=name)

    _check(assert_err_close, fn, x, w, r, torch.finfo(dtype).eps)


@pytest.mark.parametrize("n", [2048, 65536])
@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_rms_norm_deterministic(name, n, backend_or_skip):
    backend_or_skip(name, "cuda")
    x, w, r = _inputs((4096, n) if n < 65536 else (256, n), torch.bfloat16, "cuda", affine=True, residual=True)
    couts = [torch.randn_like(x), torch.randn_like(x)]

    def run():
        return _outs_and_grads(lambda x, w, r: ops.rms_norm(x, w, None, r, backend=name), x, w, r, couts)

    for a, b in zip(run(), run(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_rms_norm_opcheck(name, backend_or_skip):
    backend_or_skip(name, "cuda")
    _kernel(name)  # registers the ops / fake implementations
    x, w, r = _inputs((3, 50, 768), torch.bfloat16, "cuda", affine=True, residual=True)
    for weight, residual in ((w, r), (None, None), (w, None), (w.float(), None)):
        dh = torch.randn_like(x) if residual is not None else None
        if name == "triton":
            fwd, bwd = torch.ops.fastgpt.rms_norm_fwd_triton, torch.ops.fastgpt.rms_norm_bwd_triton
        else:
            fwd, bwd = torch.ops.fastgpt.rms_norm_fwd, torch.ops.fastgpt.rms_norm_bwd
        fwd_args = (x, weight, residual, 1e-6)  # one schema for both backends
        y, h, rstd = fwd(*fwd_args)
        bwd_args = (torch.randn_like(y), dh, h if residual is not None else x, weight, rstd)
        torch.library.opcheck(fwd.default, fwd_args)
        torch.library.opcheck(bwd.default, bwd_args)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_rms_norm_compile_matches_eager(name, residual, backend_or_skip):
    backend_or_skip(name, "cuda")
    x, w, r = _inputs((4, 77, 768), torch.bfloat16, "cuda", affine=True, residual=residual)

    def fn(x, w, r):
        out = ops.rms_norm(x, w, 1e-6, r, backend=name)
        return (out[0] * 2 + out[1]) if r is not None else out * 2

    couts = [torch.randn_like(x)]
    eager = _outs_and_grads(fn, x, w, r, couts)
    got = _outs_and_grads(torch.compile(fn, fullgraph=True), x, w, r, couts)
    for a, b in zip(got, eager, strict=True):  # Inductor fuses the bf16 epilogue: rounding differs
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
