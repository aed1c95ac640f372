"""The CUDA C++ backend (``fastgpt._C``): build and registration, then each op on the GPU.

Accuracy is judged the flash-attention way (``assert_err_close`` in conftest.py): the kernel's max
error against a float64 reference may be at most 2x (3x for gradients) PyTorch's own error in the
same dtype, plus one ulp. Also: determinism (bitwise equal backward runs), ``torch.library.opcheck``
on every op, ``torch.compile(fullgraph=True)`` against eager, and the messages of bad inputs.
Everything but the build test needs a CUDA device and the built extension, and skips otherwise.

Run the kernels under compute-sanitizer with ``FASTGPT_SANITIZE=1`` (smaller shapes, see
``_sanitizing``): ``compute-sanitizer --tool memcheck python -m pytest -x -q -k 'not slow'
tests/ops/test_cuda_extension.py`` (and ``--tool racecheck`` / ``--tool synccheck``).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastgpt.ops import reference
from fastgpt.ops._backend import _extension_error, available_backends

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_OPS = ("flash_attn_fwd", "flash_attn_bwd", "rms_norm_fwd", "rms_norm_bwd", "fused_adamw_")


def _cuda_backend_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    return available_backends("cuda")["cuda"]


_REASON = _cuda_backend_reason()


def gpu(test):
    """Mark a test as needing a CUDA device and the built extension (skipped, with why, otherwise)."""
    skip = pytest.mark.skipif(_REASON is not None, reason=f"CUDA backend unavailable: {_REASON}")
    return pytest.mark.gpu(skip(test))


def _sanitizing() -> bool:
    """Under compute-sanitizer (FASTGPT_SANITIZE=1) the long sequences are skipped: it is ~100x slower."""
    return os.environ.get("FASTGPT_SANITIZE") == "1"


# ---------------------------------------------------------------------------------------------
# build and registration
# ---------------------------------------------------------------------------------------------

_CHECK_OPS = """
import sys
import fastgpt
fastgpt.__path__.append(sys.argv[1])  # the freshly built fastgpt/_C*.so, outside the source tree
import torch
import fastgpt._C
missing = [op for op in sys.argv[2:] if not hasattr(torch.ops.fastgpt, op)]
print("fastgpt._C from", fastgpt._C.__file__, "registers", [op for op in sys.argv[2:] if op not in missing])
sys.exit(f"missing ops: {missing}" if missing else 0)
"""


@pytest.mark.slow
def test_extension_builds_and_registers_every_op(tmp_path: Path) -> None:
    """Build fastgpt._C out of tree (never touching an installed one) and check its ops register."""
    from torch.utils.cpp_extension import CUDA_HOME

    if torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} is a CPU-only build: the CUDA extension cannot be built")
    if CUDA_HOME is None or shutil.which("nvcc", path=str(Path(CUDA_HOME) / "bin")) is None:
        pytest.skip("nvcc not found (set CUDA_HOME): the CUDA extension cannot be built")
    if not (Path(CUDA_HOME) / "include" / "cuda_runtime.h").exists():
        pytest.skip(f"CUDA_HOME={CUDA_HOME} has no include/cuda_runtime.h (set CUDA_HOME to the toolkit's root)")
    env = {**os.environ, "FASTGPT_FORCE_CUDA_BUILD": "1", "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
    build = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "build_ext",
            "--build-lib",
            str(tmp_path / "lib"),
            "--build-temp",
            str(tmp_path / "tmp"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, f"build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    check = subprocess.run(
        [sys.executable, "-c", _CHECK_OPS, str(tmp_path / "lib" / "fastgpt"), *EXPECTED_OPS],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    print(check.stdout)
    assert check.returncode == 0, f"{check.stdout}\n{check.stderr}"


@pytest.mark.parametrize("op", EXPECTED_OPS)
def test_installed_extension_registers(op: str) -> None:
    reason = _extension_error()
    if reason is not None:
        pytest.skip(reason)
    import fastgpt.ops.cuda  # noqa: F401

    assert hasattr(torch.ops.fastgpt, op), f"torch.ops.fastgpt.{op} is not registered"


# ---------------------------------------------------------------------------------------------
# flash attention
# ---------------------------------------------------------------------------------------------


def _make(shape_bhtd: tuple[int, int, int, int], dtype: torch.dtype, layout: str) -> torch.Tensor:
    """A (B, H, T, D) CUDA tensor with the given memory layout.

    contiguous: SDPA layout; bthd: a transposed view of (B, T, H, D) memory (read in place);
    sliced: the first D columns of a (B, H, T, 2D) tensor (read in place, non-contiguous);
    tdlast: a transposed (B, H, D, T) tensor, so the head dim is strided (copied by the wrapper).
    """
    B, H, T, D = shape_bhtd
    if layout == "contiguous":
        return torch.randn(B, H, T, D, dtype=dtype, device="cuda")
    if layout == "bthd":
        return torch.randn(B, T, H, D, dtype=dtype, device="cuda").transpose(1, 2)
    if layout == "sliced":
        return torch.randn(B, H, T, 2 * D, dtype=dtype, device="cuda")[..., :D]
    if layout == "tdlast":
        return torch.randn(B, H, D, T, dtype=dtype, device="cuda").transpose(2, 3)
    raise AssertionError(layout)


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


def _check_attention(assert_err_close, q, k, v, causal: bool, scale: float | None = None) -> None:
    from fastgpt.ops.cuda.flash_attention import flash_attention

    dout = torch.randn_like(q)
    got = _out_and_grads(lambda q, k, v: flash_attention(q, k, v, causal, scale), q, k, v, dout)
    ref = _out_and_grads(
        lambda q, k, v: reference.flash_attention(q, k, v, causal, scale), q, k, v, dout, torch.float64
    )
    same = _out_and_grads(lambda q, k, v: _sdpa(q, k, v, causal, scale), q, k, v, dout)
    for name, a, b, r, factor in zip(("out", "dq", "dk", "dv"), got, same, ref, (2, 3, 3, 3), strict=True):
        diff = (a.double() - r).abs()
        print(
            f"{name}: max err {diff.max().item():.3e} mean {diff.mean().item():.3e} "
            f"(torch {(b.double() - r).abs().max().item():.3e})"
        )
        assert_err_close(name, a, b, r, factor)


ATTN_DTYPES = [torch.float16, torch.bfloat16]
SEQLENS = [1, 17, 113, 203, 1023, 4096]


@gpu
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("T", SEQLENS)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", ATTN_DTYPES, ids=str)
def test_flash_attention_matches_reference(dtype, D, T, causal, assert_err_close):
    if T > 1023 and _sanitizing():
        pytest.skip("long sequences are skipped under compute-sanitizer")
    torch.manual_seed(T + D)
    B, H = (1, 2) if T >= 4096 else (2, 3)
    q, k, v = (_make((B, H, T, D), dtype, "contiguous") for _ in range(3))
    _check_attention(assert_err_close, q, k, v, causal)


@gpu
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("Hq,Hkv", [(8, 2), (8, 1)], ids=["gqa", "mqa"])
@pytest.mark.parametrize("T", [17, 203, 1023])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", ATTN_DTYPES, ids=str)
def test_flash_attention_gqa(dtype, D, T, Hq, Hkv, causal, assert_err_close):
    torch.manual_seed(T + Hkv)
    q = _make((2, Hq, T, D), dtype, "contiguous")
    k, v = (_make((2, Hkv, T, D), dtype, "contiguous") for _ in range(2))
    _check_attention(assert_err_close, q, k, v, causal)


@gpu
@pytest.mark.parametrize("layout", ["bthd", "sliced", "tdlast"])
@pytest.mark.parametrize("T", [113, 1023])
@pytest.mark.parametrize("dtype", ATTN_DTYPES, ids=str)
def test_flash_attention_noncontiguous(dtype, T, layout, assert_err_close):
    torch.manual_seed(T)
    q = _make((2, 4, T, 64), dtype, layout)
    k, v = (_make((2, 2, T, 64), dtype, layout) for _ in range(2))
    _check_attention(assert_err_close, q, k, v, causal=True)
    if layout != "tdlast":  # read in place: the output keeps q's layout
        from fastgpt.ops.cuda.flash_attention import flash_attention

        assert flash_attention(q, k, v).stride() == torch.empty_like(q).stride()


@gpu
@pytest.mark.parametrize("scale", [0.0, 0.3, 2.0])
def test_flash_attention_scale(scale, assert_err_close):
    torch.manual_seed(1)
    q, k, v = (_make((1, 2, 77, 128), torch.bfloat16, "contiguous") for _ in range(3))
    _check_attention(assert_err_close, q, k, v, causal=True, scale=scale)


@gpu
@pytest.mark.parametrize("Hkv", [4, 1], ids=["mha", "mqa"])
@pytest.mark.parametrize("D", [64, 128])
def test_flash_attention_backward_is_deterministic(D, Hkv):
    from fastgpt.ops.cuda.flash_attention import flash_attention

    torch.manual_seed(0)
    q = _make((2, 4, 777, D), torch.bfloat16, "contiguous")
    k, v = (_make((2, Hkv, 777, D), torch.bfloat16, "contiguous") for _ in range(2))
    dout = torch.randn_like(q)
    first = _out_and_grads(lambda q, k, v: flash_attention(q, k, v, True), q, k, v, dout)
    second = _out_and_grads(lambda q, k, v: flash_attention(q, k, v, True), q, k, v, dout)
    for name, a, b in zip(("out", "dq", "dk", "dv"), first, second, strict=True):
        assert torch.equal(a, b), f"{name} differs between two identical runs"


@gpu
def test_flash_attention_opcheck():
    import fastgpt.ops.cuda.flash_attention  # noqa: F401  (registers the fake implementations)

    torch.manual_seed(0)
    for layout in ("contiguous", "bthd"):
        q = _make((1, 4, 100, 64), torch.float16, layout)
        k, v = (_make((1, 2, 100, 64), torch.float16, layout) for _ in range(2))
        scale = 0.125
        torch.library.opcheck(torch.ops.fastgpt.flash_attn_fwd.default, (q, k, v, True, scale))
        out, lse = torch.ops.fastgpt.flash_attn_fwd(q, k, v, True, scale)
        dout = torch.randn_like(out)
        torch.library.opcheck(torch.ops.fastgpt.flash_attn_bwd.default, (dout, q, k, v, out, lse, True, scale))


@gpu
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_flash_attention_compile_matches_eager(causal):
    from fastgpt.ops.cuda.flash_attention import flash_attention

    torch.manual_seed(0)
    q = _make((2, 4, 150, 64), torch.bfloat16, "bthd")
    k, v = (_make((2, 2, 150, 64), torch.bfloat16, "bthd") for _ in range(2))
    dout = torch.randn_like(q)

    def fn(q, k, v):
        return flash_attention(q, k, v, causal)

    eager = _out_and_grads(fn, q, k, v, dout)
    compiled = _out_and_grads(torch.compile(fn, fullgraph=True), q, k, v, dout)
    for name, a, b in zip(("out", "dq", "dk", "dv"), eager, compiled, strict=True):
        assert torch.equal(a, b), f"{name}: torch.compile differs from eager"


@gpu
def test_flash_attention_rejects_unsupported_inputs():
    from fastgpt.ops.cuda.flash_attention import flash_attention, unsupported_reason

    q = torch.randn(1, 2, 16, 96, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match=r"head dim 96 is not supported \(64, 128\)"):
        flash_attention(q, q, q)
    with pytest.raises(RuntimeError, match=r"fastgpt flash_attn_fwd: head dim 96 is not supported \(64, 128\)"):
        torch.ops.fastgpt.flash_attn_fwd(q, q, q, True, 0.1)
    q32 = torch.randn(1, 2, 16, 64, device="cuda")
    assert "float32" in unsupported_reason(q32, q32, q32)
    with pytest.raises(ValueError, match="float32"):
        flash_attention(q32, q32, q32)
    with pytest.raises(RuntimeError, match="fastgpt flash_attn_fwd: dtype float32 is not supported"):
        torch.ops.fastgpt.flash_attn_fwd(q32, q32, q32, True, 0.1)
    q16 = torch.randn(1, 3, 16, 64, device="cuda", dtype=torch.float16)
    k16 = torch.randn(1, 2, 16, 64, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        flash_attention(q16, k16, k16)
    k_long = torch.randn(1, 3, 32, 64, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match="KV-cache"):
        flash_attention(q16, k_long, k_long)
    assert "cuda" in unsupported_reason(q16.cpu(), q16.cpu(), q16.cpu()).lower()


# ---------------------------------------------------------------------------------------------
# RMSNorm
# ---------------------------------------------------------------------------------------------

NORM_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _norm_outputs(fn, x, w, r, dy, dh, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Outputs and gradients of ``fn(x, w, r)`` on fresh leaves (cast to ``dtype`` if given)."""
    leaves = {
        name: (t.detach() if dtype is None else t.detach().to(dtype)).requires_grad_()
        for name, t in (("x", x), ("w", w), ("r", r))
        if t is not None
    }
    res = fn(leaves["x"], leaves.get("w"), leaves.get("r"))
    y, h = res if r is not None else (res, None)
    loss = (y * dy.to(y.dtype)).sum() + ((h * dh.to(h.dtype)).sum() if h is not None else 0)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    out = {"y": y} | ({"h": h} if h is not None else {})
    return out | {f"d{name}": g for name, g in zip(leaves, grads, strict=True)}


@gpu
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("weight", [True, False], ids=["weight", "noweight"])
@pytest.mark.parametrize("N", [1, 7, 1000, 4095, 4096, 65536])
@pytest.mark.parametrize("dtype", NORM_DTYPES, ids=str)
def test_rms_norm_matches_reference(dtype, N, weight, residual, assert_err_close):
    from fastgpt.ops.cuda.rms_norm import rms_norm

    torch.manual_seed(N)
    rows = 7 if N >= 65536 else 301
    x = torch.randn(rows, N, dtype=dtype, device="cuda")
    w = torch.rand(N, dtype=dtype, device="cuda") + 0.5 if weight else None
    r = torch.randn(rows, N, dtype=dtype, device="cuda") if residual else None
    dy, dh = torch.randn_like(x), torch.randn_like(x)
    eps = 1e-6
    got = _norm_outputs(lambda x, w, r: rms_norm(x, w, eps, r), x, w, r, dy, dh)
    ref = _norm_outputs(lambda x, w, r: reference.rms_norm(x, w, eps, r), x, w, r, dy, dh, torch.float64)
    same = _norm_outputs(lambda x, w, r: reference.rms_norm(x, w, eps, r), x, w, r, dy, dh)
    for name in ref:
        diff = (got[name].double() - ref[name]).abs()
        print(f"{name}: max err {diff.max().item():.3e} mean {diff.mean().item():.3e}")
        assert_err_close(name, got[name], same[name], ref[name], 2 if name in ("y", "h") else 3)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rms_norm_strided_and_batched_inputs(dtype, assert_err_close):
    """A (B, T, C) input, a non-contiguous x (copied), an fp32 weight for low-precision x, and an
    input whose start is not 16-byte aligned (the element-wise path)."""
    from fastgpt.ops.cuda.rms_norm import rms_norm

    torch.manual_seed(0)
    w = torch.rand(768, device="cuda") + 0.5
    for x in (
        torch.randn(4, 33, 768, dtype=dtype, device="cuda"),
        torch.randn(4, 768, 33, dtype=dtype, device="cuda").transpose(1, 2),
        torch.randn(33 * 768 + 1, dtype=dtype, device="cuda")[1:].view(33, 768),
    ):
        dy = torch.randn_like(x)
        got = _norm_outputs(lambda x, w, r: rms_norm(x, w, 1e-5), x, w, None, dy, dy)
        ref = _norm_outputs(lambda x, w, r: reference.rms_norm(x, w, 1e-5), x, w, None, dy, dy, torch.float64)
        same = _norm_outputs(lambda x, w, r: reference.rms_norm(x, w.to(x.dtype), 1e-5), x, w, None, dy, dy)
        for name in ("y", "dx"):
            assert_err_close(name, got[name], same[name], ref[name], 2 if name == "y" else 3)
        assert got["dw"].dtype == torch.float32
        torch.testing.assert_close(got["dw"].double(), ref["dw"], rtol=1e-3, atol=1e-3)


@gpu
def test_rms_norm_backward_is_deterministic():
    from fastgpt.ops.cuda.rms_norm import rms_norm

    torch.manual_seed(0)
    x, r = (torch.randn(8192, 1024, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    w = torch.rand(1024, dtype=torch.bfloat16, device="cuda")
    dy, dh = torch.randn_like(x), torch.randn_like(x)
    runs = [_norm_outputs(lambda x, w, r: rms_norm(x, w, 1e-6, r), x, w, r, dy, dh) for _ in range(2)]
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), f"{name} differs between two identical runs"


@gpu
def test_rms_norm_opcheck():
    import fastgpt.ops.cuda.rms_norm  # noqa: F401  (registers the fake implementations)

    torch.manual_seed(0)
    x, r = (torch.randn(3, 5, 256, dtype=torch.float16, device="cuda") for _ in range(2))
    w = torch.rand(256, device="cuda")
    for weight, residual in ((w, r), (None, None), (w.half(), None)):
        torch.library.opcheck(torch.ops.fastgpt.rms_norm_fwd.default, (x, weight, residual, 1e-6))
        y, h, rstd = torch.ops.fastgpt.rms_norm_fwd(x, weight, residual, 1e-6)
        hh = h if residual is not None else x
        dh = torch.randn_like(x) if residual is not None else None
        torch.library.opcheck(torch.ops.fastgpt.rms_norm_bwd.default, (torch.randn_like(y), dh, hh, weight, rstd))


@gpu
def test_rms_norm_compile_matches_eager():
    from fastgpt.ops.cuda.rms_norm import rms_norm

    torch.manual_seed(0)
    x, r = (torch.randn(2, 64, 768, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    w = torch.rand(768, dtype=torch.bfloat16, device="cuda")
    dy, dh = torch.randn_like(x), torch.randn_like(x)

    def fn(x, w, r):
        return rms_norm(x, w, 1e-6, r)

    eager = _norm_outputs(fn, x, w, r, dy, dh)
    compiled = _norm_outputs(torch.compile(fn, fullgraph=True), x, w, r, dy, dh)
    for name in eager:
        assert torch.equal(eager[name], compiled[name]), f"{name}: torch.compile differs from eager"


@gpu
def test_rms_norm_rejects_unsupported_inputs():
    from fastgpt.ops.cuda.rms_norm import rms_norm, unsupported_reason

    x = torch.randn(2, 65537, device="cuda")
    with pytest.raises(ValueError, match="65537 elements"):
        rms_norm(x, None, 1e-6)
    with pytest.raises(RuntimeError, match=r"fastgpt rms_norm_fwd: row length 65537 is not supported \(1 to 65536\)"):
        torch.ops.fastgpt.rms_norm_fwd(x, None, None, 1e-6)
    x = torch.randn(2, 8, device="cuda", dtype=torch.float64)
    assert "float64" in unsupported_reason(x, None)
    x = torch.randn(2, 8, device="cuda")
    with pytest.raises(ValueError, match="weight shape"):
        rms_norm(x, torch.ones(9, device="cuda"), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        rms_norm(x, None, 1e-6, x.half())


# ---------------------------------------------------------------------------------------------
# fused AdamW
# ---------------------------------------------------------------------------------------------

ADAMW = {"lr": 3e-3, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1}


def _adamw_states(params: list[torch.Tensor]) -> tuple[list, list, list]:
    exp_avgs = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    exp_avg_sqs = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    steps = [torch.zeros((), device=p.device) for p in params]
    return exp_avgs, exp_avg_sqs, steps


def _sizes() -> list[int]:
    # empty, tiny, unaligned, one chunk exactly, straddling chunks, and enough tensors (> 36) and
    # chunks (> 320 per launch) that the host splits the work into several launches
    return [0, 1, 3, 65536, 65537, 1000, 4097] + [257 * (i + 1) for i in range(40)] + [65536 * 400 + 5]


@gpu
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("lr_tensor", [False, True], ids=["lr_float", "lr_tensor"])
def test_fused_adamw_fp32_matches_torch_adamw(lr_tensor, maximize):
    from fastgpt.ops.cuda.adamw import fused_adamw_

    torch.manual_seed(0)
    params = [torch.randn(n, device="cuda") for n in _sizes()]
    # one unaligned tensor (storage offset 1) exercises the scalar path
    params.append(torch.randn(70001, device="cuda")[1:])
    theirs = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.AdamW(
        theirs,
        lr=ADAMW["lr"],
        betas=(ADAMW["beta1"], ADAMW["beta2"]),
        eps=ADAMW["eps"],
        weight_decay=ADAMW["weight_decay"],
        maximize=maximize,
        foreach=False,
    )
    exp_avgs, exp_avg_sqs, steps = _adamw_states(params)
    lr = torch.tensor(ADAMW["lr"], device="cuda") if lr_tensor else ADAMW["lr"]
    for _ in range(20):
        grads = [torch.randn_like(p) for p in params]
        for t, g in zip(theirs, grads, strict=True):
            t.grad = g.clone()
        opt.step()
        for s in steps:
            s += 1
        fused_adamw_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            steps,
            lr=lr,
            beta1=ADAMW["beta1"],
            beta2=ADAMW["beta2"],
            eps=ADAMW["eps"],
            weight_decay=ADAMW["weight_decay"],
            maximize=maximize,
        )
    for i, (p, t) in enumerate(zip(params, theirs, strict=True)):
        state = opt.state[t]
        torch.testing.assert_close(p, t.detach(), rtol=1e-5, atol=1e-6, msg=lambda m, i=i: f"param {i}: {m}")
        torch.testing.assert_close(exp_avgs[i], state["exp_avg"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(exp_avg_sqs[i], state["exp_avg_sq"], rtol=1e-5, atol=1e-9)


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fused_adamw_low_precision_params_match_reference(dtype):
    from fastgpt.ops.cuda.adamw import fused_adamw_

    torch.manual_seed(0)
    # with fp32 params in the same call: one launch per dtype
    sizes = [0, 1, 3, 1000, 65537, 300001]
    params = [torch.randn(n, device="cuda", dtype=dtype) for n in sizes] + [torch.randn(999, device="cuda")]
    ref_params = [p.clone() for p in params]
    states, ref_states = _adamw_states(params), _adamw_states(ref_params)
    for _ in range(20):
        grads = [torch.randn_like(p) for p in params]
        for s in states[2] + ref_states[2]:
            s += 1
        fused_adamw_(params, grads, *states, **ADAMW)
        reference.fused_adamw_(ref_params, grads, *ref_states, **ADAMW)
    for i, (p, r) in enumerate(zip(params, ref_params, strict=True)):
        eps = torch.finfo(p.dtype).eps
        # the reference's bias corrections are fp32 (ours double): a one-ulp fp32 difference may
        # round a low-precision param the other way, now and then, in a few of the 20 steps
        torch.testing.assert_close(p, r, rtol=3 * eps, atol=1e-6, msg=lambda m, i=i: f"param {i}: {m}")
        torch.testing.assert_close(states[0][i], ref_states[0][i], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(states[1][i], ref_states[1][i], rtol=1e-5, atol=1e-8)


@gpu
def test_fused_adamw_opcheck():
    import fastgpt.ops.cuda.adamw  # noqa: F401  (registers the fake implementation)

    torch.manual_seed(0)
    params = [torch.randn(n, device="cuda") for n in (10, 70000)] + [torch.randn(33, device="cuda").bfloat16()]
    grads = [torch.randn_like(p) for p in params]
    exp_avgs, exp_avg_sqs, steps = _adamw_states(params)
    steps = [s + 1 for s in steps]
    lr = torch.tensor(1e-3, device="cuda")
    args = (params, grads, exp_avgs, exp_avg_sqs, steps, lr, 0.0, 0.9, 0.999, 1e-8, 0.01, False)
    torch.library.opcheck(torch.ops.fastgpt.fused_adamw_.default, args)


@gpu
def test_fused_adamw_rejects_bad_inputs():
    from fastgpt.ops.cuda.adamw import fused_adamw_, unsupported_reason

    p = torch.randn(10, device="cuda")
    m, v, s = torch.zeros(10, device="cuda"), torch.zeros(10, device="cuda"), torch.ones((), device="cuda")
    assert "float64" in unsupported_reason([p.double()])
    assert "contiguous" in unsupported_reason([torch.randn(4, 4, device="cuda").t()])
    with pytest.raises(ValueError, match="grads has 0 tensors"):
        fused_adamw_([p], [], [m], [v], [s], **ADAMW)
    with pytest.raises(ValueError, match="exp_avgs"):
        fused_adamw_([p], [p.clone()], [m.half()], [v], [s], **ADAMW)
    with pytest.raises(RuntimeError, match=r"fastgpt fused_adamw_: exp_avgs\[0\] must be float32 \(got float16\)"):
        torch.ops.fastgpt.fused_adamw_([p], [p.clone()], [m.half()], [v], [s], None, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)
    with pytest.raises(RuntimeError, match=r"grads\[0\] must be float32 \(got bfloat16\)"):
        torch.ops.fastgpt.fused_adamw_([p], [p.bfloat16()], [m], [v], [s], None, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)


@gpu
@pytest.mark.slow
def test_fused_adamw_tensor_over_2_31_elements():
    """64-bit offsets: a bf16 tensor of 2^31 + 3000 elements (~24 GB with its grad and fp32
    moments). Only the first and last 3000 elements are checked, against the reference run on
    those slices (the update is element-wise)."""
    from fastgpt.ops.cuda.adamw import fused_adamw_

    n = 2**31 + 3000
    free, _ = torch.cuda.mem_get_info()
    if free < 26 * 2**30:
        pytest.skip(f"needs ~26 GB free GPU memory, {free / 2**30:.1f} GB free")
    torch.manual_seed(0)
    p = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    g = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    m = torch.full((n,), 0.01, device="cuda")
    v = torch.full((n,), 0.02, device="cuda")
    step = torch.full((), 3.0, device="cuda")
    ends = (slice(0, 3000), slice(n - 3000, n))
    expected = []
    for sl in ends:
        ps, ms, vs = p[sl].clone(), m[sl].clone(), v[sl].clone()
        reference.fused_adamw_([ps], [g[sl]], [ms], [vs], [step], **ADAMW)
        expected.append((ps, ms, vs))
    fused_adamw_([p], [g], [m], [v], [step], **ADAMW)
    for sl, (ps, ms, vs) in zip(ends, expected, strict=True):
        torch.testing.assert_close(p[sl], ps, rtol=2 * torch.finfo(torch.bfloat16).eps, atol=1e-6)
        torch.testing.assert_close(m[sl], ms, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(v[sl], vs, rtol=1e-5, atol=1e-9)


@gpu
def test_fused_adamw_does_not_synchronize():
    """lr and steps are read on the device: a step enqueued behind a long kernel returns at once."""
    from fastgpt.ops.cuda.adamw import fused_adamw_

    params = [torch.randn(1000, device="cuda")]
    grads = [torch.randn(1000, device="cuda")]
    exp_avgs, exp_avg_sqs, steps = _adamw_states(params)
    steps = [s + 1 for s in steps]
    lr = torch.tensor(1e-3, device="cuda")
    torch.cuda.synchronize()
    torch.cuda._sleep(int(2e8))  # keep the stream busy (~0.1 s)
    fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, steps, lr=lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    assert not torch.cuda.current_stream().query(), "fused_adamw_ waited for the device"
    torch.cuda.synchronize()
    assert math.isfinite(params[0].sum().item())
