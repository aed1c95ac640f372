"""``FusedAdamW``: a drop-in for ``torch.optim.AdamW`` whose step is one multi-tensor ``fused_adamw_`` call
per (param group, device, dtype): the Triton backend launches once per call (per parameter and gradient
dtype pair), the CUDA backend once per 36 tensors or 320 chunks of 64K elements, whichever fills first."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from fastgpt.ops import fused_adamw_


class FusedAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) with fastgpt's multi-tensor kernels.

    Same arguments, param groups, LR-scheduler behaviour and state_dict layout as
    ``torch.optim.AdamW`` (state per parameter: ``step``, ``exp_avg``, ``exp_avg_sq``), so either
    optimizer loads the other's state_dict. Parameters may be fp32, fp16 or bf16; the moments are
    fp32. ``lr`` may be a float or a tensor. ``amsgrad`` is not supported.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        maximize: bool = False,
        backend: str = "auto",
    ) -> None:
        if not (isinstance(lr, Tensor) or lr >= 0.0):
            raise ValueError(f"FusedAdamW: invalid learning rate {lr!r} (must be >= 0)")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"FusedAdamW: betas must be in [0, 1), got {betas!r}")
        if eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"FusedAdamW: eps ({eps!r}) and weight_decay ({weight_decay!r}) must be >= 0")
        # the same group keys as torch.optim.AdamW, so state_dicts load either way
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=False,
                        maximize=maximize, foreach=None, capturable=False, differentiable=False, fused=None)
        super().__init__(params, defaults)
        self.backend = backend

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            if group["amsgrad"]:
                raise ValueError("FusedAdamW does not support amsgrad=True")

    def _init_state(self, p: Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
        elif state["step"].device != p.device:
            # a state_dict from torch.optim.AdamW keeps steps on the CPU
            state["step"] = state["step"].to(p.device, torch.float32)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["amsgrad"]:
                raise ValueError("FusedAdamW does not support amsgrad=True")
            # one multi-tensor call per (device, dtype) of this group
            buckets: dict[tuple, list[list[Tensor]]] = defaultdict(lambda: [[], [], [], [], []])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("FusedAdamW does not support sparse gradients")
                state = self._init_state(p)
                bucket = buckets[(p.device, p.dtype)]
                for lst, t in zip(bucket, (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                    lst.append(t)
            beta1, beta2 = group["betas"]
            for params, grads, exp_avgs, exp_avg_sqs, steps in buckets.values():
                torch._foreach_add_(steps, 1.0)
                fused_adamw_(
                    params, grads, exp_avgs, exp_avg_sqs, steps,
                    lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                    weight_decay=group["weight_decay"], maximize=group["maximize"], backend=self.backend,
                )
        return loss
