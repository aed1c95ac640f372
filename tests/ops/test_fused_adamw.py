"""fused_adamw_: every backend against the AdamW update written out here in float64, and against
torch.optim.AdamW itself.

``_adamw_math`` is torch.optim.AdamW's update (decoupled weight decay, bias corrections), computed
in float64 from the same inputs; fp32 results must agree with it to a few fp32 ulps over 20
steps, fp16/bf16 params to one rounding step. Inputs a kernel refuses (cuda: non-contiguous params,
steps other than fp32 one-element tensors) are skipped with its own reason or checked as refusals.
"""

from __future__ import annotations

import math

import pytest
import torch

import fastgpt.ops as ops

CUDA = torch.cuda.is_available()
# sizes cross the interpreter's 64-element chunks; an empty tensor is skipped
SHAPES = [(3, 5), (130,), (1,), (64, 3), (0,), (2, 1, 33)]
HYPER = dict(beta1=0.9, beta2=0.999, eps=1e-8)


def _moments(params):
    return [torch.zeros_like(p, dtype=torch.float32) for p in params], [
        torch.zeros_like(p, dtype=torch.float32) for p in params
    ]


def _steps(params, value: float = 0.0):
    return [torch.full((), value, dtype=torch.float32, device=p.device) for p in params]


def _adamw_math(p, g, m, v, t: float, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                maximize: bool = False):
    """One AdamW step in float64: returns the new (p, m, v)."""
    p, g, m, v = (x.double() for x in (p, g, m, v))
    g = -g if maximize else g
    p = p * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return p - lr * m_hat / (v_hat.sqrt() + eps), m, v


@pytest.mark.parametrize("lr_tensor", [False, True], ids=["lr_float", "lr_tensor"])
@pytest.mark.parametrize(("weight_decay", "maximize"), [(0.1, False), (0.0, True)], ids=["wd", "maximize"])
def test_fp32_matches_the_math_and_torch_adamw(backend, weight_decay, maximize, lr_tensor, device):
    """20 fp32 steps: against the float64 math, and as torch.optim.AdamW takes them."""
    torch.manual_seed(0)
    params = [torch.randn(s, device=device) for s in SHAPES]
    torch_params = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.AdamW(torch_params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay,
                            maximize=maximize, foreach=False)
    exp_avgs, exp_avg_sqs = _moments(params)
    steps = _steps(params)
    math64 = [(p.double(), torch.zeros_like(p, dtype=torch.float64), torch.zeros_like(p, dtype=torch.float64))
              for p in params]
    lr = torch.tensor(1e-2, device=device) if lr_tensor else 1e-2
    for t in range(1, 21):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(torch_params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for s in steps:
            s += 1
        ops.fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, steps, lr=lr, weight_decay=weight_decay,
                         maximize=maximize, backend=backend, **HYPER)
        math64 = [_adamw_math(p, g, m, v, t, 1e-2, weight_decay=weight_decay, maximize=maximize, **HYPER)
                  for (p, m, v), g in zip(math64, grads, strict=True)]
    for i, (p, tp, (p64, m64, v64)) in enumerate(zip(params, torch_params, math64, strict=True)):
        torch.testing.assert_close(p.double(), p64, rtol=1e-5, atol=5e-6, msg=lambda m, i=i: f"param {i}: {m}")
        torch.testing.assert_close(p, tp.detach(), rtol=1e-5, atol=5e-6, msg=lambda m, i=i: f"param {i}: {m}")
        torch.testing.assert_close(exp_avgs[i].double(), m64, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(exp_avg_sqs[i].double(), v64, rtol=1e-5, atol=1e-9)


def test_dense_noncontiguous_param(backend, device, skip_unsupported):
    """A transposed param (dense, not contiguous): grads and moments share its strides."""
    torch.manual_seed(0)
    p = torch.randn(64, 3, device=device).t()
    g = torch.randn_like(p)
    m, v = 0.1 * torch.randn_like(p), 0.01 * torch.rand_like(p)
    skip_unsupported(backend, "fused_adamw", [p], [g], [m], [v], _steps([p], 3.0), lr=1e-2, weight_decay=0.1, **HYPER)
    want = _adamw_math(p, g, m, v, 3.0, 1e-2, weight_decay=0.1, **HYPER)
    ops.fused_adamw_([p], [g], [m], [v], _steps([p], 3.0), lr=1e-2, weight_decay=0.1, backend=backend, **HYPER)
    for got, w in zip((p, m, v), want, strict=True):
        torch.testing.assert_close(got.double(), w, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("step", [1.0, 7.0, 1000.0])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_params(backend, dtype, step, device):
    """fp16/bf16 params, fp32 moments: one step must equal the math rounded once to the param dtype."""
    torch.manual_seed(0)
    params = [torch.randn(s, device=device).to(dtype) for s in SHAPES]
    grads = [torch.randn_like(p) for p in params]
    exp_avgs = [0.1 * torch.randn_like(p, dtype=torch.float32) for p in params]
    exp_avg_sqs = [0.01 * torch.rand_like(p, dtype=torch.float32) for p in params]
    want = [_adamw_math(p, g, m, v, step, 1e-3, weight_decay=0.1, **HYPER)
            for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True)]
    ops.fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, _steps(params, step), lr=1e-3, weight_decay=0.1,
                     backend=backend, **HYPER)
    ulp = torch.finfo(dtype).eps
    for i, (p, (p64, m64, v64)) in enumerate(zip(params, want, strict=True)):
        assert p.dtype == dtype
        # at most one rounding step apart (the fp32 results may straddle a rounding boundary)
        torch.testing.assert_close(p.float(), p64.to(dtype).float(), rtol=ulp, atol=1e-6,
                                   msg=lambda m, i=i: f"param {i}: {m}")
        torch.testing.assert_close(exp_avgs[i].double(), m64, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(exp_avg_sqs[i].double(), v64, rtol=1e-5, atol=1e-9)


def test_mixed_dtypes_in_one_call(backend, device):
    """fp32, fp16 and bf16 params in one call (one launch per dtype) each match the math."""
    torch.manual_seed(0)
    params = [torch.randn(70, device=device), torch.randn(9, 9, device=device).half(),
              torch.randn(5, device=device), torch.randn(130, device=device).bfloat16()]
    grads = [torch.randn_like(p) for p in params]
    exp_avgs, exp_avg_sqs = _moments(params)
    kw = dict(weight_decay=0.05, **HYPER)
    want = [_adamw_math(p, g, m, v, 3.0, 3e-3, **kw) for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs)]
    ops.fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, _steps(params, 3.0), lr=3e-3, backend=backend, **kw)
    for p, m, v, (p64, m64, v64) in zip(params, exp_avgs, exp_avg_sqs, want, strict=True):
        rtol = 2e-6 if p.dtype == torch.float32 else torch.finfo(p.dtype).eps
        torch.testing.assert_close(p.double(), p64.to(p.dtype).double(), rtol=rtol, atol=1e-7)
        torch.testing.assert_close(m.double(), m64, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(v.double(), v64, rtol=1e-5, atol=1e-10)


def test_bias_correction_is_exact(kernel_backend, device):
    """First step from zero moments moves each param by exactly lr * g / (|g| + eps).

    1 - beta2^1 computed as 1 - exp(ln beta2) in fp32 would be off by ~1e-5 relative here.
    """
    torch.manual_seed(0)
    g = torch.randn(100, device=device) + 0.5
    p = torch.zeros_like(g)
    ops.fused_adamw_([p], [g], *_moments([p]), _steps([p], 1.0), lr=1.0, weight_decay=0.0, backend=kernel_backend,
                     beta1=0.9, beta2=0.999, eps=0.0)
    torch.testing.assert_close(p, -torch.sign(g), rtol=2e-6, atol=0)


def test_step_counters_in_other_dtypes_or_shapes(backend, device):
    """float64 and (1,)-shaped step tensors give the same update as fp32 scalars (torch, triton);
    the cuda kernel takes fp32 one-element steps only and refuses float64 ones, naming them."""
    torch.manual_seed(0)
    params = [torch.randn(40, device=device), torch.randn(3, 3, device=device)]
    grads = [torch.randn_like(p) for p in params]
    copies = [p.clone() for p in params]
    kw = dict(lr=1e-2, weight_decay=0.1, backend=backend, **HYPER)
    ops.fused_adamw_(params, grads, *_moments(params), _steps(params, 4.0), **kw)
    steps = [torch.tensor(4.0, dtype=torch.float64, device=device), torch.tensor([4.0], device=device)]
    if backend == "cuda":
        with pytest.raises(ValueError, match=r"steps\[0\] must be a one-element float32 tensor"):
            ops.fused_adamw_(copies, grads, *_moments(params), steps, **kw)
        steps[0] = steps[0].float()
    ops.fused_adamw_(copies, grads, *_moments(params), steps, **kw)
    for p, c in zip(params, copies, strict=True):
        torch.testing.assert_close(p, c, rtol=1e-6, atol=1e-7)


def test_torch_adamw_agrees_with_the_math(device):
    """torch.optim.AdamW itself (which the kernels must match) against the math, 20 fp64 steps."""
    torch.manual_seed(0)
    params = [torch.randn(s, device=device, dtype=torch.float64) for s in SHAPES]
    torch_params = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.AdamW(torch_params, lr=1e-2, weight_decay=0.1, foreach=False)
    state = [(p, torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    for t in range(1, 21):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(torch_params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        state = [_adamw_math(p, g, m, v, t, 1e-2, weight_decay=0.1, **HYPER) for (p, m, v), g in zip(state, grads)]
    for (p, _, _), tp in zip(state, torch_params, strict=True):
        torch.testing.assert_close(p, tp.detach())


def test_triton_rejects_unsupported_inputs(device, backend_or_skip):
    backend_or_skip("triton")
    from fastgpt.ops.triton import fused_adamw

    def args(p_dtype=torch.float32, m_dtype=torch.float32, g_shape=(4,), n_steps=1):
        p = torch.randn(4, dtype=p_dtype, device=device)
        g = torch.randn(g_shape, dtype=p_dtype, device=device)
        m, v = torch.zeros(4, dtype=m_dtype, device=device), torch.zeros(4, dtype=m_dtype, device=device)
        return [p], [g], [m], [v], _steps([p] * n_steps, 1.0)

    kw = dict(lr=1e-3, weight_decay=0.0, backend="triton", **HYPER)
    assert fused_adamw.unsupported_reason(*args(), lr=1e-3, weight_decay=0.0, **HYPER) is None
    assert "float64" in fused_adamw.unsupported_reason(*args(torch.float64), lr=1e-3, weight_decay=0.0, **HYPER)
    with pytest.raises(ValueError, match="float64"):
        ops.fused_adamw_(*args(torch.float64), **kw)
    with pytest.raises(ValueError, match="exp_avgs"):
        ops.fused_adamw_(*args(m_dtype=torch.float16), **kw)
    with pytest.raises(ValueError, match="grads"):
        ops.fused_adamw_(*args(g_shape=(5,)), **kw)
    with pytest.raises(ValueError, match="steps"):
        ops.fused_adamw_(*args(n_steps=2), **kw)
    with pytest.raises(ValueError, match="steps"):
        ops.fused_adamw_(*args()[:4], [torch.ones(2, device=device)], **kw)
    with pytest.raises(ValueError, match="betas"):
        ops.fused_adamw_(*args(), lr=1e-3, weight_decay=0.0, beta1=1.0, beta2=0.999, eps=1e-8, backend="triton")
    p = torch.randn(4, 4, device=device)[:, :2]  # not dense
    with pytest.raises(ValueError, match="not dense"):
        ops.fused_adamw_([p], [torch.zeros_like(p)], *_moments([p]), _steps([p]), **kw)


def test_cuda_rejects_unsupported_inputs(device, backend_or_skip):
    backend_or_skip("cuda")
    from fastgpt.ops.cuda.fused_adamw import unsupported_reason

    p = torch.randn(10, device=device)
    m, v, s = torch.zeros(10, device=device), torch.zeros(10, device=device), torch.ones((), device=device)
    kw = dict(lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)

    def fused_adamw_(*lists, **hyper):
        ops.fused_adamw_(*lists, **hyper, backend="cuda")

    def reason(p):
        return unsupported_reason([p], [torch.zeros_like(p)], [torch.zeros_like(p)], [torch.zeros_like(p)], [s], **kw)

    assert reason(p) is None
    assert "float64" in reason(p.double())
    assert "contiguous" in reason(torch.randn(4, 4, device=device).t())
    with pytest.raises(ValueError, match="grads has 0 tensors"):
        fused_adamw_([p], [], [m], [v], [s], **kw)
    with pytest.raises(ValueError, match="exp_avgs"):
        fused_adamw_([p], [p.clone()], [m.half()], [v], [s], **kw)


# ---- GPU only: realistic sizes, no host synchronization, opcheck, tensors past 2^31 elements ----

KERNELS = ["triton", "cuda"]


def _sizes() -> list[int]:
    # empty, tiny, unaligned, one chunk exactly, straddling chunks, and enough tensors (> 36) and
    # chunks (> 320 per launch) that the CUDA host code splits the work into several launches
    return [0, 1, 3, 65536, 65537, 1000, 4097] + [257 * (i + 1) for i in range(40)] + [65536 * 400 + 5]


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_fused_adamw_gpu_many_tensors_match_torch_adamw(name, maximize, backend_or_skip):
    backend_or_skip(name, "cuda")
    torch.manual_seed(0)
    params = [torch.randn(n, device="cuda") for n in _sizes()]
    params.append(torch.randn(70001, device="cuda")[1:])  # unaligned start: the scalar path
    theirs = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.AdamW(theirs, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, maximize=maximize,
                            foreach=False)
    exp_avgs, exp_avg_sqs = _moments(params)
    steps = _steps(params)
    for _ in range(20):
        grads = [torch.randn_like(p) for p in params]
        for t, g in zip(theirs, grads, strict=True):
            t.grad = g.clone()
        opt.step()
        for s in steps:
            s += 1
        ops.fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, steps, lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8,
                         weight_decay=0.1, maximize=maximize, backend=name)
    for i, (p, t) in enumerate(zip(params, theirs, strict=True)):
        torch.testing.assert_close(p, t.detach(), rtol=1e-5, atol=1e-6, msg=lambda m, i=i: f"param {i}: {m}")
        if p.numel():
            torch.testing.assert_close(exp_avgs[i], opt.state[t]["exp_avg"], rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(exp_avg_sqs[i], opt.state[t]["exp_avg_sq"], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_fused_adamw_does_not_synchronize(name, backend_or_skip):
    backend_or_skip(name, "cuda")
    params = [torch.randn(s, device="cuda") for s in [(1000, 768), (768,), (50257, 64)]]
    grads = [torch.randn_like(p) for p in params]
    states, steps = _moments(params), _steps(params, 1.0)
    lr = torch.tensor(1e-3, device="cuda")
    kw = dict(weight_decay=0.1, backend=name, **HYPER)
    for _ in range(2):  # the first call builds (and caches) the Triton tables
        ops.fused_adamw_(params, grads, *states, steps, lr=lr, **kw)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ops.fused_adamw_(params, grads, *states, steps, lr=lr, **kw)
        ops.fused_adamw_(params, grads, *states, steps, lr=1e-3, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda._sleep(int(2e8))  # keep the stream busy (~0.1 s): a step enqueued behind it returns at once
    ops.fused_adamw_(params, grads, *states, steps, lr=lr, **kw)
    assert not torch.cuda.current_stream().query(), "fused_adamw_ waited for the device"
    torch.cuda.synchronize()
    assert math.isfinite(params[0].sum().item())


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_fused_adamw_opcheck(name, backend_or_skip):
    backend_or_skip(name, "cuda")
    import importlib

    importlib.import_module(f"fastgpt.ops.{name}.fused_adamw")  # registers the op / fake implementation
    op = torch.ops.fastgpt.fused_adamw_triton if name == "triton" else torch.ops.fastgpt.fused_adamw_
    params = [torch.randn(n, device="cuda") for n in (10, 70000)] + [torch.randn(33, device="cuda").bfloat16()]
    grads = [torch.randn_like(p) for p in params]
    states = _moments(params)
    for lr_tensor, lr in ((None, 1e-3), (torch.tensor(1e-3, device="cuda"), 0.0)):
        args = (params, grads, *states, _steps(params, 2.0), lr_tensor, lr, 0.9, 0.999, 1e-8, 0.1, False)
        torch.library.opcheck(op.default, args)


@pytest.mark.slow
@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_fused_adamw_tensor_over_2_pow_31_elements(name, backend_or_skip):
    """64-bit offsets: the first and last elements of a 2^31 + 4097 element bf16 tensor are updated right."""
    backend_or_skip(name, "cuda")
    n = 2**31 + 4097
    free, _ = torch.cuda.mem_get_info()
    if free < 26 * 2**30:
        pytest.skip(f"needs ~26 GB free GPU memory, {free / 2**30:.1f} GB free")
    torch.manual_seed(0)
    p = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    g = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    m, v = torch.full((n,), 0.01, device="cuda"), torch.full((n,), 0.02, device="cuda")
    ends = (slice(0, 3000), slice(n - 3000, n))
    want = [_adamw_math(p[sl], g[sl], m[sl], v[sl], 3.0, 1e-2, weight_decay=0.1, **HYPER) for sl in ends]
    ops.fused_adamw_([p], [g], [m], [v], _steps([p], 3.0), lr=1e-2, weight_decay=0.1, backend=name, **HYPER)
    for sl, (p64, m64, v64) in zip(ends, want, strict=True):
        torch.testing.assert_close(p[sl].double(), p64.to(torch.bfloat16).double(), rtol=2 * 2**-8, atol=1e-6)
        torch.testing.assert_close(m[sl].double(), m64, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(v[sl].double(), v64, rtol=1e-5, atol=1e-9)
