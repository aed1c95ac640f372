"""The GPT model, readable top to bottom (its configuration, ``GPTConfig``, is in ``fastgpt.config``).

Token (+ position) embeddings -> ``n_layer`` pre-norm blocks (attention, feed-forward) -> final
norm -> language-model head. Every architectural choice is a ``GPTConfig`` field; sublayers live
in :mod:`fastgpt.nn`. Sampling (``sample_next``, ``GPT.stream``, ``GPT.generate``) is here too, so
that everything that generates (``fastgpt.generate``, training samples, eval) imports it from the
model's side.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgpt.config import GPTConfig
from fastgpt.nn.attention import KVCache, SelfAttention
from fastgpt.nn.dropout import Dropout
from fastgpt.nn.mlp import MLP, GatedMLP
from fastgpt.nn.norm import AddNorm
from fastgpt.nn.positions import POSITION_ENCODINGS, PositionEncoding

if TYPE_CHECKING:
    import os

    from fastgpt.tokenizers import Tokenizer

# the Linear layers whose output is added to the residual stream (scaled at gpt2 init), by module name
RESIDUAL_PROJECTIONS = (".attn.c_proj", ".mlp.c_proj", ".mlp.down")
MIN_TEMPERATURE = 1e-6  # below it sampling is the argmax (and dividing by it would overflow float32)


class Block(nn.Module):
    """Pre-norm transformer block; the residual add is fused into the next norm."""

    def __init__(self, config: GPTConfig, attn: SelfAttention, ffn: nn.Module) -> None:
        super().__init__()
        self.ln_1 = _add_norm(config)
        self.attn = attn
        self.ln_2 = _add_norm(config)
        self.mlp = ffn

    def forward(self, h: Tensor, delta: Tensor | None, cache: KVCache | None = None) -> tuple[Tensor, Tensor]:
        """h: residual stream (B, T, C); delta: the previous sublayer's output, not yet added;
        cache: this block's KV cache (its own even when the attention module is tied across layers).

        Returns the new (h, delta): the caller (next block or final norm) adds the delta.
        """
        y, h = self.ln_1(h, delta)
        y, h = self.ln_2(h, self.attn(y, cache))
        return h, self.mlp(y)


def _add_norm(config: GPTConfig) -> AddNorm:
    return AddNorm(config.norm, config.n_embd, eps=config.norm_eps, bias=config.bias, backend=config.norm_backend)


def _attention(config: GPTConfig, positions: PositionEncoding) -> SelfAttention:
    return SelfAttention(config.n_embd, config.n_head, n_kv_head=config.n_kv_head, bias=config.bias,
                         causal=config.causal, attn_dropout=config.attn_dropout, dropout=config.dropout,
                         backend=config.attn_backend, rotate=positions.rotate, qk_norm=config.qk_norm,
                         norm_eps=config.norm_eps, norm_backend=config.norm_backend)


def _ffn(config: GPTConfig) -> nn.Module:
    cls = MLP if config.ffn_type == "gelu_mlp" else GatedMLP
    return cls(config.n_embd, config.ffn_dim, activation=config.activation, bias=config.bias, dropout=config.dropout)


def check_token_ids(idx: Tensor, vocab_size: int) -> None:
    """ValueError naming the first id of ``idx`` outside ``[0, vocab_size)`` (reads the tensor: a sync on GPUs)."""
    bad = (idx < 0) | (idx >= vocab_size)
    if bad.any():
        first = int(idx[bad][0])
        raise ValueError(f"token id {first} is out of range for this model's vocabulary of {vocab_size} "
                         f"(ids 0..{vocab_size - 1}): were the ids made by another tokenizer?")


def softcap(logits: Tensor, cap: float) -> Tensor:
    """``cap * tanh(logits / cap)``: smooth, about the identity for |logits| << cap, inside (-cap, cap)
    (Gemma-2's final-logit softcapping; modded-nanogpt). Any shape."""
    return cap * torch.tanh(logits / cap)


def sample_next(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
                greedy: bool, generator: torch.Generator | None) -> Tensor:
    """Pick the next token from logits (B, vocab) -> (B, 1)."""
    if greedy or temperature < MIN_TEMPERATURE:
        return logits.argmax(dim=-1, keepdim=True)
    # the best token at 0 before dividing: a tiny temperature then gives -inf, never inf - inf = nan
    logits = logits.float()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop_sorted[:, 0] = False  # the most likely token always stays (a top_p below float32's range drops all)
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        # the position encoding: adds to the token embeddings and/or rotates every layer's q, k.
        # Named wpe for every kind so learned positions keep GPT-2's state-dict key wpe.weight
        self.wpe = POSITION_ENCODINGS[config.pos_encoding](config)
        self.emb_dropout = Dropout(config.embedding_dropout)
        # tied sublayers are the same module object in every block (one set of parameters)
        shared_attn = _attention(config, self.wpe) if config.tie_attn_proj_across_layers else None
        shared_ffn = _ffn(config) if config.tie_ffn_across_layers else None
        self.blocks = nn.ModuleList(
            Block(config, shared_attn or _attention(config, self.wpe), shared_ffn or _ffn(config))
            for _ in range(config.n_layer)
        )
        self.ln_f = _add_norm(config) if config.lm_head_norm else None
        self.head_dropout = Dropout(config.lm_head_dropout)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters()

    @classmethod
    def from_preset(cls, name: str, device: torch.device | str | None = None, **overrides: object) -> GPT:
        """Build a preset (``fastgpt.presets.PRESETS``) with field overrides.

        ``device="meta"`` builds the structure without allocating or initializing weights.
        """
        from fastgpt.presets import preset_fields

        with torch.device(device or "cpu"):
            return cls(GPTConfig(**{**preset_fields(name), **overrides}))

    @classmethod
    def from_hf(cls, model_or_path: object, **overrides: object) -> GPT:
        """A GPT (float32, eval mode, CPU) holding a Hugging Face GPT-2 or Llama model's weights.

        ``model_or_path``: a ``GPT2LMHeadModel`` / ``LlamaForCausalLM`` instance, a local folder with
        config.json and model.safetensors (or sharded safetensors, or pytorch_model.bin), or a hub
        id (downloaded; needs network). ``overrides`` may set backends and dropouts
        (``fastgpt.hf.convert.RUNTIME_FIELDS``).
        """
        from fastgpt.hf.convert import read_hf

        config, state = read_hf(model_or_path, **overrides)
        model = cls(config)
        model.load_state_dict(state)
        return model.eval()

    def to_hf(self, path: str | os.PathLike, tokenizer: Tokenizer | None = None) -> list[str]:
        """Write a Hugging Face model folder (GPT2LMHeadModel or LlamaForCausalLM, plus the tokenizer's
        files where it has a HF equivalent); returns the file names (``fastgpt.hf.convert.write_hf``)."""
        from fastgpt.hf.convert import write_hf

        return write_hf(self, path, tokenizer)

    # ----------------------------------------------------------------------------- init
    def reset_parameters(self) -> None:
        """Initialize weights by ``config.init``, then zero the output projections under
        ``config.zero_init_proj`` (a no-op on the meta device)."""
        cfg = self.config
        if self.wte.weight.is_meta:
            return
        if cfg.init != "none":
            self._init_scheme()
        if cfg.zero_init_proj:
            # after the scheme, whatever it drew: each block then starts as the identity on the residual
            # stream (modded-nanogpt); the projections' gradient is not zero (their inputs are not)
            for name, module in self.named_modules():
                if isinstance(module, nn.Linear) and name.endswith(RESIDUAL_PROJECTIONS):
                    nn.init.zeros_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def _init_scheme(self) -> None:
        cfg = self.config
        std = 0.02 * cfg.init_gain
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if cfg.init == "gpt2":
                    # residual projections shrink with depth so the residual stream's variance stays put
                    scale = 1 / math.sqrt(2 * cfg.n_layer) if name.endswith(RESIDUAL_PROJECTIONS) else 1.0
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
        cache: list[KVCache] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, vocab), loss or None).

        targets (B, T): next-token ids, -1 where ignored; loss_weights (B, T): optional per-token
        weights of the mean. ``cache`` (from ``new_cache``) holds one KVCache per block: idx then
        holds only the new tokens, placed after the ``pos`` positions cached, and every layer's
        cache advances by T.
        """
        B, T = idx.shape
        if idx.device.type == "cpu" and not torch.compiler.is_compiling():  # a GPU fails in its kernel, unnamed
            check_token_ids(idx, self.config.vocab_size)
        start = cache[0].pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size={self.config.block_size}")
        x = self.wpe.embed(self.wte(idx), start)  # (B, T, C)
        h, delta = self.emb_dropout(x), None
        for block, block_cache in zip(self.blocks, cache if cache is not None else [None] * len(self.blocks)):
            h, delta = block(h, delta, block_cache)
        if self.ln_f is not None:
            h, _ = self.ln_f(h, delta)
        else:
            h = h + delta
        logits = self.lm_head(self.head_dropout(h))  # (B, T, vocab)
        if self.config.logit_softcap is not None:
            # here, so that the loss, every eval and generation see the same capped logits
            logits = softcap(logits, self.config.logit_softcap)
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

    def new_cache(self, batch: int, max_len: int | None = None) -> list[KVCache]:
        """Empty KV caches, one per block, for ``batch`` sequences of up to ``max_len`` (block_size) tokens.

        The caches are not state of the model or of its attention modules: with
        ``tie_attn_proj_across_layers`` one SelfAttention serves every block, and each block hands
        it the block's own cache. Pass the list as ``forward``'s ``cache``.
        """
        cfg = self.config
        p = self.wte.weight
        return [KVCache(batch, cfg.n_kv_head, max_len or cfg.block_size, cfg.head_dim, p.device, p.dtype)
                for _ in self.blocks]

    # ----------------------------------------------------------------------- generation
    @torch.no_grad()
    def stream(self, idx: Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, greedy: bool = False, use_cache: bool = True,
               generator: torch.Generator | None = None) -> Iterator[Tensor]:
        """Yield ``max_new_tokens`` next tokens (B, 1), one step at a time, continuing ``idx`` (B, T).

        The context is the last ``block_size`` tokens (a longer prompt is cropped from the left).
        With ``use_cache`` the prompt is encoded once and each step feeds only the new token; once the
        sequence outgrows block_size every step recomputes its window, so the tokens are the same as
        without the cache. The model's mode (train/eval) is left as it is.
        """
        if idx.ndim != 2 or idx.size(1) == 0:
            raise ValueError(f"the prompt must be (B, T) token ids with T >= 1, got shape {tuple(idx.shape)}")
        check_token_ids(idx, self.config.vocab_size)
        block = self.config.block_size
        tokens, cache = idx.to(self.wte.weight.device), None
        for _ in range(max_new_tokens):
            if use_cache and cache is not None and cache[0].pos < block:
                feed = tokens[:, -1:]
            else:
                cache = self.new_cache(batch=tokens.size(0)) if use_cache else None
                feed = tokens[:, -block:]
            logits, _ = self(feed, cache=cache)
            nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, greedy, generator)  # (B, 1)
            tokens = torch.cat([tokens, nxt], dim=1)
            yield nxt

    @torch.no_grad()
    def generate(self, prompt: Tensor | Sequence[int] | str, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, greedy: bool = False,
                 tokenizer: Tokenizer | None = None, eot_id: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> Tensor | list[int] | str:
        """The prompt followed by up to ``max_new_tokens`` sampled tokens, in the prompt's form.

        ``prompt``: token ids (B, T) or (T,) -> a tensor of the same rank; a list of ids -> a list;
        text -> text (needs ``tokenizer``, whose eot is then the stop token). Generation stops at
        ``eot_id`` (once every row has produced it; a finished row is filled with eot), and a list or
        text leaves the eot out. Runs in eval mode (the model's mode is restored afterwards).
        """
        if isinstance(prompt, str):
            if tokenizer is None:
                raise ValueError("a text prompt needs tokenizer= (e.g. the one fastgpt.load returns)")
            ids = tokenizer.encode(prompt)
            out = self.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                greedy=greedy, eot_id=tokenizer.eot_id if eot_id is None else eot_id,
                                use_cache=use_cache, generator=generator)
            return prompt + tokenizer.decode(out[len(ids):])
        idx = torch.as_tensor(prompt, dtype=torch.long)
        if idx.ndim == 1:
            idx = idx.unsqueeze(0)
        done = torch.zeros(idx.size(0), 1, dtype=torch.bool, device=self.wte.weight.device)  # rows past their eot
        was_training = self.training
        self.eval()
        try:
            new = []
            for nxt in self.stream(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                   greedy=greedy, use_cache=use_cache, generator=generator):
                if eot_id is not None:
                    nxt = nxt.masked_fill(done, eot_id)
                    done |= nxt == eot_id
                new.append(nxt)
                if eot_id is not None and bool(done.all()):
                    break
        finally:
            self.train(was_training)
        out = torch.cat([idx.to(self.wte.weight.device), *new], dim=1)
        if isinstance(prompt, Tensor):
            return out if prompt.ndim == 2 else out[0]
        ids = out[0].tolist()
        return ids[: len(ids) - 1] if eot_id is not None and new and ids[-1] == eot_id else ids

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
