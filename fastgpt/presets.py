"""Named model configurations: ``GPT.from_preset(name)``, or ``model.preset=NAME`` in a run config.

The GPT-2 presets match Hugging Face's ``gpt2*`` checkpoints exactly (same shapes and parameter
counts, tanh-approximated GELU), so their weights load with ``GPT.from_hf``.
"""

from __future__ import annotations

import difflib

from fastgpt.messages import cut

_GPT2 = dict(vocab_size=50257, block_size=1024, activation="gelu_tanh", bias=True, tie_embeddings=True)

PRESETS: dict[str, dict] = {
    # OpenAI GPT-2 family: 124M, 355M, 774M, 1.56B parameters
    "gpt2": dict(_GPT2, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(_GPT2, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(_GPT2, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(_GPT2, n_layer=48, n_head=25, n_embd=1600),
    # nanoGPT's character-level Shakespeare model (6 x 6 x 384, context 256)
    "shakespeare-char": dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384,
                             dropout=0.2, bias=False),
    # small GPT-2-style models for laptops and teaching
    "toygpt-small": dict(vocab_size=50304, block_size=128, n_layer=4, n_head=4, n_embd=128),
    "toygpt-medium": dict(vocab_size=50304, block_size=256, n_layer=6, n_head=6, n_embd=384),
    "toygpt-large": dict(vocab_size=50304, block_size=512, n_layer=8, n_head=8, n_embd=512),
    # a very small model for short texts such as tweets
    "babyjoey": dict(vocab_size=8192, block_size=128, n_layer=4, n_head=4, n_embd=256, dropout=0.1),
    # a modern (Llama-style) small model for studying architecture choices
    "gpt-study": dict(vocab_size=32768, block_size=512, n_layer=8, n_head=8, n_kv_head=2, n_embd=512,
                      ffn_dim=1408, ffn_type="swiglu", activation="silu", norm="rms_norm",
                      pos_encoding="rope", bias=False, tie_embeddings=False),
}


def preset_fields(name: str) -> dict:
    """The preset's GPTConfig fields (a copy); unknown names raise ValueError."""
    if name not in PRESETS:
        near = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ValueError(f"unknown preset {cut(name)}{hint}; available: {', '.join(PRESETS)}")
    return dict(PRESETS[name])
