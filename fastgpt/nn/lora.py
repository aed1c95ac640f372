"""LoRA (Hu et al., arXiv 2106.09685): a frozen Linear plus a trainable low-rank update.

``LoRALinear(x) = x W^T + b + (alpha / r) * dropout(x) A^T B^T`` with A (r, in) and B (out, r). B
starts at zero, so an adapted model starts as its base. ``add_lora`` swaps the named projections of
a model for ``LoRALinear`` modules that keep the base's own ``weight`` and ``bias`` Parameters under
their old names (``blocks.0.attn.c_attn.weight``), so base state dicts still load into the adapted
model; the adapters are the parameters named ``*.lora_a`` / ``*.lora_b``. ``merge_lora`` folds
``(alpha / r) B A`` into each weight and puts plain Linears back: a model like any other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgpt.nn.dropout import Dropout

# the projections LoRA may adapt, by module-name suffix (fastgpt.nn.attention, fastgpt.nn.mlp)
TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "mlp.gate", "mlp.up", "mlp.down")
ADAPTER_SUFFIXES = (".lora_a", ".lora_b")


class LoRALinear(nn.Linear):
    """A Linear whose weight and bias are frozen and whose output adds a rank-``rank`` update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)  # the base's Parameters are taken over, none are allocated
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        w = base.weight
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear initializes its weight
        self.scale = alpha / rank
        self.lora_dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> (..., out)."""
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_a), self.lora_b)  # (..., r) -> (..., out)
        return F.linear(x, self.weight, self.bias) + self.scale * update

    def merged(self) -> nn.Linear:
        """A plain Linear computing what this module computes (in eval mode)."""
        w = self.weight
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device,
                           dtype=w.dtype)
        with torch.no_grad():
            linear.weight.copy_(w + self.scale * (self.lora_b.float() @ self.lora_a.float()).to(w.dtype))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.lora_a.shape[0]}, scale={self.scale:g}"


def add_lora(model: nn.Module, rank: int, alpha: float, dropout: float, targets: list[str]) -> list[str]:
    """Freeze every parameter of ``model`` and swap the Linears named ``*.{target}`` for LoRALinears
    (a module shared by several parents, tied across layers, becomes one LoRALinear shared alike).

    Returns the names of the modules adapted; a target matching no Linear raises ValueError.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    swapped: dict[int, LoRALinear] = {}
    names, matched = [], set()
    for name, module in list(model.named_modules(remove_duplicate=False)):
        target = next((t for t in targets if name == t or name.endswith("." + t)), None)
        if target is None or not isinstance(module, nn.Linear):
            continue
        matched.add(target)
        if id(module) not in swapped:
            swapped[id(module)] = module if isinstance(module, LoRALinear) else LoRALinear(module, rank, alpha,
                                                                                            dropout)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, swapped[id(module)])
        names.append(name)
    missing = [t for t in targets if t not in matched]
    if missing:
        raise ValueError(f"train.lora_targets: {', '.join(missing)} matches no Linear of this model "
                         f"(its projections: {', '.join(sorted(_linear_suffixes(model)))})")
    return names


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear of ``model`` by its merged Linear (in place); returns ``model``."""
    merged: dict[int, nn.Linear] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if isinstance(module, LoRALinear):
            if id(module) not in merged:
                merged[id(module)] = module.merged()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, merged[id(module)])
    return model


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """The adapters' tensors by parameter name (an adapter shared by tied layers once, by its first name)."""
    return {name: p.detach() for name, p in model.named_parameters() if name.endswith(ADAPTER_SUFFIXES)}


def _linear_suffixes(model: nn.Module) -> set[str]:
    return {".".join(name.split(".")[-2:]) for name, m in model.named_modules() if isinstance(m, nn.Linear)}
