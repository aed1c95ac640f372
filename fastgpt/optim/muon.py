"""``Muon``: momentum orthogonalized by a Newton–Schulz iteration, for 2-D weight matrices.

For each matrix ``W`` (rows, cols) with gradient ``G``, one step is::

    B <- momentum * B + G                                  # SGD-style momentum buffer
    M  = G + momentum * B  if nesterov  else  B
    O  = NS(M)                                             # ~ U V^T of M = U S V^T
    W <- W * (1 - lr * weight_decay)                       # decoupled weight decay
    W <- W - lr * max(1, rows / cols) ** 0.5 * O

``NS`` (``newton_schulz``) divides ``M`` by its Frobenius norm, so every singular value is at most 1, then
applies ``ns_steps`` times the quintic ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``, which maps each
singular value ``s`` to ``a s + b s^3 + c s^5`` and leaves the singular vectors alone. The coefficients
``(a, b, c) = (3.4445, -4.7750, 2.0315)`` are Keller Jordan's (Muon, keller-jordan/modded-nanogpt, 2024):
chosen for a steep slope at zero (``a``), so that small singular values grow fast, at the price of not
converging to 1 but settling in a band around it: 5 steps map every singular value of at least 1/500 of
the Frobenius norm into [0.68, 1.21] (the scalar map's band; tests/optim/test_muon.py checks it against an
SVD on fp32 and bf16 inputs). A tall matrix is transposed first, so that ``A`` is the small (cols, cols)
Gram matrix, and transposed back.

The update scale ``max(1, rows / cols) ** 0.5`` is Muon's own (modded-nanogpt), not Moonshot's / nanochat's
``0.2 * sqrt(max(rows, cols))`` that matches AdamW's update RMS: ``optim.muon_lr``'s default, 0.02, is the
rate tuned for this scale, and it keeps Muon's rate separate from AdamW's ``optim.lr``.

``distributed=True`` (DDP: every rank holds the same gradients, as after DDP's all-reduce): each rank runs
Newton–Schulz for its share of the matrices (the largest first, dealt round the ranks) and broadcasts the
results, as modded-nanogpt does; every rank keeps every momentum buffer (an elementwise update), so the
steps and the state equal one process's. Every rank must then call ``step`` together.

Limits: 2-D parameters only (any other shape is refused when the optimizer is built: biases and norm
gains go to AdamW, as ``optim.name=muon`` does); dense gradients only. The iteration runs in ``ns_dtype``:
bf16 on CUDA, fp32 elsewhere (a CPU's bf16 matmuls are often emulated, slower than fp32); the momentum
buffer has the parameter's dtype, so ``state_dict`` round trips are exact. No Triton kernel: without a GPU
here no benchmark could show one beating ``torch.matmul`` on the X X^T products, so the torch path stays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor

# Keller Jordan's quintic Newton–Schulz coefficients (modded-nanogpt's Muon)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: Tensor, steps: int = 5, dtype: torch.dtype = torch.float32, eps: float = 1e-7) -> Tensor:
    """An approximately orthogonal matrix with ``G``'s singular vectors: ``U S' V^T`` for ``G = U S V^T``,
    each ``S'`` in a band around 1 (see the module docstring). ``G`` (rows, cols) -> (rows, cols), in
    ``G``'s dtype; computed in ``dtype``. A zero ``G`` gives zeros."""
    if G.dim() != 2:
        raise ValueError(f"newton_schulz takes a matrix, got shape {tuple(G.shape)}")
    a, b, c = NS_COEFFICIENTS
    tall = G.size(0) > G.size(1)
    X = G.mT if tall else G  # (small, large): X X^T is the small side's Gram matrix
    X = X.float()
    X = (X / (X.norm() + eps)).to(dtype)  # Frobenius norm >= spectral norm: every singular value <= 1
    for _ in range(steps):
        A = X @ X.mT  # (small, small)
        X = a * X + (b * A + c * (A @ A)) @ X  # s -> a s + b s^3 + c s^5 on each singular value
    return (X.mT if tall else X).to(G.dtype)


def update_scale(shape: torch.Size) -> float:
    """Muon's shape-aware scale of the orthogonalized update: ``max(1, rows / cols) ** 0.5``."""
    rows, cols = shape
    return max(1.0, rows / cols) ** 0.5


class Muon(torch.optim.Optimizer):
    """Muon (see the module docstring) over 2-D parameters.

    Group keys: ``lr``, ``momentum``, ``nesterov``, ``weight_decay``, ``ns_steps``. State per parameter:
    ``momentum_buffer`` (the parameter's shape and dtype). ``ns_dtype``: the Newton–Schulz iteration's
    dtype, None for bf16 on CUDA and fp32 elsewhere. ``distributed``: share the iterations over the ranks
    of the default process group (see the module docstring).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        *,
        ns_dtype: torch.dtype | None = None,
        distributed: bool = False,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Muon: invalid learning rate {lr!r} (must be >= 0)")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon: momentum must be in [0, 1), got {momentum!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Muon: weight_decay must be >= 0, got {weight_decay!r}")
        if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 1:
            raise ValueError(f"Muon: ns_steps must be a positive integer, got {ns_steps!r}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, ns_steps=ns_steps)
        super().__init__(params, defaults)
        self.ns_dtype, self.distributed = ns_dtype, distributed

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        for p in param_group["params"]:
            if p.dim() != 2:
                raise ValueError(f"Muon updates 2-D matrices only, got a parameter of shape {tuple(p.shape)}; "
                                 "give biases, norm gains and other non-matrix tensors to another optimizer (AdamW)")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        world, rank = (dist.get_world_size(), dist.get_rank()) if self.distributed else (1, 0)
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            # the largest matrices first, dealt round the ranks: each rank orthogonalizes its share
            order = sorted(range(len(params)), key=lambda i: -params[i].numel())
            owner = {i: j % world for j, i in enumerate(order)}
            updates, pending = [], []
            for i, p in enumerate(params):
                g = p.grad
                if g.is_sparse:
                    raise ValueError("Muon does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(g)
                if owner[i] == rank:
                    m = g.add(buf, alpha=mu) if group["nesterov"] else buf
                    dtype = self.ns_dtype or (torch.bfloat16 if p.is_cuda else torch.float32)
                    o = newton_schulz(m, group["ns_steps"], dtype).to(p.dtype)
                else:
                    o = torch.empty_like(p)
                if world > 1:
                    pending.append(dist.broadcast(o, src=owner[i], async_op=True))
                updates.append(o)
            for work in pending:
                work.wait()
            for p, o in zip(params, updates):
                if wd:
                    p.mul_(1.0 - lr * wd)
                p.add_(o, alpha=-lr * update_scale(p.shape))
        return loss
