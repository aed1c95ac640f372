"""Fine-tuning set-up and the weights a run saves: ``train.freeze``, and LoRA runs that save adapters only.

``prepare_model`` applies ``train.freeze`` (``fastgpt.train.freeze``) or ``train.lora_rank``
(``fastgpt.nn.lora``) to a freshly built model, before its optimizer is made.

A LoRA checkpoint holds ``adapters.safetensors`` instead of ``model.safetensors``: the adapters'
tensors, and in the file's metadata the SHA-256 of the base weights they were trained on
(``base_sha256``: every parameter but the adapters, by name, dtype, shape and bytes). Its
config.yaml names the base (``train.init_from``) and the LoRA settings. ``load_merged`` rebuilds
the base from there, refuses it if its weights hash differently (a changed base), loads the
adapters and merges them: ``fastgpt.load``, generate, eval and export get a plain model. A base
folder named by a checkpoint is read only when it lies inside the current folder (a hub id is
fetched through the Hugging Face cache).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fastgpt.config import TrainConfig
from fastgpt.model import GPT
from fastgpt.nn.lora import ADAPTER_SUFFIXES, LoRALinear, adapter_state, add_lora, merge_lora
from fastgpt.tokenizers import Tokenizer
from fastgpt.train.freeze import freeze

ADAPTERS = "adapters.safetensors"


def prepare_model(model: GPT, cfg: TrainConfig) -> None:
    """Freeze ``cfg.freeze``'s parameters, or add ``cfg.lora_*`` adapters (freezing the rest)."""
    if cfg.freeze:
        freeze(model, cfg.freeze)
    if cfg.lora_rank:
        add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)


def has_adapters(model: torch.nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def base_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter but the adapters: name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if name.endswith(ADAPTER_SUFFIXES):
            continue
        t = p.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_adapters(model: torch.nn.Module, folder: Path) -> None:
    """``folder/adapters.safetensors``: the adapters of ``model``, and its base's hash in the metadata."""
    tensors = {k: v.to("cpu").contiguous() for k, v in adapter_state(model).items()}
    save_file(tensors, str(folder / ADAPTERS), metadata={"base_sha256": base_sha256(model)})


def is_adapter_checkpoint(ckpt: Path) -> bool:
    return (ckpt / ADAPTERS).is_file() and not (ckpt / "model.safetensors").exists()


def read_adapters(ckpt: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The adapter tensors of ``ckpt`` and the base hash they were saved with."""
    try:
        with safe_open(str(ckpt / ADAPTERS), framework="pt") as f:
            digest = (f.metadata() or {}).get("base_sha256")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"checkpoint {str(ckpt)!r} has unreadable adapters: {exc}") from None
    if not isinstance(digest, str):
        raise ValueError(f"checkpoint {str(ckpt)!r}: {ADAPTERS} does not name its base's hash (base_sha256)")
    return tensors, digest


def load_adapters(model: torch.nn.Module, ckpt: Path,
                  saved: tuple[dict[str, torch.Tensor], str] | None = None) -> None:
    """Copy ``ckpt``'s adapters (or ``saved``, read from it) into ``model``, whose base must hash as saved."""
    tensors, digest = saved or read_adapters(ckpt)
    now = base_sha256(model)
    if now != digest:
        raise ValueError(f"checkpoint {str(ckpt)!r}: its adapters were trained on a base whose weights have "
                         f"SHA-256 {digest[:16]}..., but the base loaded now has {now[:16]}...; the base "
                         "(train.init_from) changed since")
    mine = adapter_state(model)
    if set(mine) != set(tensors) or any(mine[k].shape != tensors[k].shape for k in mine):
        diff = sorted(set(mine) ^ set(tensors))[:3] or [k for k in mine if mine[k].shape != tensors[k].shape][:3]
        raise ValueError(f"checkpoint {str(ckpt)!r}: its adapters do not fit the LoRA model of its config "
                         f"(first differences: {diff})")
    with torch.no_grad():
        for k, t in mine.items():
            t.copy_(tensors[k])


def base_model(init_from: str, model_cfg: dict[str, Any], device: str | torch.device) -> GPT:
    """The base a LoRA checkpoint names (``hf:PATH_OR_HUB_ID``), on ``device``; a local base folder is
    read only inside the current folder."""
    if not isinstance(init_from, str) or not init_from.startswith("hf:"):
        raise ValueError(f"a LoRA checkpoint's base must be train.init_from=hf:PATH_OR_HUB_ID, got {init_from!r}")
    name = init_from.removeprefix("hf:")
    path = Path(name).expanduser()
    if path.exists() and not path.resolve().is_relative_to(Path.cwd().resolve()):
        raise ValueError(f"the LoRA base train.init_from={init_from!r} lies outside the current folder "
                         f"{str(Path.cwd())!r}; fastgpt reads no file a checkpoint names outside it: run from a "
                         "folder holding the base")
    backends = {k: model_cfg[k] for k in ("attn_backend", "norm_backend") if isinstance(model_cfg.get(k), str)}
    return GPT.from_hf(name, **backends).to(device)


def load_merged(ckpt: Path, config: dict[str, Any], tokenizer: Tokenizer, device: str | torch.device) -> GPT:
    """The model of the LoRA checkpoint ``ckpt`` (its ``config.yaml`` read as ``config``): base plus
    adapters, merged into plain Linears, in eval mode on ``device``."""
    saved = read_adapters(ckpt)  # every file of the checkpoint is read before the base is built
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    try:
        lora = TrainConfig(init_from=train.get("init_from"), lora_rank=train.get("lora_rank"),
                           lora_alpha=train.get("lora_alpha"), lora_targets=train.get("lora_targets"))
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"checkpoint {str(ckpt)!r} has adapters but no usable LoRA settings: {exc}") from None
    model = base_model(lora.init_from, config["model"], device)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"checkpoint {str(ckpt)!r}: its tokenizer has {tokenizer.vocab_size} tokens but its base "
                         f"model only {model.config.vocab_size}")
    add_lora(model, lora.lora_rank, lora.lora_alpha, 0.0, lora.lora_targets)
    load_adapters(model, ckpt, saved)
    return merge_lora(model).eval()
