"""The csrc/ kernels on CPU through the CUDA emulator (``FASTGPT_CUDA_EMULATE=1``), both schedules.

``backend="cuda"`` runs the emulated build of csrc/ on CPU tensors: flash attention (D 64/128,
odd T, causal or not, GQA, fp16/bf16, forward and backward), RMSNorm (vectorized or not, one or
several warps per row, residual, fp32/fp16/bf16) and fused AdamW through the real launch packing
(more than 36 tensors, a tensor spanning launches, unaligned tensors), each against float64 math,
with the tolerance of ``assert_err_close`` (conftest.py). Then the emulator itself: its mma /
ldmatrix / ldmatrix.trans self-test against an exact integer product, and its error reports for
an out-of-bounds access, a deadlock, a divergent shuffle and a lane leaving a collective.

The emulation is switched on per test (the variable is read when fastgpt.ops.cuda is imported and
by ``available_backends``), so the rest of the suite sees the backends as they are. These tests
skip where the real extension is already loaded in the process (a GPU machine).
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

import fastgpt.ops as ops
from fastgpt.ops import reference, torch_path

SCHEDULES = ("interleaved", "ahead")


@pytest.fixture(params=SCHEDULES)
def emulated(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """FASTGPT_CUDA_EMULATE=1 with each schedule; the emulated build loaded (built if absent)."""
    cuda_pkg = sys.modules.get("fastgpt.ops.cuda")
    if cuda_pkg is not None and not cuda_pkg.EMULATED:
        pytest.skip("the real CUDA extension is loaded in this process; the emulator cannot be loaded beside it")
    if cuda_pkg is None and torch.cuda.is_available() and os.environ.get("FASTGPT_CUDA_EMULATE") != "1":
        pytest.skip("a CUDA device is here: the emulator would displace the real extension in this process "
                    "(set FASTGPT_CUDA_EMULATE=1 for the whole run to test it)")
    monkeypatch.setenv("FASTGPT_CUDA_EMULATE", "1")
    monkeypatch.setenv("FASTGPT_CUDA_EMULATE_SCHEDULE", request.param)
    reason = ops.available_backends("cpu")["cuda"]
    assert reason is None, reason
    return request.param


def _same_dtype_attention(q, k, v, causal):
    return torch_path.flash_attention(q, k, v, causal)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("T", [1, 17, 64, 113])
@pytest.mark.parametrize("causal", [True, False])
def test_flash_attention(emulated, assert_err_close, dtype, D, T, causal):
    torch.manual_seed(T * 1000 + D)
    B, Hq, Hkv = (2, 4, 2) if T <= 17 else (1, 2, 1)  # GQA: two query heads per K/V head
    q = torch.randn(B, Hq, T, D, dtype=dtype, requires_grad=True)
    k = torch.randn(B, Hkv, T, D, dtype=dtype, requires_grad=True)
    v = torch.randn(B, Hkv, T, D, dtype=dtype, requires_grad=True)
    dout = torch.randn(B, Hq, T, D, dtype=dtype)

    out = ops.flash_attention(q, k, v, causal=causal, backend="cuda")
    grads = torch.autograd.grad(out, (q, k, v), dout)
    same = _same_dtype_attention(q, k, v, causal)
    same_grads = torch.autograd.grad(same, (q, k, v), dout)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = reference.flash_attention(q64, k64, v64, causal)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), dout.double())

    assert_err_close("out", out, same, ref)
    for name, g, s, r in zip(("dq", "dk", "dv"), grads, same_grads, ref_grads):
        assert_err_close(name, g, s, r, factor=3.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
def test_flash_attention_long(emulated, assert_err_close, dtype, causal):
    """Five K/V tiles: the double buffer is refilled while other warps may still read it."""
    test_flash_attention(emulated, assert_err_close, dtype, 64, 257, causal)


def test_flash_attention_deterministic(emulated):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 70, 64, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn(1, 2, 70, 64, dtype=torch.bfloat16)
    runs = [torch.autograd.grad(ops.flash_attention(q, k, v, backend="cuda"), (q, k, v), dout) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def _rms_norm_ref64(x, weight, residual, eps):
    h = x if residual is None else (x + residual)  # rounded to x's dtype, as the kernel does
    h64 = h.double()
    y = h64 * torch.rsqrt(h64.pow(2).mean(-1, keepdim=True) + eps)
    return y * weight.double() if weight is not None else y


@pytest.mark.parametrize(
    "shape, dtype, with_weight, with_residual",
    [
        ((37, 256), torch.float16, True, False),  # vectorized, one warp per row, 8 rows per block
        ((37, 256), torch.bfloat16, True, True),
        ((5, 100), torch.float32, True, False),  # n not a multiple of the vector width
        ((3, 4096), torch.bfloat16, True, True),  # several warps per row: shared-memory reduction
        ((2, 3, 3001), torch.float16, False, False),  # beyond the register cache, element-wise
        ((9, 2048), torch.float32, True, True),
    ],
    ids=["fp16", "bf16-residual", "fp32-n100", "bf16-4096-residual", "fp16-n3001", "fp32-2048-residual"],
)
def test_rms_norm(emulated, assert_err_close, shape, dtype, with_weight, with_residual):
    torch.manual_seed(shape[-1])
    n = shape[-1]
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    weight = (torch.rand(n) + 0.5).requires_grad_() if with_weight else None
    residual = torch.randn(shape, dtype=dtype, requires_grad=True) if with_residual else None
    eps = torch.finfo(dtype).eps
    leaves = [t for t in (x, weight, residual) if t is not None]

    res = ops.rms_norm(x, weight, eps, residual, backend="cuda")
    out = res[0] if with_residual else res
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dout)
    same = reference.rms_norm(x, weight, eps, residual)
    same = same[0] if with_residual else same
    same_grads = torch.autograd.grad(same, leaves, dout)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    x64 = leaves64[0]
    w64 = leaves64[1] if with_weight else None
    r64 = leaves64[-1] if with_residual else None
    ref = _rms_norm_ref64(x64, w64, r64, eps)
    ref_grads = torch.autograd.grad(ref, leaves64, dout.double())

    assert_err_close("out", out, same, ref)
    if with_residual:
        assert torch.equal(res[1], x.detach() + residual.detach())
    for name, g, s, r in zip(("dx", "dweight", "dresidual")[: len(leaves)], grads, same_grads, ref_grads):
        assert_err_close(name, g, s.to(g.dtype), r, factor=3.0)


def _adamw_tensors(sizes, dtype, unaligned=False):
    torch.manual_seed(len(sizes))
    params, grads, ms, vs, steps = [], [], [], [], []
    for i, n in enumerate(sizes):
        off = 1 if unaligned and i % 3 == 0 else 0  # a storage offset breaks 4-element alignment
        params.append(torch.randn(n + off, dtype=dtype)[off:])
        grads.append(torch.randn(n + off, dtype=dtype)[off:])
        ms.append(torch.randn(n).abs() * 0.1)
        vs.append(torch.rand(n) * 0.01)
        steps.append(torch.tensor(float(3 + i % 5)))
    return params, grads, ms, vs, steps


def _adamw_ref64(p, g, m, v, step, lr, beta1, beta2, eps, wd):
    """torch.optim.AdamW's formula in float64 (returns p, m, v)."""
    p, g, m, v, step = p.double(), g.double(), m.double(), v.double(), step.item()
    p = p * (1 - lr * wd)
    m = m + (1 - beta1) * (g - m)
    v = v * beta2 + (1 - beta2) * g * g
    denom = v.sqrt() / math.sqrt(1 - beta2**step) + eps
    return p - lr / (1 - beta1**step) * m / denom, m, v


@pytest.mark.parametrize(
    "sizes, dtype, unaligned",
    [
        ([1, 3, 4, 1000, 65536, 65537, 200_000] + [37 * i + 5 for i in range(33)], torch.float32, False),
        ([7, 130_000, 513] + [11 * i + 1 for i in range(40)], torch.bfloat16, True),
        ([4097, 65536 * 2 + 3, 9], torch.float16, True),
    ],
    ids=["fp32-40-tensors", "bf16-43-unaligned", "fp16-unaligned"],
)
@pytest.mark.parametrize("lr_tensor", [False, True])
def test_fused_adamw(emulated, sizes, dtype, unaligned, lr_tensor):
    params, grads, ms, vs, steps = _adamw_tensors(sizes, dtype, unaligned)
    lr, beta1, beta2, eps, wd = 1e-2, 0.9, 0.95, 1e-8, 0.1
    expected = [_adamw_ref64(*t, lr, beta1, beta2, eps, wd) for t in zip(params, grads, ms, vs, steps)]
    ops.fused_adamw_(params, grads, ms, vs, steps, lr=torch.tensor(lr) if lr_tensor else lr, beta1=beta1,
                     beta2=beta2, eps=eps, weight_decay=wd, backend="cuda")
    ulp = torch.finfo(dtype).eps
    for i, (p, m, v, (pe, me, ve)) in enumerate(zip(params, ms, vs, expected)):
        torch.testing.assert_close(m.double(), me, rtol=1e-6, atol=1e-7, msg=lambda s, i=i: f"exp_avgs[{i}]: {s}")
        torch.testing.assert_close(v.double(), ve, rtol=1e-6, atol=1e-9, msg=lambda s, i=i: f"exp_avg_sqs[{i}]: {s}")
        torch.testing.assert_close(p.double(), pe, rtol=ulp, atol=1e-6, msg=lambda s, i=i: f"params[{i}]: {s}")


@pytest.mark.slow
def test_fused_adamw_tensor_spanning_launches(emulated):
    """A tensor of more than 320 chunks continues in the next launch, in the first slot."""
    if emulated == "ahead":
        pytest.skip("one schedule suffices: the packing is host code")
    n = 320 * 65536 + 1000
    params, grads, ms, vs, steps = _adamw_tensors([5000, n, 77], torch.bfloat16)
    expected = [_adamw_ref64(*t, 1e-3, 0.9, 0.999, 1e-8, 0.0) for t in zip(params, grads, ms, vs, steps)]
    ops.fused_adamw_(params, grads, ms, vs, steps, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                     backend="cuda")
    for p, (pe, _, _) in zip(params, expected):
        torch.testing.assert_close(p.double(), pe, rtol=torch.finfo(torch.bfloat16).eps, atol=1e-6)


def _guarded(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` whose storage ends at an inaccessible page: reading past it is an error."""
    g = torch.ops.fastgpt_emu.guarded_empty(t.numel(), t.dtype).view(t.shape)
    return g.copy_(t)


@pytest.mark.parametrize("T", [1, 113])
def test_flash_attention_reads_nothing_past_its_inputs(emulated, T):
    torch.manual_seed(T)
    q, k, v, dout = (_guarded(torch.randn(1, 1, T, 64, dtype=torch.float16)) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_()
    out = ops.flash_attention(q, k, v, causal=False, backend="cuda")
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), _guarded(dout))
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all()


def test_rms_norm_reads_nothing_past_its_inputs(emulated):
    x = _guarded(torch.randn(3, 100))
    assert torch.isfinite(ops.rms_norm(x, _guarded(torch.ones(100)), backend="cuda")).all()


def _integers(rows: int, cols: int, a: int, b: int, m: int) -> torch.Tensor:
    """Small integers ((a i + b j) % m - m // 2): exact in fp16, bf16 and fp32, as are their products' sums."""
    i = torch.arange(rows).unsqueeze(1)
    j = torch.arange(cols).unsqueeze(0)
    return ((a * i + b * j) % m - m // 2).float()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", [0, 1, 2, 3], ids=["fragments", "ldmatrix", "ldmatrix.trans", "cp.async"])
def test_mma_selftest(emulated, dtype, mode):
    """One warp's 16x16x16 product through mma.sync, fed four ways, equals the exact integer product."""
    A = _integers(16, 16, 7, 3, 11)
    B = _integers(16, 16, 5, 2, 9)
    expected = (A if mode != 3 else A * (torch.arange(16) < 12).unsqueeze(1)) @ B
    C = torch.ops.fastgpt_emu.mma_selftest(A.to(dtype), B.to(dtype), mode)
    assert torch.equal(C, expected), f"max error {(C - expected).abs().max().item()}"


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("oob_global", ["invalid memory access", "block (1, 0, 0) thread (63, 0, 0)"]),
        ("oob_shared", ["out-of-bounds shared memory", "block (0, 0, 0) thread (63, 0, 0)"]),
        ("deadlock", ["deadlock", "(0, 0, 0) waits at __syncthreads", "(16, 0, 0) waits in bar.warp.sync"]),
        ("barrier_in_branch", ["__syncthreads", "block (0, 0, 0) thread ("]),
        ("divergent_shuffle", ["divergent warp collective", "shfl.sync.down", "shfl.sync.bfly", "block (0, 0, 0)"]),
        ("exit_in_collective", ["exited", "shfl.sync.bfly", "block (0, 0, 0) thread ("]),
    ],
)
def test_emulator_reports(emulated, kind, expected):
    with pytest.raises(RuntimeError) as info:
        torch.ops.fastgpt_emu.fault(kind, _guarded(torch.zeros(127)))
    for part in expected:
        assert part in str(info.value), str(info.value)
