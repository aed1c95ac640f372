"""AdamW benchmark: FusedAdamW (Triton, CUDA) against torch.optim.AdamW (foreach, fused) and the reference.

    python benchmarks/adamw.py [--quick] [--full] [--skip-compile] [--budget S] [--out DIR]

One optimizer step over the real parameter shapes of a GPT: each preset is built on the meta
device and an fp32 tensor of every parameter's shape is allocated (params ~ N(0, 0.02), grads ~
N(0, 0.01): never zeros). Two groups as in fastgpt.train (weight decay 0.1 on matrices and
embeddings, 0 on biases and gains); lr 1e-4, betas (0.9, 0.95), eps 1e-8. Parameter sets: GPT-2
124M (``gpt2``), 350M (``gpt2-medium``) and 1.3B (GPT-3 XL's shape, 24 layers x 2048, in the
GPT-2 architecture: GPT-2 itself has no 1.3B model).

Providers (each skipped with a note when it cannot run): ``reference`` (FusedAdamW with the
pure-PyTorch backend: a Python loop over tensors), ``reference-compile`` (the reference step
under torch.compile; 124M only unless ``--full``: compiling ~150-300 tensors' updates takes tens
of seconds), ``torch-foreach`` and ``torch-fused`` (torch.optim.AdamW), ``triton`` and ``cuda``
(ours, FusedAdamW).

Bytes per fp32 parameter: read param, grad, exp_avg, exp_avg_sq (16) + write param, exp_avg,
exp_avg_sq (12) = 28. At 124M that is 3.5 GB a step, far beyond L2 (and L2 is flushed before every
timed call anyway).

Summary keys, GPT-2 124M: adamw_fraction_of_bandwidth (our best GB/s / measured copy GB/s) and
adamw_vs_torch_fused (our speed / torch.optim.AdamW(fused=True)'s).

Expected runtime on one H100: ~1-2 min (dominated by the reference-compile compile and the 1.3B
set's ~21 GB of tensors). --quick on CPU: ~10 s (mostly importing torch and triton).
"""

from __future__ import annotations

from typing import Any

import common
import torch
from torch import Tensor

BYTES_PER_PARAM = 28
PARAM_SETS: dict[str, tuple[str, dict[str, Any]]] = {
    "124M": ("gpt2", {}),
    "350M": ("gpt2-medium", {}),
    "1.3B": ("gpt2", dict(n_layer=24, n_head=16, n_embd=2048)),
}
QUICK_SET = ("tiny", ("gpt2", dict(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=8)))
HEADLINE_SET = "124M"
PROVIDERS = ("reference", "reference-compile", "torch-foreach", "torch-fused", "triton", "cuda")
OURS = ("triton", "cuda")
LR, BETAS, EPS, WEIGHT_DECAY = 1e-4, (0.9, 0.95), 1e-8, 0.1


def param_shapes(preset: str, overrides: dict[str, Any]) -> list[tuple[int, ...]]:
    """Every distinct parameter's shape (tied weights once), from a model on the meta device."""
    from fastgpt.model import GPT

    model = GPT.from_preset(preset, device="meta", **overrides)
    return [tuple(p.shape) for p in model.parameters()]


def groups(params: list[Tensor]) -> list[dict[str, Any]]:
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


class CompiledReference:
    """The reference AdamW step (fastgpt.ops.reference.fused_adamw_) under torch.compile, per group."""

    def __init__(self, params: list[Tensor]) -> None:
        from fastgpt.ops import reference

        self.fn = torch.compile(reference.fused_adamw_)
        self.groups = []
        for group in groups(params):
            ps = group["params"]
            self.groups.append(dict(params=ps, grads=[p.grad for p in ps], weight_decay=group["weight_decay"],
                                    m=[torch.zeros_like(p) for p in ps], v=[torch.zeros_like(p) for p in ps],
                                    steps=[torch.zeros((), device=p.device) for p in ps]))

    def step(self) -> None:
        for g in self.groups:
            torch._foreach_add_(g["steps"], 1.0)
            self.fn(g["params"], g["grads"], g["m"], g["v"], g["steps"], lr=LR, beta1=BETAS[0], beta2=BETAS[1],
                    eps=EPS, weight_decay=g["weight_decay"])


def make_optimizer(provider: str, params: list[Tensor]) -> Any:
    from fastgpt.optim import FusedAdamW

    if provider == "reference-compile":
        return CompiledReference(params)
    if provider.startswith("torch-"):
        flag = {"torch-foreach": dict(foreach=True), "torch-fused": dict(fused=True)}[provider]
        return torch.optim.AdamW(groups(params), lr=LR, betas=BETAS, eps=EPS, **flag)
    backend = "torch" if provider == "reference" else provider
    return FusedAdamW(groups(params), lr=LR, betas=BETAS, eps=EPS, backend=backend)


def time_step(env: common.Env, provider: str, params: list[Tensor], param_set: str) -> float:
    """Median ms of one optimizer step (the first call, not timed, creates the state)."""
    optimizer = make_optimizer(provider, params)
    return common.bench(optimizer.step, env, headline=param_set == HEADLINE_SET)


def unavailable(env: common.Env) -> dict[str, str | None]:
    from fastgpt.ops import available_backends

    backends = available_backends(env.device)
    reasons: dict[str, str | None] = {p: None for p in PROVIDERS}
    for name in OURS:
        reasons[name] = backends[name]
    if not env.compile:
        reasons["reference-compile"] = "--quick / --skip-compile"
    return reasons


def run(env: common.Env) -> list[dict[str, Any]]:
    reasons = unavailable(env)
    for provider, reason in reasons.items():
        if reason:
            env.skip(provider, reason)
    if env.compile:
        common.raise_recompile_limit()
    sets = [QUICK_SET] if env.quick and not env.cuda else (
        [(HEADLINE_SET, PARAM_SETS[HEADLINE_SET])] if env.quick else list(PARAM_SETS.items()))
    rows: list[dict[str, Any]] = []
    for name, (preset, overrides) in sets:
        rows += measure_set(env, name, param_shapes(preset, overrides), reasons)
        common.release_memory()
    return rows


def measure_set(env: common.Env, name: str, shapes: list[tuple[int, ...]],
                reasons: dict[str, str | None]) -> list[dict[str, Any]]:
    """Every provider's step over one parameter set (one set of params and grads, shared)."""
    numel = sum(torch.Size(s).numel() for s in shapes)
    print(f"{name}: {len(shapes)} tensors, {numel:,} fp32 parameters", flush=True)
    params = [(0.02 * torch.randn(s, device=env.device)).requires_grad_() for s in shapes]
    for p in params:
        p.grad = 0.01 * torch.randn_like(p)
    rows = []
    for provider in PROVIDERS:
        if reasons[provider] or env.out_of_time(provider, name):
            continue
        if provider == "reference-compile" and name != HEADLINE_SET and not env.full:
            env.skip(provider, f"only at {HEADLINE_SET} unless --full (compile time)", name)
            continue
        ms = common.guarded(env, provider, name, lambda: time_step(env, provider, params, name))  # noqa: B023
        common.release_memory()  # the optimizer state goes with time_step's frame
        if ms is None:
            continue
        gbps = BYTES_PER_PARAM * numel / (ms * 1e-3) / 1e9
        rows.append(dict(bench="adamw", provider=provider, ours=provider in OURS, mode="step", param_set=name,
                         tensors=len(shapes), params=numel, ms=ms, bytes=BYTES_PER_PARAM * numel, gbps=gbps,
                         value=gbps, unit="GB/s"))
    return rows


def plot(fig: Any, rows: list[dict[str, Any]], copy_gbps: float) -> None:
    """GB/s per provider (bars) for each parameter set, with the copy ceiling."""
    ax = fig.add_subplot(1, 1, 1)
    sets = list(dict.fromkeys(r["param_set"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    width = 0.8 / max(1, len(providers))
    for i, provider in enumerate(providers):
        xs, ys = [], []
        for j, s in enumerate(sets):
            hit = common.find_row(rows, provider=provider, param_set=s)
            if hit:
                xs.append(j + i * width)
                ys.append(hit[0]["gbps"])
        ax.bar(xs, ys, width, label=provider, hatch="" if provider in OURS else "//")
    ax.axhline(copy_gbps, color="gray", linestyle=":", label="copy ceiling")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sets))], sets)
    ax.set_ylabel("GB/s (28 bytes per fp32 parameter)")
    ax.set_title("AdamW step, fp32 parameters", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)


def main(argv: list[str] | None = None) -> int:
    args = common.parse_args(__doc__, argv)
    env = common.init_runtime(args)
    ceilings = common.measure_ceilings(env)
    rows = run(env)
    head = HEADLINE_SET if not (env.quick and not env.cuda) else QUICK_SET[0]
    for row in rows:
        row["fraction_of_ceiling"] = row["gbps"] / ceilings["copy_gbps"]
    common.add_ratios(rows, ("param_set",))
    print()
    common.print_table(rows, [("provider", "provider"), ("param_set", "set"), ("tensors", "tensors"),
                              ("params", "params"), ("ms", "ms"), ("gbps", "GB/s"), ("fraction_of_ceiling", "of copy"),
                              ("vs_best_baseline", "x best base"), ("best_baseline", "best baseline")])
    ours = common.best_ours(rows, param_set=head)
    summary = {
        "adamw_fraction_of_bandwidth": ours["gbps"] / ceilings["copy_gbps"] if ours else None,
        "adamw_vs_torch_fused": common.speed_ratio(rows, "torch-fused", param_set=head),
    }
    common.finish(env, "adamw", rows, summary, ceilings, lambda fig, r: plot(fig, r, ceilings["copy_gbps"]),
                  {"headline": {"param_set": head}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
