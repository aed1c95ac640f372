"""Hugging Face bridge: ``GPT`` <-> ``GPT2LMHeadModel`` and ``LlamaForCausalLM`` (tokenizers: ``tokenizer_files``).

Two layouts cross over, in both directions, with identical logits:

* GPT-2: learned positions, LayerNorm, the GPT-2 MLP, full multi-head attention, biases
  (a model without biases exports them as zeros, which computes the same function);
* Llama: RoPE, RMSNorm, a gated MLP (SwiGLU; GeGLU with a GELU activation), grouped-query
  attention, biases on every Linear layer or on none.

Anything else fastgpt can express but these classes cannot (sinusoidal or no positions,
bidirectional attention, weights tied across layers, no final norm, dropout where the HF model
has none, QK-norm, a logit softcap, ...) is refused with a ValueError naming the option
(``model.zero_init_proj`` is only an init and exports as it is; ReLU² is transformers' ``relu2``).
The weight names of each layout are tables in ``fastgpt.hf.state_dict_adapter``; this module maps
the configs and reads and writes folders.

``transformers`` is imported when a function needs it (``pip install 'fastgpt[hf]'``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from fastgpt.config import GPTConfig
from fastgpt.hf.state_dict_adapter import ADAPTERS, from_hf_state, to_hf_state
from fastgpt.hf.tokenizer_files import transformers_tokenizer

if TYPE_CHECKING:
    from fastgpt.model import GPT
    from fastgpt.tokenizers import Tokenizer

# GPTConfig fields that GPT.from_hf may override: they do not change the weights
RUNTIME_FIELDS = ("attn_backend", "norm_backend", "dropout", "attn_dropout", "embedding_dropout", "lm_head_dropout")
# HF activation names (transformers' ACT2FN) -> fastgpt's; gelu_new and gelu_fast are the tanh approximation
FROM_HF_ACTIVATION = {
    "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu",
    "relu": "relu", "relu2": "relu2", "leaky_relu": "leakyrelu", "tanh": "tanh", "sigmoid": "sigmoid", "silu": "silu",
    "swish": "silu", "linear": "none",
}  # fmt: skip
TO_HF_ACTIVATION = {
    "gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "relu2": "relu2", "leakyrelu": "leaky_relu",
    "tanh": "tanh", "sigmoid": "sigmoid", "silu": "silu", "none": "linear",
}  # fmt: skip


# ------------------------------------------------------------------------------- configs
def config_from_hf(hf_config: Any, **overrides: Any) -> GPTConfig:
    """The GPTConfig of a transformers GPT-2 or Llama config; ``overrides`` may set RUNTIME_FIELDS."""
    bad = sorted(set(overrides) - set(RUNTIME_FIELDS))
    if bad:
        raise ValueError(f"from_hf cannot override {', '.join(bad)} (fixed by the weights); "
                         f"allowed: {', '.join(RUNTIME_FIELDS)}")
    kind = getattr(hf_config, "model_type", None)
    if kind == "gpt2":
        fields = _gpt2_fields(hf_config)
    elif kind == "llama":
        fields = _llama_fields(hf_config)
    else:
        raise ValueError(f"Hugging Face model_type {kind!r} is not supported; supported: gpt2, llama")
    return GPTConfig(**{**fields, **overrides})


def _activation(name: str) -> str:
    if name not in FROM_HF_ACTIVATION:
        raise ValueError(f"activation {name!r} has no fastgpt equivalent; supported: {', '.join(FROM_HF_ACTIVATION)}")
    return FROM_HF_ACTIVATION[name]


def _gpt2_fields(c: Any) -> dict[str, Any]:
    for flag in ("add_cross_attention", "scale_attn_by_inverse_layer_idx"):
        if getattr(c, flag, False):
            raise ValueError(f"GPT-2 option {flag}=True has no fastgpt equivalent")
    if not getattr(c, "scale_attn_weights", True):
        raise ValueError("GPT-2 option scale_attn_weights=False has no fastgpt equivalent")
    return dict(
        vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
        ffn_dim=c.n_inner or 4 * c.n_embd, ffn_type="gelu_mlp", activation=_activation(c.activation_function),
        norm="layer_norm", norm_eps=c.layer_norm_epsilon, pos_encoding="learned", bias=True,
        dropout=c.resid_pdrop, attn_dropout=c.attn_pdrop, embedding_dropout=c.embd_pdrop,
        tie_embeddings=bool(c.tie_word_embeddings),
    )  # fmt: skip


def _llama_fields(c: Any) -> dict[str, Any]:
    # transformers 5 keeps RoPE settings in rope_parameters, 4.x in rope_theta and rope_scaling
    rope = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"Llama RoPE scaling {rope_type!r} has no fastgpt equivalent (plain RoPE only)")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if head_dim * c.num_attention_heads != c.hidden_size:
        raise ValueError(f"Llama head_dim={head_dim} with {c.num_attention_heads} heads != hidden_size="
                         f"{c.hidden_size}; fastgpt needs head_dim = n_embd / n_head")
    attention_bias, mlp_bias = bool(getattr(c, "attention_bias", False)), bool(getattr(c, "mlp_bias", False))
    if attention_bias != mlp_bias:
        raise ValueError(f"Llama attention_bias={attention_bias} with mlp_bias={mlp_bias}: fastgpt's model.bias "
                         "puts biases on all Linear layers or none")
    return dict(
        vocab_size=c.vocab_size, block_size=c.max_position_embeddings, n_layer=c.num_hidden_layers,
        n_head=c.num_attention_heads, n_kv_head=c.num_key_value_heads or c.num_attention_heads,
        n_embd=c.hidden_size, ffn_dim=c.intermediate_size, ffn_type="swiglu", activation=_activation(c.hidden_act),
        norm="rms_norm", norm_eps=c.rms_norm_eps, pos_encoding="rope",
        rope_theta=float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))), bias=attention_bias,
        dropout=0.0, attn_dropout=float(c.attention_dropout), embedding_dropout=0.0,
        tie_embeddings=bool(c.tie_word_embeddings),
    )  # fmt: skip


def hf_architecture(config: GPTConfig) -> str:
    """``GPT2LMHeadModel`` or ``LlamaForCausalLM``; ValueError naming the first option neither can express."""
    refusals = [
        (not config.causal, "model.causal=False: Hugging Face causal LMs attend causally"),
        (config.tie_ffn_across_layers, "model.tie_ffn_across_layers=True: HF models have one MLP per layer"),
        (config.tie_attn_proj_across_layers,
         "model.tie_attn_proj_across_layers=True: HF models have one attention per layer"),
        (config.norm == "none", "model.norm='none': GPT-2 and Llama normalize before every sublayer"),
        (not config.lm_head_norm, "model.lm_head_norm=False: GPT-2 and Llama normalize before the head"),
        (config.lm_head_dropout > 0, "model.lm_head_dropout>0: GPT-2 and Llama have no dropout before the head"),
        (config.qk_norm, "model.qk_norm=True: GPT-2 and Llama do not normalize q and k (Qwen3 does; no exporter "
                         "for it)"),
        (config.logit_softcap is not None,
         f"model.logit_softcap={config.logit_softcap}: GPT-2 and Llama do not cap the logits (Gemma-2 does; no "
         "exporter for it)"),
        (config.pos_encoding not in ("learned", "rope"),
         f"model.pos_encoding={config.pos_encoding!r}: GPT-2 has learned positions, Llama RoPE"),
    ]
    if config.pos_encoding == "learned":
        refusals += [
            (config.norm != "layer_norm", f"model.norm={config.norm!r} with learned positions: GPT-2 uses LayerNorm"),
            (config.ffn_type != "gelu_mlp", f"model.ffn_type={config.ffn_type!r} with learned positions: "
                                            "GPT-2 has the plain MLP"),
            (config.n_kv_head != config.n_head,
             f"model.n_kv_head={config.n_kv_head} with learned positions: GPT-2 has no grouped-query attention"),
        ]  # fmt: skip
    else:
        refusals += [
            (config.norm != "rms_norm", f"model.norm={config.norm!r} with RoPE: Llama uses RMSNorm"),
            (config.ffn_type != "swiglu", f"model.ffn_type={config.ffn_type!r} with RoPE: Llama has a gated MLP"),
            (config.dropout > 0, "model.dropout>0 with RoPE: Llama has no residual dropout"),
            (config.embedding_dropout > 0, "model.embedding_dropout>0 with RoPE: Llama has no embedding dropout"),
        ]
    for refused, reason in refusals:
        if refused:
            raise ValueError(f"cannot convert to Hugging Face: {reason}")
    return "GPT2LMHeadModel" if config.pos_encoding == "learned" else "LlamaForCausalLM"


def hf_config(config: GPTConfig, eot_id: int | None = None) -> Any:
    """The transformers config (GPT2Config or LlamaConfig) of ``config``; see ``hf_architecture``."""
    from transformers import GPT2Config, LlamaConfig

    arch = hf_architecture(config)
    special = dict(bos_token_id=eot_id, eos_token_id=eot_id, architectures=[arch])
    if arch == "GPT2LMHeadModel":
        return GPT2Config(
            vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
            n_layer=config.n_layer, n_head=config.n_head, n_inner=config.ffn_dim,
            activation_function=TO_HF_ACTIVATION[config.activation], resid_pdrop=config.dropout,
            embd_pdrop=config.embedding_dropout, attn_pdrop=config.attn_dropout, layer_norm_epsilon=config.norm_eps,
            tie_word_embeddings=config.tie_embeddings, **special,
        )  # fmt: skip
    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.n_embd, intermediate_size=config.ffn_dim,
        num_hidden_layers=config.n_layer, num_attention_heads=config.n_head, num_key_value_heads=config.n_kv_head,
        head_dim=config.head_dim, hidden_act=TO_HF_ACTIVATION[config.activation],
        max_position_embeddings=config.block_size, rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta,
        attention_bias=config.bias, mlp_bias=config.bias, attention_dropout=config.attn_dropout,
        tie_word_embeddings=config.tie_embeddings, **special,
    )  # fmt: skip


# ---------------------------------------------------------------------------- load, save
def read_hf(model_or_path: Any, **overrides: Any) -> tuple[GPTConfig, dict[str, Tensor]]:
    """The GPTConfig and fastgpt state_dict of a HF GPT-2 or Llama model (``GPT.from_hf`` builds the GPT).

    ``model_or_path``: a ``GPT2LMHeadModel`` / ``LlamaForCausalLM`` instance, a local folder with
    config.json and model.safetensors (or sharded safetensors, or pytorch_model.bin), or a hub
    id (downloaded; needs network). ``overrides`` set RUNTIME_FIELDS (backends, dropouts).
    """
    if isinstance(model_or_path, str | os.PathLike):
        hf_cfg, hf_state = _read_hf(str(model_or_path))
    else:
        hf_cfg, hf_state = model_or_path.config, model_or_path.state_dict()
    config = config_from_hf(hf_cfg, **overrides)
    return config, from_hf_state(ADAPTERS[hf_architecture(config)], config, hf_state)


def hf_state_dict(model: GPT) -> dict[str, Tensor]:
    """``model``'s weights under HF names and layouts (tied weights once, as HF saves them)."""
    return to_hf_state(ADAPTERS[hf_architecture(model.config)], model.config, model.state_dict())


def write_hf(model: GPT, path: str | os.PathLike, tokenizer: Tokenizer | None = None) -> list[str]:
    """Write a HF model folder that ``AutoModelForCausalLM.from_pretrained`` loads; return its file names.

    config.json and model.safetensors, plus the tokenizer files when ``tokenizer`` has a HF
    equivalent (see ``fastgpt.hf.tokenizer_files``). Options HF cannot express raise ValueError first.
    """
    config = hf_config(model.config, tokenizer.eot_id if tokenizer is not None else None)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(path)
    save_file(hf_state_dict(model), str(path / "model.safetensors"), metadata={"format": "pt"})
    files = ["config.json", "model.safetensors"]
    hf_tok = transformers_tokenizer(tokenizer, model.config.block_size) if tokenizer is not None else None
    if hf_tok is not None:
        files += sorted({Path(f).name for f in hf_tok.save_pretrained(str(path))})
    return files


def _read_hf(name: str) -> tuple[Any, dict[str, Tensor]]:
    from transformers import AutoConfig

    path = Path(name).expanduser()
    if not path.is_dir():
        if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise FileNotFoundError(f"{name!r} is not a folder holding a Hugging Face model (config.json + weights)")
        path = _download(name)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{str(path)!r} has no config.json")
    try:  # never the folder's own code: a config asking for it (auto_map) is refused
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except RecursionError:  # json's decoder on deeply nested arrays or objects
        raise ValueError(f"{str(path)!r}: config.json is nested too deeply to read") from None
    except (ValueError, OSError, KeyError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ValueError(f"{str(path)!r}: config.json is not a config transformers reads without running the "
                         f"folder's code ({type(exc).__name__}: {reason})") from None
    try:  # safetensors, or a .bin unpickled with weights_only (a pickled object is refused, not run)
        weights = _read_weights(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # SafetensorError, UnpicklingError, a broken index: no common base class
        reason = " ".join(str(exc).split())[:200]
        raise ValueError(f"{str(path)!r} has unreadable weights ({type(exc).__name__}: {reason})") from None
    return config, weights


def _download(repo_id: str) -> Path:
    """The hub repo's config and weights (safetensors when it has them), in the local HF cache."""
    from huggingface_hub import snapshot_download

    try:
        for patterns in (["*.safetensors", "*.safetensors.index.json"], ["pytorch_model*.bin", "*.bin.index.json"]):
            path = Path(snapshot_download(repo_id, allow_patterns=["config.json", *patterns]))
            if any(path.glob(patterns[0])):
                return path
    except Exception as exc:  # the hub client raises many unrelated error types
        reason = " ".join(str(exc).split())[:160]
        raise ValueError(f"could not download {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: "
                         f"{reason}); needs network access, or pass a local folder") from None
    raise ValueError(f"hub repo {repo_id!r} has no model.safetensors or pytorch_model.bin")


def _indexed_files(path: Path, index: str) -> list[Path]:
    """The weight files that ``path/index`` (a sharded checkpoint's ``weight_map``) names, each inside ``path``.
    (A broken index raises; the caller names the folder's weights unreadable.)"""
    weight_map = json.loads((path / index).read_text(encoding="utf-8"))["weight_map"]
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise ValueError(f"{str(path / index)!r}: weight_map is not an object of file names")
    files = []
    for name in sorted(set(weight_map.values())):  # a name, never a path: the shards lie beside the index
        if Path(name).name != name or name in (".", "..") or not (path / name).is_file():
            raise ValueError(f"{str(path / index)!r} names {name[:100]!r}, which is not a file in {str(path)!r}")
        files.append(path / name)
    return files


def _read_weights(path: Path) -> dict[str, Tensor]:
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):  # fmt: skip
        if (path / single).is_file():
            files = [path / single]
        elif (path / index).is_file():
            files = _indexed_files(path, index)
        else:
            continue
        state: dict[str, Tensor] = {}
        for f in files:
            state.update(load_file(str(f)) if f.suffix == ".safetensors"
                         else torch.load(f, map_location="cpu", weights_only=True))
        return state
    raise FileNotFoundError(f"{str(path)!r} has no model.safetensors or pytorch_model.bin")
