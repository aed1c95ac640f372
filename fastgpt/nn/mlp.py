"""Feed-forward sublayers: the GPT-2 MLP and the gated (SwiGLU-style) MLP."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastgpt.nn.dropout import Dropout


class ReLUSquared(nn.Module):
    """relu(x)^2 (So et al., Primer, arXiv 2109.08668; modded-nanogpt's MLP); transformers calls it relu2."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x).square()


ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "relu2": ReLUSquared,
    "leakyrelu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "none": nn.Identity,
}
FFN_TYPES = ("gelu_mlp", "swiglu")


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """x -> c_proj(act(c_fc(x))), GPT-2's feed-forward (``act`` need not be GELU)."""

    def __init__(self, dim: int, hidden: int, *, activation: str = "gelu", bias: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden, bias=bias)
        self.act = make_activation(activation)
        self.c_proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GatedMLP(nn.Module):
    """x -> down(act(gate(x)) * up(x)): SwiGLU with act=silu (GeGLU with gelu, ReGLU-squared with relu2)."""

    def __init__(self, dim: int, hidden: int, *, activation: str = "silu", bias: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=bias)
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.act = make_activation(activation)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(self.act(self.gate(x)) * self.up(x)))
