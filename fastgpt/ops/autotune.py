"""How ``backend="auto"`` chooses: correct before fast, measured once per shape class, remembered.

The first time ``auto`` meets an (op, device, dtype, shape class) — the shape class being what
changes a kernel's code path: head dim, causal, GQA ratio, T rounded up to a power of two, the
row length bucket — each kernel backend that supports the inputs runs once on random data of that
shape (batch and rows cut down) and is checked against the reference with the tests' criterion
(:func:`fastgpt.ops._accuracy.error_problem`). One that fails (or raises) is never used for that
class on that device, and one warning names op, backend, dtype and error. The survivors are then
timed, forward+backward where there is a backward, beside the torch path, which is always a
candidate; the fastest wins.

Candidates: on a CUDA device, the usable kernel backends; on CPU none (torch runs), unless
``FASTGPT_AUTO_SLOW=1`` lets the Triton interpreter (TRITON_INTERPRET=1) and the CUDA emulator
(FASTGPT_CUDA_EMULATE=1) compete, so the machinery is testable without a GPU.
``FASTGPT_AUTOTUNE=0`` restores the fixed order (cuda > triton > torch, the first that supports
the inputs).

The choices persist in :mod:`fastgpt.ops._autotune_cache` (JSON). Under ``torch.compile`` the
choice is made when tracing, outside the graph (``assume_constant_result``). Under DDP/FSDP,
:func:`set_autotune_group` makes every new choice on the group's rank 0 and broadcasts it.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from fastgpt.ops import _autotune_cache as cache
from fastgpt.ops import reference
from fastgpt.ops._accuracy import error_problem
from fastgpt.ops._autograd import FlashAttention, RMSNorm
from fastgpt.ops._backend import unavailable_reason
from fastgpt.ops._registry import KERNEL_BACKENDS, kernel

TIME_BUDGET_S = 0.002
"""Seconds per batch of timed calls (three batches, or one call when slower): a few ms per candidate."""

_GROUP: list = [None]  # the process group whose rank 0 decides, when set


def enabled() -> bool:
    """False under FASTGPT_AUTOTUNE=0: ``auto`` then takes the fixed order."""
    return os.environ.get("FASTGPT_AUTOTUNE", "1") != "0"


def slow_allowed() -> bool:
    """True under FASTGPT_AUTO_SLOW=1: the CPU interpreter and emulator become candidates."""
    return os.environ.get("FASTGPT_AUTO_SLOW", "0") == "1"


def kernel_candidates(device: torch.device) -> list[str]:
    """The kernel backends ``auto`` considers on ``device`` (torch is always considered too)."""
    if device.type != "cuda" and not slow_allowed():
        return []
    return [name for name in KERNEL_BACKENDS if unavailable_reason(name, device) is None]


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _dtype(d: torch.dtype | None) -> str:
    return "none" if d is None else str(d).removeprefix("torch.")


def spec_of(op: str, args: tuple) -> tuple:
    """The constants that define ``op``'s shape class and the example inputs for it.

    (op, device, dtype, class description, shape fields): only ints, bools, floats and strings,
    so ``torch.compile`` can pass it to the choice as a constant.
    """
    if op == "flash_attention":
        q, k, _, causal, scale = args
        B, Hq, T, D = q.shape
        Hkv, S = k.shape[1], k.shape[2]
        desc = f"D={D} causal={causal} gqa={Hq // Hkv} T<={_pow2(T)}" + ("" if S == T else f" S<={_pow2(S)}")
        fields = (min(B, 2), Hq, Hkv, T, S, D, bool(causal), -1.0 if scale is None else float(scale))
        return (op, str(q.device), _dtype(q.dtype), desc, fields)
    if op == "rms_norm":
        x, weight, eps, residual = args
        N = x.shape[-1]
        M = math.prod(x.shape[:-1])
        w = None if weight is None else weight.dtype
        desc = f"N<={_pow2(N)} weight={_dtype(w)} residual={residual is not None}"
        fields = (min(M, 256), N, _dtype(w), residual is not None, -1.0 if eps is None else float(eps))
        return (op, str(x.device), _dtype(x.dtype), desc, fields)
    if op == "fused_adamw":
        params, grads, _, _, steps, hyper = args
        numel = sum(p.numel() for p in params)
        desc = f"grads={_dtype(grads[0].dtype)} steps={_dtype(steps[0].dtype)} numel<={_pow2(numel)}"
        fields = (min(numel, 1 << 20), _dtype(grads[0].dtype), _dtype(steps[0].dtype), str(steps[0].device),
                  isinstance(hyper["lr"], Tensor))
        return (op, str(params[0].device), _dtype(params[0].dtype), desc, fields)
    raise ValueError(f"unknown op {op!r}")


def key_of(spec: tuple) -> str:
    """The readable key of a shape class: op, device name, dtype, class."""
    op, device, dtype, desc, _ = spec
    return f"{op} {_device_name(torch.device(device))} {dtype} {desc}"


# -- example inputs and the checks, per op -----------------------------------------------------------


def _attention_case(spec: tuple) -> tuple[Callable[[str], list[Tensor]], Callable[[], list[Tensor]], list[str]]:
    _, device, dtype, _, (B, Hq, Hkv, T, S, D, causal, scale) = spec
    dt, scale = getattr(torch, dtype), None if scale < 0 else scale
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v, dout = (torch.randn(s, generator=g).to(device, dt)
                     for s in ((B, Hq, T, D), (B, Hkv, S, D), (B, Hkv, S, D), (B, Hq, T, D)))

    def run(backend: str, cast: torch.dtype = dt) -> list[Tensor]:
        qi, ki, vi = (t.to(cast).detach().requires_grad_() for t in (q, k, v))
        if backend == "torch":
            out = reference.sdpa_attention(qi, ki, vi, causal, scale)
        elif backend == "reference":
            out = reference.flash_attention(qi, ki, vi, causal, scale)
        else:
            out = FlashAttention.apply(backend, qi, ki, vi, causal, 1.0 / math.sqrt(D) if scale is None else scale)
        out.backward(dout.to(cast))
        return [out.detach(), qi.grad, ki.grad, vi.grad]

    def ref() -> list[Tensor]:
        return run("reference", torch.float64)

    return run, ref, ["out", "dq", "dk", "dv"]


def _rms_norm_case(spec: tuple) -> tuple[Callable[[str], list[Tensor]], Callable[[], list[Tensor]], list[str]]:
    _, device, dtype, _, (M, N, w_dtype, has_residual, eps) = spec
    dt, eps = getattr(torch, dtype), None if eps < 0 else eps
    g = torch.Generator(device="cpu").manual_seed(0)
    x, res, dy, dh = (torch.randn(M, N, generator=g).to(device, dt) for _ in range(4))
    w = None if w_dtype == "none" else (1 + 0.1 * torch.randn(N, generator=g)).to(device, getattr(torch, w_dtype))

    def run(backend: str, cast: torch.dtype | None = None) -> list[Tensor]:
        xi = x.to(cast or dt).detach().requires_grad_()
        ri = res.to(cast or dt).detach().requires_grad_() if has_residual else None
        wi = w.to(cast or w.dtype).detach().requires_grad_() if w is not None else None
        e = torch.finfo(dt).eps if eps is None else eps
        if backend in ("torch", "reference"):
            out = reference.rms_norm(xi, wi, e, ri)
        else:
            out = RMSNorm.apply(backend, xi, wi, ri, e)
        outs = list(out) if has_residual else [out]
        torch.autograd.backward(outs, [dy.to(xi.dtype), dh.to(xi.dtype)][: len(outs)])
        grads = [xi.grad] + ([wi.grad] if wi is not None else []) + ([ri.grad] if ri is not None else [])
        return [o.detach() for o in outs] + grads

    def ref() -> list[Tensor]:
        return run("reference", torch.float64)

    names = ["y"] + (["h"] if has_residual else []) + ["dx"] + (["dweight"] if w is not None else [])
    return run, ref, names + (["dresidual"] if has_residual else [])


_ADAMW_HYPER = dict(beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)


def _adamw_case(spec: tuple) -> tuple[Callable[[str], list[Tensor]], Callable[[], list[Tensor]], list[str]]:
    _, device, dtype, _, (numel, g_dtype, s_dtype, s_device, lr_tensor) = spec
    g = torch.Generator(device="cpu").manual_seed(0)
    p0, g0, m0 = (torch.randn(numel, generator=g) for _ in range(3))
    v0 = torch.rand(numel, generator=g)
    lr = torch.tensor(1e-2, device=device) if lr_tensor else 1e-2

    def run(backend: str, p_dtype: torch.dtype | None = None) -> list[Tensor]:
        p, m, v = p0.to(device, p_dtype or getattr(torch, dtype)), (0.1 * m0).to(device), (0.01 * v0).to(device)
        step = torch.tensor(3.0, dtype=getattr(torch, s_dtype), device=s_device)
        args = ([p], [g0.to(device, getattr(torch, g_dtype))], [m], [v], [step])
        if backend in ("torch", "reference"):
            reference.fused_adamw_(*args, lr=lr, **_ADAMW_HYPER)
        else:
            kernel(backend, "fused_adamw").fused_adamw_(*args, lr=lr, **_ADAMW_HYPER)
        return [p, m, v]

    def ref() -> list[Tensor]:  # the reference's own precision is fp32
        return run("reference", torch.float32)

    return run, ref, ["param", "exp_avg", "exp_avg_sq"]


_CASES = {"flash_attention": _attention_case, "rms_norm": _rms_norm_case, "fused_adamw": _adamw_case}


def _check(run: Callable[[str], list[Tensor]], backend: str, same_dtype: list[Tensor], ref: list[Tensor],
           names: list[str]) -> str | None:
    """Why ``backend``'s results fail the criterion (or the error it raised), None when they pass."""
    try:
        outs = run(backend)
    except Exception as exc:  # a kernel that cannot run here is rejected like a wrong one, with its error
        return f"raised {type(exc).__name__}: {exc}"
    for i, (name, out, same, r) in enumerate(zip(names, outs, same_dtype, ref, strict=True)):
        if out.dtype == torch.float64:
            continue
        problem = error_problem(name, out.cpu(), same.cpu(), r.cpu(), 2.0 if i == 0 else 3.0)
        if problem is not None:
            return problem
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds per call of ``fn``: after a warm-up call, one timed call; when that is shorter
    than the budget, the best of three batches of calls that fill it."""
    fn()
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    once = time.perf_counter() - start
    reps = int(min(max(TIME_BUDGET_S / max(once, 1e-9), 1), 50))
    if reps == 1:
        return once * 1e3
    best = once
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e3


def tune(spec: tuple, supported: tuple[str, ...]) -> dict:
    """Check and time ``supported`` kernel backends and torch for ``spec``: the record of the choice.

    ``{"backend": winner, "ms": {backend: ms}, "rejected": {backend: error}}``; each rejected one
    is warned about once.
    """
    op, device, dtype = spec[:3]
    run, ref_fn, names = _CASES[op](spec)
    rejected: dict[str, str] = {}
    ms: dict[str, float] = {}
    if supported:
        ref, same = ref_fn(), run("torch")
        for backend in supported:
            problem = _check(run, backend, same, ref, names)
            if problem is not None:
                rejected[backend] = problem
                warnings.warn(
                    f"fastgpt auto: {op} on {backend} failed its check for {dtype} ({key_of(spec)}): {problem};"
                    " it will not be used for these inputs on this device",
                    RuntimeWarning,
                    stacklevel=2,
                )
    for backend in ("torch", *(b for b in supported if b not in rejected)):
        ms[backend] = _time_ms(lambda b=backend: run(b), torch.device(device))
    return {"backend": min(ms, key=ms.__getitem__), "ms": ms, "rejected": rejected}


def _decide(spec: tuple, supported: tuple[str, ...]) -> dict:
    """The record for ``spec``: remembered, or tuned (on rank 0 of the autotune group, when set)."""
    key = key_of(spec)
    record = cache.lookup(torch.device(spec[1]), key)
    if record is not None and set(supported) <= set(record["ms"]) | set(record["rejected"]):
        return record
    group = _GROUP[0]
    if group is not None and torch.distributed.is_initialized() and torch.distributed.get_world_size(group) > 1:
        box = [tune(spec, supported) if torch.distributed.get_rank(group) == 0 else None]
        torch.distributed.broadcast_object_list(box, src=torch.distributed.get_global_rank(group, 0), group=group)
        record = box[0]
    else:
        record = tune(spec, supported)
    cache.store(torch.device(spec[1]), key, record)
    return record


def _choose_constant(spec: tuple, supported: tuple[str, ...]) -> str:
    return _decide(spec, supported)["backend"]


def _candidates_constant(device: str) -> tuple[str, ...]:
    return tuple(kernel_candidates(torch.device(device)))


# torch.compile runs these when tracing and takes their results as constants: what
# torch.compiler.assume_constant_result marks, set here because that import (torch._dynamo) would
# import triton before a caller could set TRITON_INTERPRET
_choose_constant._dynamo_marked_constant = True
_candidates_constant._dynamo_marked_constant = True


def fixed_order(op: str, device: torch.device, args: tuple) -> str:
    """The first of cuda, triton that runs on ``device`` (CUDA only) and supports ``args``, else torch."""
    if device.type == "cuda":
        for name in KERNEL_BACKENDS:
            if unavailable_reason(name, device) is None and _supports(name, op, args):
                return name
    return "torch"


def _supports(backend: str, op: str, args: tuple) -> bool:
    if op == "fused_adamw":
        *lists, hyper = args
        return kernel(backend, op).unsupported_reason(*lists, **hyper) is None
    return kernel(backend, op).unsupported_reason(*args) is None


def choose(op: str, device: torch.device, args: tuple) -> str:
    """The backend ``auto`` runs ``op`` on for ``args`` (every argument of the op, in order).

    For ``fused_adamw`` ``args`` is (params, grads, exp_avgs, exp_avg_sqs, steps, hyperparameters).
    """
    if not enabled():
        return fixed_order(op, device, args)
    compiling = torch.compiler.is_compiling()
    names = _candidates_constant(str(device)) if compiling else kernel_candidates(device)
    supported = tuple(name for name in names if _supports(name, op, args))
    if not supported and not slow_allowed():
        return "torch"  # nothing to compare: no measurement, nothing recorded
    spec = spec_of(op, args)
    if compiling:
        return _choose_constant(spec, supported)
    return _decide(spec, supported)["backend"]


def set_autotune_group(group: object | None) -> None:
    """Make every new ``auto`` choice on ``group``'s rank 0 and use it on all its ranks (None: each decides).

    Call on every rank after ``init_process_group`` and before the first step; it first gives all
    ranks rank 0's remembered choices. While set, the ranks must meet each new shape class together
    (as DDP/FSDP training steps do): the choice is a collective.
    """
    _GROUP[0] = group
    if group is not None and torch.distributed.is_initialized() and torch.distributed.get_world_size(group) > 1:
        box = [cache.snapshot() if torch.distributed.get_rank(group) == 0 else None]
        torch.distributed.broadcast_object_list(box, src=torch.distributed.get_global_rank(group, 0), group=group)
        cache.replace_all(box[0])
