"""Drop-in modules built on fastgpt's ops."""

from fastgpt.nn.attention import KVCache, SelfAttention
from fastgpt.nn.mlp import MLP, GatedMLP
from fastgpt.nn.rms_norm import RMSNorm
from fastgpt.nn.rotary import Rotary

__all__ = ["MLP", "GatedMLP", "KVCache", "RMSNorm", "Rotary", "SelfAttention"]
