"""Attention benchmark: fastgpt's flash attention (Triton, CUDA) against SDPA and the reference.

    python benchmarks/attn.py [--quick] [--full] [--skip-compile] [--budget S] [--out DIR]

Providers (each skipped with a note when it cannot run): ``reference`` (fastgpt.ops.reference,
eager: materializes the (B, H, T, T) scores in fp32), ``reference-compile`` (the same under
torch.compile), ``triton`` and ``cuda`` (ours), ``sdpa`` (F.scaled_dot_product_attention, default
dispatch) and ``sdpa-flash`` / ``sdpa-cudnn`` / ``sdpa-efficient`` (forced via
``torch.nn.attention.sdpa_kernel``).

Sweep: B*T = 16384 tokens, H*D = 2048, T = 512..16384, D in {64, 128}, causal and not, modes
fwd / bwd / fwd+bwd. Default: bf16 everywhere, fp16 for D=128 causal; the reference providers
only at bf16 D=128 causal T in {1024, 4096} (they are slow, and compile once per shape).
``--full``: fp16 everywhere and the reference wherever its fp32 scores fit in 4.5 GB.

FLOPs: fwd = 4*B*H*T*T*D (half when causal), bwd = 2.5x fwd, fwd+bwd = 3.5x fwd. Every kernel
is charged the same FLOPs, so TFLOP/s compare like speed. Inputs are random normal, grads set to
None before each call, L2 flushed before each call (common.bench). fwd runs with grad enabled
(a training forward, saving what the backward needs); bwd is the backward alone on one saved
forward (retain_graph), except for compiled providers, whose bwd is (fwd+bwd) - fwd (``derived``).

Summary keys: attn_fwd_bwd_vs_sdpa (our best fwd+bwd / SDPA default) and
attn_fwd_fraction_of_matmul_peak (our best fwd TFLOP/s / measured bf16 matmul TFLOP/s), both at
causal bf16 B=4 H=16 T=4096 D=128.

Expected runtime on one H100: ~2-3 min default (~650 measurements of ~0.1 s, Triton autotuning,
two reference-compile shapes), ~5 min with --full. --quick on CPU: ~10 s (mostly importing torch and triton).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import common
import torch
import torch.nn.functional as F
from torch import Tensor

TOKENS, WIDTH = 16384, 2048  # B*T and H*D of every sweep shape
SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384)
HEAD_DIMS = (64, 128)
FLOP_MULT = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}
REF_MAX_SCORE_BYTES = 4.5e9  # the reference's (B, H, T, T) fp32 scores above this are skipped
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HEADLINE = dict(causal=True, dtype="bf16", B=4, H=16, T=4096, D=128)
SDPA_FORCED = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-cudnn": "CUDNN_ATTENTION",
               "sdpa-efficient": "EFFICIENT_ATTENTION"}
PROVIDERS = ("reference", "reference-compile", "triton", "cuda", "auto", "sdpa", *SDPA_FORCED)
OURS = ("triton", "cuda", "auto")  # auto: the backend fastgpt.ops measured fastest (choices printed at the end)


def sweep(env: common.Env) -> list[dict[str, Any]]:
    """The (dtype, causal, B, H, T, D) configurations, each with the providers to run there."""
    if env.quick:
        if env.cuda:
            return [dict(dtype="bf16", causal=c, B=2, H=4, T=256, D=64, providers=PROVIDERS) for c in (True, False)]
        # CPU: fp32 (the interpreter has no bf16), a ragged T, one config (the interpreter is slow)
        return [dict(dtype="fp32", causal=True, B=1, H=2, T=24, D=16, providers=PROVIDERS)]
    configs = []
    for dtype in ("bf16", "fp16"):
        for causal in (True, False):
            for D in HEAD_DIMS:
                if dtype == "fp16" and not env.full and not (causal and D == 128):
                    continue
                for T in SEQ_LENS:
                    B, H = TOKENS // T, WIDTH // D
                    reference = B * H * T * T * 4 <= REF_MAX_SCORE_BYTES and (
                        env.full or (dtype == "bf16" and D == 128 and causal and T in (1024, 4096)))
                    providers = PROVIDERS if reference else tuple(p for p in PROVIDERS if not p.startswith("ref"))
                    configs.append(dict(dtype=dtype, causal=causal, B=B, H=H, T=T, D=D, providers=providers))
    # the summary's shape first, so a --budget cut never loses it
    return sorted(configs, key=lambda c: not all(c[k] == v for k, v in HEADLINE.items()))


def unavailable(env: common.Env) -> dict[str, str | None]:
    """Providers that cannot run at all here, with the reason (checked once, not per shape)."""
    from fastgpt.ops import available_backends

    backends = available_backends(env.device)
    reasons: dict[str, str | None] = {p: None for p in PROVIDERS}
    for name in OURS:
        reasons[name] = backends.get(name)  # auto always runs
    if not env.compile:
        reasons["reference-compile"] = "--quick / --skip-compile"
    for name in SDPA_FORCED:
        if not env.cuda:
            reasons[name] = "SDPA's fused kernels need CUDA"
    return reasons


def attention_fn(provider: str, causal: bool) -> tuple[Callable[[Tensor, Tensor, Tensor], Tensor], Any]:
    """(q, k, v) -> out for a provider, and the context to run it in."""
    from fastgpt.ops import flash_attention, reference

    if provider == "reference":
        return (lambda q, k, v: reference.flash_attention(q, k, v, causal)), contextlib.nullcontext()
    if provider == "reference-compile":
        compiled = torch.compile(reference.flash_attention, dynamic=False)
        return (lambda q, k, v: compiled(q, k, v, causal)), contextlib.nullcontext()
    if provider in OURS:
        return (lambda q, k, v: flash_attention(q, k, v, causal=causal, backend=provider)), contextlib.nullcontext()
    ctx: Any = contextlib.nullcontext()
    if provider in SDPA_FORCED:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        ctx = sdpa_kernel([getattr(SDPBackend, SDPA_FORCED[provider])])
    return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)), ctx


def measure(env: common.Env, provider: str, cfg: dict[str, Any], inputs: tuple[Tensor, ...]) -> list[dict[str, Any]]:
    """Time one provider at one configuration in every mode; rows for those that ran."""
    q, k, v, dout = inputs
    fn, ctx = attention_fn(provider, cfg["causal"])
    where = "{dtype} causal={causal} B={B} H={H} T={T} D={D}".format(**cfg)
    headline = all(cfg[key] == val for key, val in HEADLINE.items())
    bwd = "derive" if provider.endswith("-compile") else "skip" if env.interpreted and provider in OURS else "time"
    if provider == "auto":
        fn(q, k, v)  # auto checks and times its candidates on first use: outside the measurement
    with ctx, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SDPA explains at length why a forced backend cannot run
        ms = common.time_modes(env, provider, where, lambda: fn(q, k, v), dout, [q, k, v], headline, bwd)
    flops = 4 * cfg["B"] * cfg["H"] * cfg["T"] ** 2 * cfg["D"] * (0.5 if cfg["causal"] else 1.0)
    rows = []
    for mode, (t, derived) in ms.items():
        tflops = flops * FLOP_MULT[mode] / (t * 1e-3) / 1e12
        rows.append(dict(bench="attn", provider=provider, ours=provider in OURS, mode=mode,
                         dtype=cfg["dtype"], causal=cfg["causal"], B=cfg["B"], H=cfg["H"], T=cfg["T"], D=cfg["D"],
                         ms=t, tflops=tflops, value=tflops, unit="TFLOP/s", derived=derived))
    return rows


def run(env: common.Env) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    configs = sweep(env)
    reasons = unavailable(env)
    for provider, reason in reasons.items():
        if reason:
            env.skip(provider, reason)
    if env.compile:
        common.raise_recompile_limit()
    rows: list[dict[str, Any]] = []
    for cfg in configs:
        dtype = DTYPES[cfg["dtype"]]
        shape = (cfg["B"], cfg["H"], cfg["T"], cfg["D"])
        q, k, v = (torch.randn(shape, device=env.device, dtype=dtype, requires_grad=True) for _ in range(3))
        dout = torch.randn(shape, device=env.device, dtype=dtype)
        print("{dtype} causal={causal!s:5} B={B:2d} H={H:2d} T={T:5d} D={D:3d}".format(**cfg), flush=True)
        for provider in cfg["providers"]:
            if not reasons[provider] and not env.out_of_time(provider, "{dtype} T={T} D={D}".format(**cfg)):
                rows += measure(env, provider, cfg, (q, k, v, dout))
        del q, k, v, dout
        common.release_memory()
    return rows, {"headline": HEADLINE if not env.quick else {k: configs[0][k] for k in HEADLINE}}


def summarize(rows: list[dict[str, Any]], ceilings: dict[str, Any], head: dict[str, Any]) -> dict[str, float | None]:
    fwd = common.best_ours(rows, mode="fwd", **head)
    return {
        "attn_fwd_bwd_vs_sdpa": common.speed_ratio(rows, "sdpa", mode="fwd+bwd", **head),
        "attn_fwd_fraction_of_matmul_peak": fwd["tflops"] / ceilings["matmul_tflops"] if fwd else None,
    }


def plot(fig: Any, rows: list[dict[str, Any]], head: dict[str, Any], matmul: float) -> None:
    """TFLOP/s against T for the headline dtype and head dim: causal / not x the three modes."""
    for i, causal in enumerate((True, False)):
        for j, mode in enumerate(("fwd", "bwd", "fwd+bwd")):
            ax = fig.add_subplot(2, 3, 3 * i + j + 1)
            sel = common.find_row(rows, mode=mode, causal=causal, dtype=head["dtype"], D=head["D"])
            title = (f"{mode}, {'causal' if causal else 'non-causal'}, {head['dtype']}, D={head['D']}, "
                     f"B*T={head['B'] * head['T']}")
            common.line_panel(ax, sel, "T", "tflops", title, "TFLOP/s", matmul, "matmul ceiling")


def main(argv: list[str] | None = None) -> int:
    args = common.parse_args(__doc__, argv)
    env = common.init_runtime(args)
    ceilings = common.measure_ceilings(env)
    rows, extra = run(env)
    head = extra["headline"]
    for row in rows:
        row["fraction_of_ceiling"] = row["tflops"] / ceilings["matmul_tflops"]
    common.add_ratios(rows, ("mode", "dtype", "causal", "B", "H", "T", "D"))
    print()
    common.print_table(rows, [("provider", "provider"), ("mode", "mode"), ("dtype", "dtype"), ("causal", "causal"),
                              ("B", "B"), ("H", "H"), ("T", "T"), ("D", "D"), ("ms", "ms"), ("tflops", "TFLOP/s"),
                              ("fraction_of_ceiling", "of matmul"), ("vs_best_baseline", "x best base"),
                              ("best_baseline", "best baseline")])
    from fastgpt.ops import autotune_choices

    print("auto's choices:" if autotune_choices() else "auto's choices: none (no kernel competes here)")
    for key, backend in autotune_choices().items():
        print(f"  {key}: {backend}")
    summary = summarize([r for r in rows if r["provider"] != "auto"], ceilings, head)  # the summary rates our kernels
    common.finish(env, "attn", rows, summary, ceilings,
                  lambda fig, r: plot(fig, r, head, ceilings["matmul_tflops"]), extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
