"""Drop-in modules built on fastgpt's ops."""

from fastgpt.nn.attention import KVCache, SelfAttention
from fastgpt.nn.mlp import MLP, GatedMLP
from fastgpt.nn.positions import (
    POSITION_ENCODINGS,
    LearnedPositions,
    NoPositions,
    PositionEncoding,
    RotaryPositions,
    SinCosPositions,
)
from fastgpt.nn.rms_norm import RMSNorm

__all__ = ["MLP", "POSITION_ENCODINGS", "GatedMLP", "KVCache", "LearnedPositions", "NoPositions", "PositionEncoding",
           "RMSNorm", "RotaryPositions", "SelfAttention", "SinCosPositions"]
