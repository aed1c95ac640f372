"""The GPT model: ``GPTConfig`` and ``GPT``, readable top to bottom.

Token (+ position) embeddings -> ``n_layer`` pre-norm blocks (attention, feed-forward) -> final
norm -> language-model head. Every architectural choice is a ``GPTConfig`` field; sublayers live
in :mod:`fastgpt.nn`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgpt.nn.attention import KVCache, SelfAttention
from fastgpt.nn.mlp import ACTIVATIONS, FFN_TYPES, MLP, GatedMLP
from fastgpt.nn.norm import NORMS, AddNorm
from fastgpt.nn.rotary import Rotary, sincos_table
from fastgpt.ops._backend import CHOICES as BACKENDS

if TYPE_CHECKING:
    import os

    from fastgpt.tokenizers import Tokenizer

POS_ENCODINGS = ("learned", "sincos", "rope", "none")
INITS = ("gpt2", "xavier", "kaiming", "none")
INIT_MODES = ("fan_in", "fan_out")
INIT_NONLINEARITIES = ("relu", "leaky_relu", "linear", "tanh", "sigmoid")


@dataclass
class GPTConfig:
    vocab_size: int = 50304  # GPT-2's 50257 rounded up to a multiple of 64
    block_size: int = 1024  # longest sequence (context length)
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # None = n_head; fewer = grouped-query (1 = multi-query)
    n_embd: int = 768
    ffn_dim: int | None = None  # feed-forward hidden size; None = 4 * n_embd
    ffn_type: str = "gelu_mlp"  # gelu_mlp | swiglu (gated; its activation is `activation`)
    activation: str = "gelu"  # gelu | gelu_tanh | relu | leakyrelu | tanh | sigmoid | silu | none
    norm: str = "layer_norm"  # layer_norm | rms_norm | none
    norm_eps: float = 1e-5
    lm_head_norm: bool = True  # final norm before the language-model head
    pos_encoding: str = "learned"  # learned | sincos | rope | none
    rope_theta: float = 10000.0
    bias: bool = True  # biases in Linear layers and LayerNorms
    dropout: float = 0.0  # residual dropout after attention and feed-forward
    attn_dropout: float = 0.0  # dropout on attention probabilities (runs SDPA while training)
    embedding_dropout: float = 0.0
    lm_head_dropout: float = 0.0  # dropout on the final hidden state before the head
    causal: bool = True  # False = bidirectional attention
    tie_embeddings: bool = True  # lm_head shares the token embedding matrix
    tie_ffn_across_layers: bool = False  # every block uses one feed-forward module
    tie_attn_proj_across_layers: bool = False  # every block uses one set of attention projections
    init: str = "gpt2"  # gpt2 | xavier | kaiming | none (PyTorch's defaults)
    init_gain: float = 1.0  # scales the init's std (gpt2: 0.02 * gain) or gain (xavier)
    init_mode: str = "fan_in"  # kaiming: fan_in | fan_out
    init_nonlinearity: str = "relu"  # kaiming: relu | leaky_relu | linear | tanh | sigmoid
    attn_backend: str = "auto"  # auto | torch | triton | cuda
    norm_backend: str = "auto"  # auto | torch | triton | cuda

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.ffn_dim is None:
            self.ffn_dim = 4 * self.n_embd
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range or inconsistent."""
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "ffn_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        choices = {
            "ffn_type": FFN_TYPES, "activation": tuple(ACTIVATIONS), "norm": NORMS,
            "pos_encoding": POS_ENCODINGS, "init": INITS, "init_mode": INIT_MODES,
            "init_nonlinearity": INIT_NONLINEARITIES, "attn_backend": BACKENDS, "norm_backend": BACKENDS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("dropout", "attn_dropout", "embedding_dropout", "lm_head_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.norm_eps <= 0:
            raise ValueError(f"model.norm_eps must be positive, got {self.norm_eps!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"model.n_head={self.n_head} must be divisible by model.n_kv_head={self.n_kv_head}")
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise ValueError(f"model.pos_encoding='rope' needs an even head dim; n_embd/n_head = {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class Block(nn.Module):
    """Pre-norm transformer block; the residual add is fused into the next norm."""

    def __init__(self, config: GPTConfig, attn: SelfAttention, ffn: nn.Module) -> None:
        super().__init__()
        self.ln_1 = _add_norm(config)
        self.attn = attn
        self.ln_2 = _add_norm(config)
        self.mlp = ffn

    def forward(self, h: Tensor, delta: Tensor | None, cache: KVCache | None, layer: int) -> tuple[Tensor, Tensor]:
        """h: residual stream (B, T, C); delta: the previous sublayer's output, not yet added.

        Returns the new (h, delta): the caller (next block or final norm) adds the delta.
        """
        y, h = self.ln_1(h, delta)
        y, h = self.ln_2(h, self.attn(y, cache, layer))
        return h, self.mlp(y)


def _add_norm(config: GPTConfig) -> AddNorm:
    return AddNorm(config.norm, config.n_embd, config.norm_eps, config.bias, config.norm_backend)


def _attention(config: GPTConfig, rotary: Rotary | None) -> SelfAttention:
    return SelfAttention(config.n_embd, config.n_head, config.n_kv_head, config.bias, config.causal,
                         config.attn_dropout, config.dropout, config.attn_backend, rotary)


def _ffn(config: GPTConfig) -> nn.Module:
    cls = MLP if config.ffn_type == "gelu_mlp" else GatedMLP
    return cls(config.n_embd, config.ffn_dim, config.activation, config.bias, config.dropout)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos_encoding == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        if config.pos_encoding == "sincos":
            self.register_buffer("pos_table", sincos_table(config.block_size, config.n_embd), persistent=False)
        rotary = (Rotary(config.head_dim, config.block_size, config.rope_theta)
                  if config.pos_encoding == "rope" else None)
        self.emb_dropout = nn.Dropout(config.embedding_dropout)
        # tied sublayers are the same module object in every block (one set of parameters)
        shared_attn = _attention(config, rotary) if config.tie_attn_proj_across_layers else None
        shared_ffn = _ffn(config) if config.tie_ffn_across_layers else None
        self.blocks = nn.ModuleList(
            Block(config, shared_attn or _attention(config, rotary), shared_ffn or _ffn(config))
            for _ in range(config.n_layer)
        )
        self.ln_f = _add_norm(config) if config.lm_head_norm else None
        self.head_dropout = nn.Dropout(config.lm_head_dropout)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters()

    @classmethod
    def from_preset(cls, name: str, device: torch.device | str | None = None, **overrides: object) -> GPT:
        """Build a preset (``fastgpt.presets.PRESETS``) with field overrides.

        ``device="meta"`` builds the structure without allocating or initializing weights.
        """
        from fastgpt.presets import preset_config

        with torch.device(device or "cpu"):
            return cls(preset_config(name, **overrides))

    @classmethod
    def from_hf(cls, model_or_path: object, **overrides: object) -> GPT:
        """A GPT holding a Hugging Face GPT-2 or Llama model's weights: an instance, a local folder or a
        hub id (``fastgpt.hf.convert.from_hf``); ``overrides`` may set backends and dropouts."""
        from fastgpt.hf.convert import from_hf

        return from_hf(model_or_path, **overrides)

    def to_hf(self, path: str | os.PathLike, tokenizer: Tokenizer | None = None) -> list[str]:
        """Write a Hugging Face model folder (GPT2LMHeadModel or LlamaForCausalLM, plus the tokenizer's
        files where it has a HF equivalent); returns the file names (``fastgpt.hf.convert.to_hf``)."""
        from fastgpt.hf.convert import to_hf

        return to_hf(self, path, tokenizer)

    # ----------------------------------------------------------------------------- init
    def reset_parameters(self) -> None:
        """Initialize weights by ``config.init`` (a no-op on the meta device)."""
        cfg = self.config
        if cfg.init == "none" or self.wte.weight.is_meta:
            return
        std = 0.02 * cfg.init_gain
        for module in self.modules():
            if isinstance(module, nn.Linear):
                if cfg.init == "gpt2":
                    # residual projections shrink with depth so the residual stream's variance stays put
                    scale = 1 / math.sqrt(2 * cfg.n_layer) if getattr(module, "residual_proj", False) else 1.0
                    nn.init.normal_(module.weight, mean=0.0, std=std * scale)
                elif cfg.init == "xavier":
                    nn.init.xavier_normal_(module.weight, gain=cfg.init_gain)
                else:
                    nn.init.kaiming_normal_(module.weight, mode=cfg.init_mode, nonlinearity=cfg.init_nonlinearity)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)

    # -------------------------------------------------------------------------- forward
    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        loss_weights: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, vocab), loss or None).

        targets (B, T): next-token ids, -1 where ignored; loss_weights (B, T): optional per-token
        weights of the mean. With ``cache``, idx holds only the new tokens, placed after
        ``cache.pos`` positions, and the cache advances by T.
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size={self.config.block_size}")
        x = self.wte(idx)  # (B, T, C)
        if self.config.pos_encoding == "learned":
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))
        elif self.config.pos_encoding == "sincos":
            x = x + self.pos_table[start : start + T].to(x.dtype)
        h, delta = self.emb_dropout(x), None
        for layer, block in enumerate(self.blocks):
            h, delta = block(h, delta, cache, layer)
        if self.ln_f is not None:
            h, _ = self.ln_f(h, delta)
        else:
            h = h + delta
        if cache is not None:
            cache.pos += T
        logits = self.lm_head(self.head_dropout(h))  # (B, T, vocab)
        if targets is None:
            return logits, None
        return logits, self.loss(logits, targets, loss_weights)

    @staticmethod
    def loss(logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
        """Mean cross-entropy over targets != -1, optionally weighted per token (in fp32)."""
        flat = logits.reshape(-1, logits.size(-1)).float()
        if weights is None:
            return F.cross_entropy(flat, targets.reshape(-1), ignore_index=-1)
        per_token = F.cross_entropy(flat, targets.reshape(-1), ignore_index=-1, reduction="none")
        w = weights.reshape(-1).float() * (targets.reshape(-1) != -1)
        return (per_token * w).sum() / w.sum().clamp_min(1e-8)

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for ``batch`` sequences of up to ``max_len`` (block_size) tokens."""
        cfg = self.config
        p = self.wte.weight
        return KVCache(cfg.n_layer, batch, cfg.n_kv_head, max_len or cfg.block_size, cfg.head_dim, p.device, p.dtype)

    # -------------------------------------------------------------------------- summary
    def num_params(self, non_embedding: bool = False) -> int:
        """Number of distinct parameters (tied ones counted once); optionally minus position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.pos_encoding == "learned":
            n -= self.wpe.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6N for the weights + 12*L*T*d for attention (PaLM appendix B)."""
        cfg = self.config
        return 6 * self.num_params(non_embedding=True) + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd

    def summary(self) -> str:
        """A few readable lines: shape, options and parameter count."""
        cfg = self.config
        defaults = GPTConfig()
        changed = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                   if f.name not in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
                   and getattr(cfg, f.name) != getattr(defaults, f.name)}
        lines = [
            f"GPT: {cfg.n_layer} layers, {cfg.n_head} heads ({cfg.n_kv_head} kv), d={cfg.n_embd}, "
            f"ffn={cfg.ffn_dim} ({cfg.ffn_type}), context {cfg.block_size}, vocab {cfg.vocab_size}",
            f"parameters: {self.num_params():,} ({self.num_params(non_embedding=True):,} without position embeddings)",
        ]
        if changed:
            lines.append("options: " + ", ".join(f"{k}={v}" for k, v in changed.items()))
        return "\n".join(lines)
