"""Training-step benchmark: a GPT-2-sized model with fastgpt's kernels against torch + SDPA + compile.

    python benchmarks/train.py [--quick] [--full] [--skip-compile] [--budget S]
                              [--precision autocast|bf16] [--out DIR]

A short fixed number of optimizer steps on random tokens (no dataset): forward, cross-entropy,
backward, AdamW step, zero_grad, as fastgpt.train does (no gradient clipping, no accumulation).
The model is the ``gpt2`` preset (124M; ``--full`` adds ``gpt2-medium``, 350M) with RMSNorm (so the
norm kernels run), vocab padded to 50304, T = 1024, B = 16 (8 for 350M). ``--precision autocast``
(default, like fastgpt.train): fp32 weights, bf16 autocast; ``bf16``: the whole model in bf16.

Configurations (each skipped with a note when it cannot run):
- ``baseline``: fastgpt.ops.reference norms, attention by F.scaled_dot_product_attention,
  torch.compile(model), torch.optim.AdamW(fused=True): the strongest stock-PyTorch setup.
- ``baseline-eager``: the same without torch.compile.
- ``triton`` / ``cuda``: our attention and RMSNorm kernels (attn_backend / norm_backend),
  torch.compile(model), fastgpt.optim.FusedAdamW on the same backend. When the compiled run
  fails, it is noted and retried without torch.compile as ``triton-eager`` / ``cuda-eager``.
- ``auto``: every op on ``backend="auto"`` (checked, then the fastest measured beside torch); its
  choices are printed after the table.

Reported per configuration: tokens/s (3 warm-up steps, the first compiles; then 20 timed steps
between two synchronizations), MFU = flops_per_token x tokens/s / the GPU's datasheet dense
bf16 peak (989 TFLOP/s on H100 SXM and H200; table in fastgpt.train.metrics.PEAK_BF16_FLOPS), with
flops_per_token = 6N + 12*L*T*d (GPT.flops_per_token), the same model FLOP/s as a fraction of
the bf16 matmul rate measured in this run, and peak memory (max_memory_allocated over the timed
steps).

Summary keys, gpt2: train_mfu (our best MFU) and train_vs_torch_compile (our best tokens/s /
baseline's).

Expected runtime on one H100: ~2-3 min default (three compiled configurations, ~40-60 s of
compilation each, ~1 s of steps each), ~5-6 min with --full. --quick on CPU: ~10 s (mostly importing torch and triton).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from typing import Any
from unittest import mock

import common
import torch
import torch.nn.functional as F

SEQ_LEN = 1024
WARMUP_STEPS, TIMED_STEPS = 3, 20
MODELS = {"gpt2": 16, "gpt2-medium": 8}  # preset -> batch size
QUICK_MODEL = dict(n_layer=1, n_head=2, n_embd=16, vocab_size=16, block_size=8)
CONFIGS: list[dict[str, Any]] = [
    dict(provider="baseline", ours=False, attn="sdpa", norm="torch", optimizer="torch-fused", compile=True),
    dict(provider="triton", ours=True, attn="triton", norm="triton", optimizer="triton", compile=True),
    dict(provider="cuda", ours=True, attn="cuda", norm="cuda", optimizer="cuda", compile=True),
    # auto: each op on the backend auto measured fastest (its choices are printed after the table)
    dict(provider="auto", ours=True, attn="auto", norm="auto", optimizer="auto", compile=True),
    dict(provider="baseline-eager", ours=False, attn="sdpa", norm="torch", optimizer="torch-fused", compile=False),
]
LR, BETAS, WEIGHT_DECAY = 6e-4, (0.9, 0.95), 0.1


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=("autocast", "bf16"), default="autocast",
                        help="autocast: fp32 weights + bf16 autocast (as fastgpt.train); bf16: the model in bf16")


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                   scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """fastgpt.ops.flash_attention's signature over F.scaled_dot_product_attention (the baseline)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


def make_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    from fastgpt.optim import FusedAdamW

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if name == "torch-fused":
        return torch.optim.AdamW(groups, lr=LR, betas=BETAS, fused=True)
    return FusedAdamW(groups, lr=LR, betas=BETAS, backend=name)


def measure(env: common.Env, cfg: dict[str, Any], preset: str, batch: int, seq_len: int,
            precision: str) -> dict[str, Any]:
    """Build, warm up and time one configuration; a row (raises when it cannot run)."""
    from fastgpt.model import GPT

    overrides: dict[str, Any] = dict(norm="rms_norm", vocab_size=50304, block_size=seq_len, dropout=0.0,
                                     attn_backend="torch" if cfg["attn"] == "sdpa" else cfg["attn"],
                                     norm_backend=cfg["norm"])
    if env.quick and not env.cuda:
        overrides.update(QUICK_MODEL)
    patch = (mock.patch("fastgpt.nn.attention.flash_attention", sdpa_attention) if cfg["attn"] == "sdpa"
             else contextlib.nullcontext())
    with patch:
        model = GPT.from_preset(preset, device=env.device, **overrides)
        if precision == "bf16":
            model = model.to(torch.bfloat16)
        optimizer = make_optimizer(cfg["optimizer"], model)
        runner = torch.compile(model) if cfg["compile"] else model
        vocab = model.config.vocab_size
        tokens = [torch.randint(0, vocab, (batch, seq_len + 1), device=env.device) for _ in range(3)]
        batches = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in tokens]  # (inputs, targets)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if env.cuda and precision == "autocast"
                    else contextlib.nullcontext())

        def step(i: int) -> torch.Tensor:
            x, y = batches[i % len(batches)]
            with autocast:
                _, loss = runner(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        interpreted = env.interpreted and "triton" in (cfg["attn"], cfg["norm"], cfg["optimizer"])
        warmup, timed = (0, 1) if interpreted else (1, 2) if env.quick else (WARMUP_STEPS, TIMED_STEPS)
        for i in range(warmup):
            step(i)
        if env.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for i in range(timed):
            loss = step(warmup + i)
        if env.cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    loss_value = float(loss.item())
    if not math.isfinite(loss_value):
        raise RuntimeError(f"the loss is {loss_value} after {warmup + timed} steps")
    tokens_per_s = timed * batch * seq_len / elapsed
    flops_per_token = model.flops_per_token()
    peak = common.peak_bf16_flops(env.info["device"]) if env.cuda else None
    row = dict(bench="train", provider=cfg["provider"], ours=cfg["ours"], mode="train", model=preset,
               params=model.num_params(), B=batch, T=seq_len, precision=precision if env.cuda else "fp32",
               attn=cfg["attn"], norm=cfg["norm"], optimizer=cfg["optimizer"], compile=cfg["compile"], steps=timed,
               ms=elapsed / timed * 1e3, tokens_per_s=tokens_per_s, value=tokens_per_s, unit="tokens/s",
               flops_per_token=flops_per_token, model_tflops=flops_per_token * tokens_per_s / 1e12,
               mfu=flops_per_token * tokens_per_s / peak if peak else None,
               peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if env.cuda else None, loss=loss_value)
    return row


def run(env: common.Env, precision: str) -> list[dict[str, Any]]:
    from fastgpt.ops import available_backends

    backends = available_backends(env.device)
    models = dict(MODELS) if env.full else {"gpt2": MODELS["gpt2"]}
    if env.quick:
        models = {"gpt2": 2 if not env.cuda else 4}
    seq_len = QUICK_MODEL["block_size"] if env.quick and not env.cuda else SEQ_LEN
    rows: list[dict[str, Any]] = []
    for preset, batch in models.items():
        print(f"{preset}: B={batch} T={seq_len}", flush=True)
        for cfg in CONFIGS:
            cfg = dict(cfg, compile=cfg["compile"] and env.compile)
            if cfg["provider"] == "baseline-eager" and not env.compile:
                continue  # identical to the baseline when nothing is compiled
            reason = next((backends[b] for b in {cfg["attn"], cfg["norm"], cfg["optimizer"]} if b in backends
                           and backends[b]), None)
            if reason:
                env.skip(cfg["provider"], reason)
                continue
            if env.out_of_time(cfg["provider"], preset):
                continue
            print(f"  {cfg['provider']}", flush=True)
            row = attempt(env, cfg, preset, batch, seq_len, precision)
            if row is None and cfg["ours"] and cfg["compile"] and not env.out_of_time(cfg["provider"], preset):
                # our kernels under torch.compile failed: measure them eagerly rather than not at all
                cfg = dict(cfg, provider=f"{cfg['provider']}-eager", compile=False)
                print(f"  {cfg['provider']} (retry without torch.compile)", flush=True)
                row = attempt(env, cfg, preset, batch, seq_len, precision)
            if row is not None:
                rows.append(row)
    return rows


def attempt(env: common.Env, cfg: dict[str, Any], preset: str, batch: int, seq_len: int,
            precision: str) -> dict[str, Any] | None:
    """measure(), or None with a note; leaves dynamo and the GPU clean for the next configuration."""
    row = common.guarded(env, cfg["provider"], preset, lambda: measure(env, cfg, preset, batch, seq_len, precision))
    if cfg["compile"]:
        torch._dynamo.reset()
    common.release_memory()
    return row


def plot(fig: Any, rows: list[dict[str, Any]]) -> None:
    """tokens/s per configuration and model; MFU written on each bar."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    for j, preset in enumerate(models):
        ax = fig.add_subplot(1, len(models), j + 1)
        sel = common.find_row(rows, model=preset)
        bars = ax.bar([r["provider"] for r in sel], [r["tokens_per_s"] for r in sel],
                      color=["tab:orange" if r["ours"] else "tab:gray" for r in sel])
        for bar, r in zip(bars, sel):
            label = f"MFU {r['mfu']:.0%}" if r.get("mfu") is not None else ""
            if r.get("peak_mem_gib") is not None:
                label += f"\n{r['peak_mem_gib']:.1f} GiB"
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=8)
        ax.set_title(f"{preset} training step, B={sel[0]['B']} T={sel[0]['T']}, {sel[0]['precision']}", fontsize=9)
        ax.set_ylabel("tokens/s")
        ax.grid(alpha=0.3, axis="y")


def main(argv: list[str] | None = None) -> int:
    args = common.parse_args(__doc__, argv, add_args)
    env = common.init_runtime(args)
    ceilings = common.measure_ceilings(env)
    if env.compile:
        common.raise_recompile_limit()
    rows = run(env, args.precision)
    for row in rows:
        row["fraction_of_ceiling"] = row["model_tflops"] / ceilings["matmul_tflops"]
    common.add_ratios(rows, ("model",))
    print()
    common.print_table(rows, [("provider", "config"), ("model", "model"), ("precision", "precision"),
                              ("compile", "compile"), ("ms", "ms/step"), ("tokens_per_s", "tokens/s"),
                              ("mfu", "MFU"), ("fraction_of_ceiling", "of matmul"), ("peak_mem_gib", "peak GiB"),
                              ("vs_best_baseline", "x best base"), ("best_baseline", "best baseline"),
                              ("loss", "loss")])
    from fastgpt.ops import autotune_choices

    print("auto's choices:" if autotune_choices() else "auto's choices: none (no kernel competes here)")
    for key, backend in autotune_choices().items():
        print(f"  {key}: {backend}")
    kernels = [r for r in common.find_row(rows, model="gpt2", ours=True) if r["provider"] != "auto"]
    ours = max(kernels, key=lambda r: r["tokens_per_s"], default=None)  # the summary rates our kernels
    base = common.find_row(rows, model="gpt2", provider="baseline")
    summary = {
        "train_mfu": ours["mfu"] if ours else None,
        "train_vs_torch_compile": ours["tokens_per_s"] / base[0]["tokens_per_s"] if ours and base else None,
    }
    common.finish(env, "train", rows, summary, ceilings, plot, {"precision": args.precision})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
