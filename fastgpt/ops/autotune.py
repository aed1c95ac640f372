"""How ``backend="auto"`` chooses: correct before fast, measured once per shape class, remembered.

The first time ``auto`` meets an (op, device, dtype, shape class) — the shape class being what
changes a kernel's code path: head dim, causal, GQA ratio, window, softcap, packed documents, T
rounded up to a power of two, the row length bucket — each kernel backend that supports the inputs
runs once on random data of that shape (batch and rows cut down) and is checked against the
reference with the tests' criterion (:func:`fastgpt.ops._accuracy.error_problem`). One that fails
(or raises) is never used for that class on that device, and one warning names op, backend, dtype
and error. The survivors are then timed, forward+backward where there is a backward, beside the
torch path, which is always a candidate; the fastest wins.

Candidates: on a CUDA device, the usable kernel backends; on CPU none (torch runs), unless
``FASTGPT_AUTO_SLOW=1`` lets the Triton interpreter (TRITON_INTERPRET=1) and the CUDA emulator
(FASTGPT_CUDA_EMULATE=1) compete, so the machinery is testable without a GPU.
``FASTGPT_AUTOTUNE=0`` restores the fixed order (cuda > triton > torch, the first that supports
the inputs).

The choices persist in :mod:`fastgpt.ops._autotune_cache` (JSON). Under ``torch.compile`` the
choice is made when tracing, outside the graph (:mod:`fastgpt.ops._compiling`). Under DDP/FSDP,
:func:`set_autotune_group` makes every rank use the group's rank 0's choices.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

import fastgpt.ops._autotune_cache as cache
import fastgpt.ops.reference as reference
import fastgpt.ops.torch_path as torch_path
from fastgpt.device import device_name
from fastgpt.ops._accuracy import error_problem
from fastgpt.ops._autograd import FlashAttention, RMSNorm
from fastgpt.ops._backend import unavailable_reason
from fastgpt.ops._registry import KERNEL_BACKENDS, kernel

TIME_BUDGET_S = 0.002
"""Seconds per batch of timed calls (three batches, or one call when slower): a few ms per candidate."""

_GROUP: list = [None]  # the process group whose rank 0 decides, when set
_AGREED: dict[str, dict] = {}  # key -> record every rank of the group holds (received from rank 0)
_USED: dict[str, str] = {}  # key -> backend, for the choices this process used
_CHOSEN: dict[tuple, str] = {}  # input signature -> backend, for the per-layer ops (see choose)
_MEMOIZED = ("flash_attention", "rms_norm")


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


def _dtype(d: torch.dtype | None) -> str:
    return "none" if d is None else str(d).removeprefix("torch.")


def spec_of(op: str, args: tuple) -> tuple:
    """The constants that define ``op``'s shape class and the example inputs for it.

    (op, device, dtype, class description, shape fields): only ints, bools, floats and strings,
    so ``torch.compile`` can pass it to the choice as a constant.
    """
    if op == "flash_attention":
        q, k, _, causal, scale, window, softcap, doc_ids = args
        B, Hq, T, D = q.shape
        Hkv, S = k.shape[1], k.shape[2]
        desc = f"D={D} causal={causal} gqa={Hq // Hkv} T<={_pow2(T)}" + ("" if S == T else f" S<={_pow2(S)}")
        # window and softcap enter the class by value, packed documents by presence (tuned on 4 per row)
        if window is not None:
            desc += f" window={window}"
        if softcap is not None:
            desc += f" softcap={softcap:g}"
        if doc_ids is not None:
            desc += " docs"
        fields = (min(B, 2), Hq, Hkv, T, S, D, bool(causal), -1.0 if scale is None else float(scale),
                  -1 if window is None else window, -1.0 if softcap is None else softcap, doc_ids is not None)
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
    return f"{op} {device_name(torch.device(device))} {dtype} {desc}"


# -- example inputs and the checks, per op -----------------------------------------------------------


def _attention_case(spec: tuple) -> tuple[Callable[[str], list[Tensor]], Callable[[], list[Tensor]], list[str]]:
    _, device, dtype, _, (B, Hq, Hkv, T, S, D, causal, scale, window, softcap, docs) = spec
    dt, scale = getattr(torch, dtype), None if scale < 0 else scale
    window, softcap = None if window < 0 else window, None if softcap < 0 else softcap
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v, dout = (torch.randn(s, generator=g).to(device, dt)
                     for s in ((B, Hq, T, D), (B, Hkv, S, D), (B, Hkv, S, D), (B, Hq, T, D)))
    # packed rows: four documents of equal length (the last one longer when 4 does not divide S)
    doc_ids = (torch.arange(S, device=device) * 4 // S).to(torch.int32).expand(B, S).contiguous() if docs else None
    variant = (window, softcap, doc_ids)

    def run(backend: str, cast: torch.dtype = dt) -> list[Tensor]:
        qi, ki, vi = (t.to(cast).detach().requires_grad_() for t in (q, k, v))
        if backend == "torch":
            out = torch_path.flash_attention(qi, ki, vi, causal, scale, *variant)
        elif backend == "reference":
            out = reference.flash_attention(qi, ki, vi, causal, scale, *variant)
        else:
            out = FlashAttention.apply(backend, qi, ki, vi, causal, 1.0 / math.sqrt(D) if scale is None else scale,
                                       *variant)
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
        if backend == "torch":
            out = torch_path.rms_norm(xi, wi, e, ri)
        elif backend == "reference":
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
        if backend == "torch":
            torch_path.fused_adamw_(*args, lr=lr, **_ADAMW_HYPER)
        elif backend == "reference":
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


def _group() -> object | None:
    """The autotune group when it spans several ranks (None otherwise)."""
    group = _GROUP[0]
    if group is None or not torch.distributed.is_initialized() or torch.distributed.get_world_size(group) < 2:
        return None
    return group


def _complete(record: dict | None, supported: tuple[str, ...]) -> bool:
    return record is not None and set(supported) <= set(record["ms"]) | set(record["rejected"])


def decide(spec: tuple, supported: tuple[str, ...]) -> dict:
    """The record for ``spec``: remembered, or tuned; under a group, rank 0's (remembered or tuned)."""
    key, device = key_of(spec), torch.device(spec[1])
    group = _group()
    if group is None:
        record = cache.lookup(device, key)
        if not _complete(record, supported):
            record = tune(spec, supported)
            cache.store(device, key, record)
    elif _complete(_AGREED.get(key), supported):
        record = _AGREED[key]
    else:  # a collective: every rank meets this shape class in the same order (SPMD training steps)
        rank0 = torch.distributed.get_rank(group) == 0
        record = cache.lookup(device, key) if rank0 else None
        tuned = rank0 and not _complete(record, supported)
        if tuned:
            record = tune(spec, supported)
        box = [record]
        torch.distributed.broadcast_object_list(box, src=torch.distributed.get_global_rank(group, 0), group=group)
        record = _AGREED[key] = box[0]
        if tuned:
            cache.store(device, key, record)  # only rank 0 writes the file
        else:
            cache.remember(device, key, record)
    _USED[key] = record["backend"]
    return record


def used() -> dict[str, str]:
    """{readable key: backend} of the choices this process used (made, remembered or received)."""
    return dict(sorted(_USED.items()))


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


def _candidate_names(device: str) -> tuple[str, ...]:
    return tuple(kernel_candidates(torch.device(device)))


def _pick(spec: tuple, supported: tuple[str, ...]) -> str:
    return decide(spec, supported)["backend"]


def choose(
    op: str,
    device: torch.device,
    args: tuple,
    candidate_names: Callable[[str], tuple[str, ...]] = _candidate_names,
    pick: Callable[[tuple, tuple[str, ...]], str] = _pick,
) -> str:
    """The backend ``auto`` runs ``op`` on for ``args`` (every argument of the op, in order).

    For ``fused_adamw`` ``args`` is (params, grads, exp_avgs, exp_avg_sqs, steps, hyperparameters).
    ``candidate_names`` (device -> kernel backends) and ``pick`` (shape class, supported backends
    -> winner) take only constants; :mod:`fastgpt.ops._compiling` passes versions that
    ``torch.compile`` runs when tracing.
    """
    signature = _signature(op, args) if pick is _pick and op in _MEMOIZED else None
    if signature is not None and signature in _CHOSEN:
        return _CHOSEN[signature]
    if not enabled():
        backend = fixed_order(op, device, args)
    else:
        supported = tuple(name for name in candidate_names(str(device)) if _supports(name, op, args))
        if not supported and not slow_allowed():
            backend = "torch"  # nothing to compare: no measurement, nothing recorded
        else:
            backend = pick(spec_of(op, args), supported)
    if signature is not None:
        _CHOSEN[signature] = backend
    return backend


def _signature(op: str, args: tuple) -> tuple | None:
    """Everything of ``args`` that the support checks and the shape class read, cheap to build.

    Each tensor gives its shape, strides, dtype and device; any other argument its type and value
    (so ``True`` and ``1`` differ). With the environment switches, it determines the choice, so
    ``choose`` answers a signature it has met from memory: a training step calls the per-layer ops
    many times with the same inputs, and the checks would otherwise run on every call. None when
    an argument cannot be hashed (then nothing is remembered).
    """
    parts: list[object] = [op, enabled(), slow_allowed()]
    for a in args:
        parts.append((a.shape, a.stride(), a.dtype, a.device) if isinstance(a, Tensor) else (type(a), a))
    signature = tuple(parts)
    try:
        hash(signature)
    except TypeError:
        return None
    return signature


def forget() -> None:
    """Forget every choice this process knows: remembered, received, used, cached in memory.

    The cache file stays; the next call of each shape class reads it again (or measures).
    """
    _CHOSEN.clear()
    _AGREED.clear()
    _USED.clear()
    cache.forget()


def set_autotune_group(group: object | None) -> None:
    """Use ``group``'s rank 0 choices on every rank of ``group`` (None: each process decides alone).

    Call on every rank right after ``init_process_group`` (``fastgpt.train.distributed.setup`` does).
    While set, the first meeting of each shape class is a collective: rank 0 takes its remembered
    choice or measures one, and broadcasts it; the ranks then reuse it without communicating. So
    the ranks must meet new shape classes together and in the same order, as DDP/FSDP steps do,
    and never run different kernels. Only rank 0 writes the cache file.
    """
    _GROUP[0] = group
    _AGREED.clear()
    _CHOSEN.clear()
