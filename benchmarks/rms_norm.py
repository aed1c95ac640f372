"""RMSNorm benchmark: fastgpt's kernels (Triton, CUDA) against torch.nn.RMSNorm, compiled and not.

    python benchmarks/rms_norm.py [--quick] [--full] [--skip-compile] [--budget S] [--out DIR]

Providers (each skipped with a note when it cannot run): ``reference`` (fastgpt.ops.reference,
eager), ``reference-compile``, ``torch`` (``F.rms_norm``, what ``torch.nn.RMSNorm`` runs),
``torch-compile`` (the same under torch.compile, one static graph per shape), ``liger``
(Liger-Kernel's LigerRMSNorm, when importable), ``triton`` and ``cuda`` (ours). No residual.

Sweep: 16384 rows x hidden 1024..16384, bf16 (``--full``: also fp16 and fp32), weight in the
input's dtype, eps 1e-6, modes fwd / bwd / fwd+bwd. bwd is the backward alone on one saved
forward (retain_graph), except for compiled providers: (fwd+bwd) - fwd (``derived``).

Bytes (the minimum any implementation must move, charged to every provider alike; e = element
size, M x N input): fwd reads x and weight and writes y = 2MNe + Ne; bwd reads x, dy, weight and
writes dx, dweight = 3MNe + 2Ne; fwd+bwd = 5MNe + 3Ne. Per-row statistics (M x 4 bytes) are left
out. L2 is flushed before every timed call (common.bench), so a 33 MB input at hidden 1024 cannot
be served from the 50 MB L2.

Summary keys, at bf16 16384 x 4096 fwd+bwd: rms_norm_fraction_of_bandwidth (our best GB/s /
measured copy GB/s) and rms_norm_vs_torch_compile (our speed / torch.compile(F.rms_norm)'s).

Expected runtime on one H100: ~1-2 min default (10 static compiles of ~5 s, ~100 measurements),
~4 min with --full. --quick on CPU: ~10 s (mostly importing torch and triton).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import common
import torch
import torch.nn.functional as F
from torch import Tensor

ROWS = 16384
HIDDEN = (1024, 2048, 4096, 8192, 16384)
EPS = 1e-6
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HEADLINE = dict(dtype="bf16", M=ROWS, N=4096)
PROVIDERS = ("reference", "reference-compile", "torch", "torch-compile", "liger", "triton", "cuda")
OURS = ("triton", "cuda")


def sweep(env: common.Env) -> list[dict[str, Any]]:
    if env.quick:
        if env.cuda:
            return [dict(dtype="bf16", M=1024, N=n) for n in (1024, 4096)]
        return [dict(dtype="fp32", M=12, N=200)]  # CPU interpreter: one small, ragged shape
    configs = [dict(dtype=d, M=ROWS, N=n) for d in (("bf16", "fp16", "fp32") if env.full else ("bf16",))
               for n in HIDDEN]
    # the summary's shape first, so a --budget cut never loses it
    return sorted(configs, key=lambda c: not all(c[k] == v for k, v in HEADLINE.items()))


def unavailable(env: common.Env) -> dict[str, str | None]:
    from fastgpt.ops import available_backends

    backends = available_backends(env.device)
    reasons: dict[str, str | None] = {p: None for p in PROVIDERS}
    for name in OURS:
        reasons[name] = backends[name]
    if not env.compile:
        reasons["reference-compile"] = reasons["torch-compile"] = "--quick / --skip-compile"
    try:
        import liger_kernel.transformers.rms_norm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - absent or broken, either way a note
        reasons["liger"] = f"Liger-Kernel is not importable ({type(exc).__name__}: {exc})"
    return reasons


def norm_fn(provider: str, weight: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """x -> y for a provider, and the weight tensor whose grad it produces."""
    from fastgpt.ops import reference, rms_norm

    n = weight.shape[0]
    if provider == "reference":
        return (lambda x: reference.rms_norm(x, weight, EPS)), weight
    if provider == "reference-compile":
        compiled = torch.compile(reference.rms_norm, dynamic=False)
        return (lambda x: compiled(x, weight, EPS)), weight
    if provider == "torch":
        return (lambda x: F.rms_norm(x, (n,), weight, EPS)), weight
    if provider == "torch-compile":
        compiled = torch.compile(F.rms_norm, dynamic=False)
        return (lambda x: compiled(x, (n,), weight, EPS)), weight
    if provider == "liger":
        from liger_kernel.transformers.rms_norm import LigerRMSNorm

        try:
            module = LigerRMSNorm(n, eps=EPS, in_place=False)  # in place would overwrite dy with dx
        except TypeError:
            module = LigerRMSNorm(n, eps=EPS)
        module = module.to(weight.device, weight.dtype)
        with torch.no_grad():
            module.weight.copy_(weight)
        return module, module.weight
    return (lambda x: rms_norm(x, weight, EPS, backend=provider)), weight


def measure(env: common.Env, provider: str, cfg: dict[str, Any], x: Tensor, weight: Tensor,
            dy: Tensor) -> list[dict[str, Any]]:
    where = "{dtype} {M} x {N}".format(**cfg)
    made = common.guarded(env, provider, where, lambda: norm_fn(provider, weight))
    if made is None:
        return []
    fn, w = made
    headline = all(cfg[k] == v for k, v in HEADLINE.items())
    bwd = "derive" if provider.endswith("-compile") else "skip" if env.interpreted and provider in OURS else "time"
    ms = common.time_modes(env, provider, where, lambda: fn(x), dy, [x, w], headline, bwd)
    M, N = cfg["M"], cfg["N"]
    e, ew = x.element_size(), w.element_size()
    nbytes = {"fwd": 2 * M * N * e + N * ew, "bwd": 3 * M * N * e + 2 * N * ew,
              "fwd+bwd": 5 * M * N * e + 3 * N * ew}
    return [dict(bench="rms_norm", provider=provider, ours=provider in OURS, mode=mode, dtype=cfg["dtype"], M=M, N=N,
                 ms=t, bytes=nbytes[mode], gbps=nbytes[mode] / (t * 1e-3) / 1e9,
                 value=nbytes[mode] / (t * 1e-3) / 1e9, unit="GB/s", derived=derived)
            for mode, (t, derived) in ms.items()]


def run(env: common.Env) -> list[dict[str, Any]]:
    reasons = unavailable(env)
    for provider, reason in reasons.items():
        if reason:
            env.skip(provider, reason)
    if env.compile:
        common.raise_recompile_limit()
    rows: list[dict[str, Any]] = []
    for cfg in sweep(env):
        dtype = DTYPES[cfg["dtype"]]
        x = torch.randn(cfg["M"], cfg["N"], device=env.device, dtype=dtype, requires_grad=True)
        weight = (1 + 0.1 * torch.randn(cfg["N"], device=env.device)).to(dtype).requires_grad_()
        dy = torch.randn(cfg["M"], cfg["N"], device=env.device, dtype=dtype)
        print("{dtype} {M} x {N}".format(**cfg), flush=True)
        for provider in PROVIDERS:
            if not reasons[provider] and not env.out_of_time(provider, "{dtype} {M} x {N}".format(**cfg)):
                rows += measure(env, provider, cfg, x, weight, dy)
        del x, weight, dy
        common.release_memory()
    return rows


def plot(fig: Any, rows: list[dict[str, Any]], dtype: str, copy_gbps: float) -> None:
    for j, mode in enumerate(("fwd", "bwd", "fwd+bwd")):
        ax = fig.add_subplot(1, 3, j + 1)
        sel = common.find_row(rows, mode=mode, dtype=dtype)
        common.line_panel(ax, sel, "N", "gbps", f"RMSNorm {mode}, {dtype}, rows={sel[0]['M'] if sel else '?'}",
                          "GB/s (bytes read + written)", copy_gbps, "copy ceiling")


def main(argv: list[str] | None = None) -> int:
    args = common.parse_args(__doc__, argv)
    env = common.init_runtime(args)
    ceilings = common.measure_ceilings(env)
    rows = run(env)
    head = HEADLINE if not env.quick else {k: sweep(env)[0][k] for k in HEADLINE}
    for row in rows:
        row["fraction_of_ceiling"] = row["gbps"] / ceilings["copy_gbps"]
    common.add_ratios(rows, ("mode", "dtype", "M", "N"))
    print()
    common.print_table(rows, [("provider", "provider"), ("mode", "mode"), ("dtype", "dtype"), ("M", "rows"),
                              ("N", "hidden"), ("ms", "ms"), ("gbps", "GB/s"), ("fraction_of_ceiling", "of copy"),
                              ("vs_best_baseline", "x best base"), ("best_baseline", "best baseline")])
    fwd_bwd = common.best_ours(rows, mode="fwd+bwd", **head)
    summary = {
        "rms_norm_fraction_of_bandwidth": fwd_bwd["gbps"] / ceilings["copy_gbps"] if fwd_bwd else None,
        "rms_norm_vs_torch_compile": common.speed_ratio(rows, "torch-compile", mode="fwd+bwd", **head),
    }
    common.finish(env, "rms_norm", rows, summary, ceilings,
                  lambda fig, r: plot(fig, r, head["dtype"], ceilings["copy_gbps"]), {"headline": head})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
