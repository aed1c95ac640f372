"""The optimizer of a run: AdamW (fastgpt's fused kernel when a GPU backend exists), SGD, or Muon for the
blocks' weight matrices with that AdamW for the rest; and its GradScaler."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from fastgpt import ops
from fastgpt.config import OptimConfig
from fastgpt.optim import FusedAdamW, HybridOptimizer, Muon


def param_groups(model: torch.nn.Module, weight_decay: float,
                 params: list[torch.Tensor] | None = None) -> list[dict]:
    """Weight decay on matrices and embeddings; never on biases and norm gains. ``params``: these of the
    model's parameters (default: every trainable one)."""
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def muon_split(model: torch.nn.Module) -> tuple[list[tuple[str, torch.Tensor]], list[tuple[str, torch.Tensor]]]:
    """(matrices, rest) of the trainable parameters, by name: Muon takes the 2-D weights inside
    ``model.blocks`` (attention and MLP projections, LoRA's A and B); AdamW the rest (embeddings, the LM
    head, tied or not, norms, biases). A frozen parameter is in neither; a shared one is named once."""
    matrices, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (matrices if name.startswith("blocks.") and p.dim() == 2 else rest).append((name, p))
    return matrices, rest


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device, fsdp: bool = False,
                    say: Callable[[str], None] | None = None, ddp: bool = False) -> torch.optim.Optimizer:
    """``cfg.name``: ``sgd``; ``fused_adamw`` (``FusedAdamW``); ``adamw``: ``FusedAdamW`` when a cuda
    or triton backend is usable on ``device``, else torch's AdamW with its fused step; ``muon``: a
    ``HybridOptimizer`` of ``Muon`` (``muon_split``'s matrices, at ``optim.muon_lr``) and that AdamW (the rest,
    at ``optim.lr``), whose grouping goes to ``say`` in two lines.

    ``fsdp``: the parameters are DTensor shards, which only torch's (foreach) AdamW updates. ``ddp``: a
    replica per rank, every rank stepping together (the trainer under DDP): Muon shares its Newton–Schulz
    iterations over the ranks.
    """
    if cfg.name == "sgd":
        return torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.beta1)
    if fsdp and cfg.name in ("fused_adamw", "muon"):
        raise ValueError(f"optim.name={cfg.name!r} cannot update FSDP's sharded parameters; "
                         "use optim.name=adamw with train.parallel=fsdp")
    if cfg.name != "muon":
        return _adamw(param_groups(model, cfg.weight_decay), cfg, device, fsdp)
    matrices, rest = muon_split(model)
    muon = Muon([p for _, p in matrices], lr=cfg.muon_lr, momentum=cfg.muon_momentum, nesterov=cfg.muon_nesterov,
                weight_decay=cfg.weight_decay, ns_steps=cfg.muon_ns_steps, distributed=ddp)
    adamw = _adamw(param_groups(model, cfg.weight_decay, [p for _, p in rest]), cfg, device, fsdp)
    if say is not None:
        frozen = sum(not p.requires_grad for p in model.parameters())
        shared = f", Newton-Schulz shared by {torch.distributed.get_world_size()} ranks" if ddp else ""
        say(f"optim.name=muon: Muon (lr {cfg.muon_lr:g}{shared}) on {_summary(matrices)}\n"
            f"optim.name=muon: {type(adamw).__name__} (lr {cfg.lr:g}) on {_summary(rest)}"
            + (f"; {frozen} frozen tensors in neither" if frozen else ""))
    return HybridOptimizer({"adamw": adamw, "muon": muon})  # AdamW's groups first: the lr logged is optim.lr's


def _adamw(groups: list[dict], cfg: OptimConfig, device: torch.device, fsdp: bool) -> torch.optim.Optimizer:
    kernels = not fsdp and any(ops.available_backends(device)[b] is None for b in ("cuda", "triton"))
    if cfg.name == "fused_adamw" or kernels:
        return FusedAdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    # without our kernels, torch's own fused step (CPU and CUDA): on CPU 5x faster than its for-loop
    fused = not fsdp and device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused or None)


def _summary(named: list[tuple[str, torch.Tensor]]) -> str:
    """``8 tensors (98,304 weights): blocks.*.attn.c_attn.weight, blocks.*.attn.c_proj.weight``: the names
    with each layer number as ``*``, once each."""
    if not named:
        return "no tensors"
    names = dict.fromkeys(re.sub(r"\.\d+\.", ".*.", name) for name, _ in named)
    count = sum(p.numel() for _, p in named)
    return f"{len(named)} tensors ({count:,} weights): {', '.join(names)}"


def build_grad_scaler(device: torch.device, dtype: torch.dtype, fsdp: bool = False) -> torch.amp.GradScaler:
    """A GradScaler that scales only for float16 (a no-op otherwise). Under FSDP the sharded one, whose
    inf/NaN check agrees over the ranks, each of which holds a shard of the gradients."""
    if fsdp:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type, enabled=dtype == torch.float16)
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
