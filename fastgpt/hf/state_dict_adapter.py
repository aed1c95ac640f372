"""fastgpt <-> Hugging Face weight names: one name-map table per architecture.

Each table row maps a fastgpt module (its ``.weight`` and maybe ``.bias``) to the HF module or
modules holding the same tensor: several HF tensors are concatenated on dim 0 (Llama's separate
q/k/v projections are fastgpt's fused ``c_attn``, split by rows [q heads | k heads | v heads]);
``transposed`` marks GPT-2's ``Conv1D``, which stores (in, out), the transpose of ``nn.Linear``.
``{i}`` in a layer row is the block index. ``bias`` says when a row has a bias: ``"always"``
(GPT-2, which has biases everywhere; a fastgpt model without them exports zeros, which computes the
same function), ``"model"`` (when ``model.bias``) or ``"never"``.

A new architecture is one more ``StateDictAdapter`` in ``ADAPTERS`` (and its config mapping in
``fastgpt.hf.convert``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from fastgpt.config import GPTConfig

# (fastgpt module, its HF modules concatenated on dim 0, HF stores it transposed, when it has a bias)
Row = tuple[str, tuple[str, ...], bool, str]


@dataclass(frozen=True)
class StateDictAdapter:
    architecture: str  # the transformers class: GPT2LMHeadModel | LlamaForCausalLM
    prefix: str  # what the HF body's names start with (absent when saved from GPT2Model / LlamaModel)
    before: tuple[Row, ...]  # rows before the blocks
    layer: tuple[Row, ...]  # rows of block {i}: ours under "blocks.{i}.", theirs under `layer_prefix`
    layer_prefix: str
    after: tuple[Row, ...]  # rows after the blocks

    def names(self, config: GPTConfig) -> list[tuple[str, tuple[str, ...], bool]]:
        """(fastgpt tensor, its HF tensors concatenated on dim 0, whether HF stores it transposed), for all weights."""
        rows = [*self.before]
        for i in range(config.n_layer):
            rows += [(f"blocks.{i}.{ours}", tuple(self.layer_prefix.format(i=i) + t for t in theirs), transposed, bias)
                     for ours, theirs, transposed, bias in self.layer]
        rows += self.after
        table = []
        for ours, theirs, transposed, bias in rows:
            table.append((f"{ours}.weight", tuple(f"{t}.weight" for t in theirs), transposed))
            if bias == "always" or (bias == "model" and config.bias):
                table.append((f"{ours}.bias", tuple(f"{t}.bias" for t in theirs), False))
        if not config.tie_embeddings:
            table.append(("lm_head.weight", ("lm_head.weight",), False))
        return table


GPT2 = StateDictAdapter(
    architecture="GPT2LMHeadModel",
    prefix="transformer.",
    before=(("wte", ("transformer.wte",), False, "never"), ("wpe", ("transformer.wpe",), False, "never")),
    layer_prefix="transformer.h.{i}.",
    layer=(
        ("ln_1.norm", ("ln_1",), False, "always"),
        ("attn.c_attn", ("attn.c_attn",), True, "always"),
        ("attn.c_proj", ("attn.c_proj",), True, "always"),
        ("ln_2.norm", ("ln_2",), False, "always"),
        ("mlp.c_fc", ("mlp.c_fc",), True, "always"),
        ("mlp.c_proj", ("mlp.c_proj",), True, "always"),
    ),
    after=(("ln_f.norm", ("transformer.ln_f",), False, "always"),),
)

LLAMA = StateDictAdapter(
    architecture="LlamaForCausalLM",
    prefix="model.",
    before=(("wte", ("model.embed_tokens",), False, "never"),),
    layer_prefix="model.layers.{i}.",
    layer=(
        ("ln_1.norm", ("input_layernorm",), False, "never"),
        ("ln_2.norm", ("post_attention_layernorm",), False, "never"),
        ("attn.c_attn", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), False, "model"),
        ("attn.c_proj", ("self_attn.o_proj",), False, "model"),
        ("mlp.gate", ("mlp.gate_proj",), False, "model"),
        ("mlp.up", ("mlp.up_proj",), False, "model"),
        ("mlp.down", ("mlp.down_proj",), False, "model"),
    ),
    after=(("ln_f.norm", ("model.norm",), False, "never"),),
)

ADAPTERS = {a.architecture: a for a in (GPT2, LLAMA)}
_BUFFERS = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")  # in old HF checkpoints, not weights


def to_hf_state(adapter: StateDictAdapter, config: GPTConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """fastgpt's ``state`` under HF names and layouts (tied weights once, as HF saves them)."""
    qkv = [config.n_head * config.head_dim, config.n_kv_head * config.head_dim, config.n_kv_head * config.head_dim]
    out = {}
    for ours, theirs, transposed in adapter.names(config):
        tensor = state.get(ours)
        if tensor is None:  # a bias this model lacks: GPT-2 always has one, and zero computes the same
            weight = state[ours.removesuffix("bias") + "weight"]
            tensor = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        parts = tensor.split(qkv) if len(theirs) == 3 else (tensor,)
        for name, part in zip(theirs, parts):
            out[name] = (part.t() if transposed else part).detach().cpu().contiguous().clone()
    return out


def from_hf_state(adapter: StateDictAdapter, config: GPTConfig, hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """fastgpt's state_dict from HF weights; missing or unplaceable weights raise ValueError."""
    if not any(k.startswith(adapter.prefix) for k in hf_state):  # saved from the bare GPT2Model / LlamaModel
        hf_state = {k if k.startswith("lm_head.") else adapter.prefix + k: v for k, v in hf_state.items()}
    out, used = {}, set()
    for ours, theirs, transposed in adapter.names(config):
        missing = [name for name in theirs if name not in hf_state]
        if missing:
            raise ValueError(f"the Hugging Face weights lack {missing[0]}")
        parts = [hf_state[name].t() if transposed else hf_state[name] for name in theirs]
        out[ours] = torch.cat(parts) if len(parts) > 1 else parts[0]
        used.update(theirs)
    if config.tie_embeddings:
        out["lm_head.weight"] = out["wte.weight"]
        used.add("lm_head.weight")
    extra = sorted(k for k in hf_state if k not in used and not k.endswith(_BUFFERS))
    if extra:
        raise ValueError(f"the Hugging Face weights hold {extra[0]} (and {len(extra) - 1} more) that the "
                         f"{adapter.architecture} layout has no place for")
    return out
