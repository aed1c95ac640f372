"""fused_adamw_: every backend against torch.optim.AdamW (fp32) and the reference (fp16/bf16 params)."""

from __future__ import annotations

import pytest
import torch

import fastgpt.ops as ops
from fastgpt.ops import reference

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


@pytest.mark.parametrize("lr_tensor", [False, True], ids=["lr_float", "lr_tensor"])
@pytest.mark.parametrize(("weight_decay", "maximize"), [(0.1, False), (0.0, True)], ids=["wd", "maximize"])
def test_matches_torch_adamw(backend, weight_decay, maximize, lr_tensor, device):
    """20 fp32 steps, as torch.optim.AdamW takes them."""
    torch.manual_seed(0)
    params = [torch.randn(s, device=device) for s in SHAPES]
    params[3] = params[3].t()  # dense but not contiguous: grads and moments share its strides
    torch_params = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.AdamW(
        torch_params,
        lr=1e-2,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=weight_decay,
        maximize=maximize,
        foreach=False,
    )
    exp_avgs, exp_avg_sqs = _moments(params)
    steps = _steps(params)
    lr = torch.tensor(1e-2, device=device) if lr_tensor else 1e-2
    for _ in range(20):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(torch_params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for s in steps:
            s += 1
        ops.fused_adamw_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            steps,
            lr=lr,
            weight_decay=weight_decay,
            maximize=maximize,
            backend=backend,
            **HYPER,
        )
    for i, (p, tp) in enumerate(zip(params, torch_params, strict=True)):
        torch.testing.assert_close(p, tp.detach(), rtol=1e-5, atol=5e-6, msg=lambda m, i=i: f"param {i}: {m}")
        if p.numel():
            torch.testing.assert_close(exp_avgs[i], opt.state[tp]["exp_avg"], rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(exp_avg_sqs[i], opt.state[tp]["exp_avg_sq"], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("step", [1.0, 7.0, 1000.0])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_params(backend, dtype, step, device, dtype_or_skip):
    """fp16/bf16 params, fp32 moments: one step must equal fp32 math rounded once to the param dtype."""
    dtype_or_skip(dtype)
    torch.manual_seed(0)
    master = [torch.randn(s, device=device) for s in SHAPES]
    params = [p.to(dtype) for p in master]
    grads = [torch.randn_like(p) for p in params]
    exp_avgs = [0.1 * torch.randn_like(p, dtype=torch.float32) for p in params]
    exp_avg_sqs = [0.01 * torch.rand_like(p, dtype=torch.float32) for p in params]
    # what torch.optim.AdamW does to an fp32 copy of the params, rounded at the end
    expected = [p.float().requires_grad_() for p in params]
    opt = torch.optim.AdamW(expected, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, foreach=False)
    for p, g, m, v in zip(expected, grads, exp_avgs, exp_avg_sqs, strict=True):
        p.grad = g.float()
        opt.state[p] = {"step": torch.tensor(step - 1), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
    opt.step()
    ops.fused_adamw_(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        _steps(params, step),
        lr=1e-3,
        weight_decay=0.1,
        backend=backend,
        **HYPER,
    )
    ulp = torch.finfo(dtype).eps
    for i, (p, e) in enumerate(zip(params, expected, strict=True)):
        assert p.dtype == dtype
        # at most one rounding step apart (the fp32 results may straddle a rounding boundary)
        torch.testing.assert_close(
            p.float(), e.detach().to(dtype).float(), rtol=ulp, atol=1e-6, msg=lambda m, i=i: f"param {i}: {m}"
        )
        if p.numel():
            torch.testing.assert_close(exp_avgs[i], opt.state[e]["exp_avg"], rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(exp_avg_sqs[i], opt.state[e]["exp_avg_sq"], rtol=1e-5, atol=1e-9)


def test_mixed_dtypes_in_one_call(backend, device):
    """fp32 and fp16 params (one launch per dtype) match the reference run on copies."""
    torch.manual_seed(0)
    params = [torch.randn(70, device=device), torch.randn(9, 9, device=device).half(), torch.randn(5, device=device)]
    grads = [torch.randn_like(p) for p in params]
    states = _moments(params)
    copies = [[t.clone() for t in ts] for ts in (params, grads, *states)]
    kw = dict(lr=3e-3, weight_decay=0.05, **HYPER)
    ops.fused_adamw_(params, grads, *states, _steps(params, 3.0), backend=backend, **kw)
    reference.fused_adamw_(*copies, _steps(params, 3.0), **kw)
    for got, want in zip(params + states[0] + states[1], copies[0] + copies[2] + copies[3], strict=True):
        torch.testing.assert_close(got, want, rtol=2e-6 if got.dtype == torch.float32 else 1e-3, atol=1e-7)


def test_triton_bias_correction_is_exact(device, backend_or_skip):
    """First step from zero moments moves each param by exactly lr * g / (|g| + eps).

    1 - beta2^1 computed as 1 - exp(ln beta2) in fp32 would be off by ~1e-5 relative here.
    """
    backend_or_skip("triton")
    torch.manual_seed(0)
    g = torch.randn(100, device=device) + 0.5
    p = torch.zeros_like(g)
    ops.fused_adamw_([p], [g], *_moments([p]), _steps([p], 1.0), lr=1.0, weight_decay=0.0, backend="triton",
                     beta1=0.9, beta2=0.999, eps=0.0)
    torch.testing.assert_close(p, -torch.sign(g), rtol=2e-6, atol=0)


def test_step_counters_in_other_dtypes_or_on_cpu(backend, device):
    """float64 / CPU step tensors give the same update as fp32 ones on the params' device."""
    torch.manual_seed(0)
    params = [torch.randn(40, device=device), torch.randn(3, 3, device=device)]
    grads = [torch.randn_like(p) for p in params]
    copies = [p.clone() for p in params]
    kw = dict(lr=1e-2, weight_decay=0.1, backend=backend, **HYPER)
    ops.fused_adamw_(params, grads, *_moments(params), _steps(params, 4.0), **kw)
    steps = [torch.tensor(4.0, dtype=torch.float64), torch.tensor([4.0])]
    ops.fused_adamw_(copies, grads, *_moments(params), steps, **kw)
    for p, c in zip(params, copies, strict=True):
        torch.testing.assert_close(p, c, rtol=1e-6, atol=1e-7)


def test_reference_matches_torch_adamw(device):
    """The reference alone (fp32, 20 steps) against torch.optim.AdamW, bit-for-bit close."""
    torch.manual_seed(0)
    params = [torch.randn(s, device=device) for s in SHAPES]
    torch_params = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.AdamW(torch_params, lr=1e-2, weight_decay=0.1, foreach=False)
    states, steps = _moments(params), _steps(params)
    for _ in range(20):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(torch_params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for s in steps:
            s += 1
        reference.fused_adamw_(params, grads, *states, steps, lr=1e-2, weight_decay=0.1, **HYPER)
    for p, tp in zip(params, torch_params, strict=True):
        torch.testing.assert_close(p, tp.detach(), rtol=1e-5, atol=5e-6)


def test_triton_rejects_unsupported_inputs(device, backend_or_skip):
    backend_or_skip("triton")
    from fastgpt.ops.triton import adamw

    def args(p_dtype=torch.float32, m_dtype=torch.float32, g_shape=(4,), n_steps=1):
        p = torch.randn(4, dtype=p_dtype, device=device)
        g = torch.randn(g_shape, dtype=p_dtype, device=device)
        m, v = torch.zeros(4, dtype=m_dtype, device=device), torch.zeros(4, dtype=m_dtype, device=device)
        return [p], [g], [m], [v], _steps([p] * n_steps, 1.0)

    assert adamw.unsupported_reason(args()[0]) is None
    assert "float64" in adamw.unsupported_reason(args(torch.float64)[0])
    kw = dict(lr=1e-3, weight_decay=0.0, backend="triton", **HYPER)
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


# ---- GPU only: no host synchronization, opcheck, tensors past 2^31 elements ----


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_adamw_does_not_synchronize(backend_or_skip):
    backend_or_skip("triton", "cuda")
    params = [torch.randn(s, device="cuda") for s in [(1000, 768), (768,), (50257, 64)]]
    grads = [torch.randn_like(p) for p in params]
    states, steps = _moments(params), _steps(params)
    lr = torch.tensor(1e-3, device="cuda")
    for _ in range(2):  # the first call builds (and caches) the tables
        ops.fused_adamw_(params, grads, *states, steps, lr=lr, weight_decay=0.1, backend="triton", **HYPER)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ops.fused_adamw_(params, grads, *states, steps, lr=lr, weight_decay=0.1, backend="triton", **HYPER)
        ops.fused_adamw_(params, grads, *states, steps, lr=1e-3, weight_decay=0.1, backend="triton", **HYPER)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_adamw_opcheck(backend_or_skip):
    backend_or_skip("triton", "cuda")
    from fastgpt.ops.triton import adamw  # noqa: F401  (registers the op)

    params = [torch.randn(s, device="cuda", dtype=torch.bfloat16) for s in [(33, 64), (5000,)]]
    grads = [torch.randn_like(p) for p in params]
    states = _moments(params)
    args = (params, grads, *states, _steps(params, 2.0), None, 1e-3, 0.9, 0.999, 1e-8, 0.1, False)
    torch.library.opcheck(torch.ops.fastgpt.fused_adamw_triton.default, args)


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_adamw_tensor_over_2_pow_31_elements(backend_or_skip):
    """64-bit offsets: the last elements of a 2^31 + 4097 element fp16 tensor are updated right."""
    backend_or_skip("triton", "cuda")
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs about 30 GiB of GPU memory")
    n = 2**31 + 4097
    p = torch.randn(n, device="cuda", dtype=torch.float16)
    g = torch.randn_like(p)
    m, v = torch.zeros(n, device="cuda"), torch.zeros(n, device="cuda")
    tails = [t[-10000:].clone() for t in (p, g, m, v)]
    heads = [t[:10000].clone() for t in (p, g, m, v)]
    kw = dict(lr=1e-2, weight_decay=0.1, **HYPER)
    ops.fused_adamw_([p], [g], [m], [v], _steps([p], 1.0), backend="triton", **kw)
    for part, sl in ((tails, slice(-10000, None)), (heads, slice(0, 10000))):
        reference.fused_adamw_(*[[t] for t in part], _steps([p], 1.0), **kw)
        torch.testing.assert_close(p[sl], part[0], rtol=1e-3, atol=1e-6)
        torch.testing.assert_close(m[sl], part[2])
        torch.testing.assert_close(v[sl], part[3])
