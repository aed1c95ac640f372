"""LoRA checkpoints: a LoRA run (``train.lora_rank``, ``fastgpt.nn.lora``) saves its adapters only.

A LoRA checkpoint holds ``adapters.safetensors`` instead of ``model.safetensors``: the adapters'
tensors, and in the file's metadata the SHA-256 of the base weights they were trained on
(``base_sha256``: every parameter but the adapters, by name, dtype, shape and bytes). Its
config.yaml names the base (``train.init_from``: ``hf:PATH_OR_HUB_ID``, or the absolute path of the
fastgpt checkpoint folder a run on a fastgpt run adapts) and the LoRA settings. ``fastgpt.load``
rebuilds the base from there (``hf_base`` here, ``fastgpt.checkpoint.lora_base`` for a fastgpt
base, read wherever it lies: its config.yaml and model.safetensors, data, never code), and
``merge_into`` refuses it if its weights hash differently (a changed base), loads the adapters and
merges them: generate, eval and export get a plain model. A Hugging Face base folder is read only
when it lies inside the current folder (a hub id is fetched through the Hugging Face cache).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fastgpt.config import TrainConfig
from fastgpt.messages import cut
from fastgpt.model import GPT
from fastgpt.nn.lora import ADAPTER_SUFFIXES, LoRALinear, adapter_state, add_lora, merge_lora
from fastgpt.tokenizers import Tokenizer

ADAPTERS = "adapters.safetensors"


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
                  saved: tuple[dict[str, torch.Tensor], str] | None = None, base: str | None = None) -> None:
    """Copy ``ckpt``'s adapters (or ``saved``, read from it) into ``model``, whose base (``base``: its
    train.init_from, for the message) must hash as saved."""
    tensors, digest = saved or read_adapters(ckpt)
    now = base_sha256(model)
    if now != digest:
        named = f"train.init_from={cut(base)}" if base else "train.init_from"
        raise ValueError(f"checkpoint {str(ckpt)!r}: its adapters were trained on a base whose weights have "
                         f"SHA-256 {digest[:16]}..., but the base loaded now has {now[:16]}...; the base "
                         f"({named}) changed since: re-trained or replaced")
    mine = adapter_state(model)
    if set(mine) != set(tensors) or any(mine[k].shape != tensors[k].shape for k in mine):
        diff = sorted(set(mine) ^ set(tensors))[:3] or [k for k in mine if mine[k].shape != tensors[k].shape][:3]
        raise ValueError(f"checkpoint {str(ckpt)!r}: its adapters do not fit the LoRA model of its config "
                         f"(first differences: {diff})")
    with torch.no_grad():
        for k, t in mine.items():
            t.copy_(tensors[k])


def lora_settings(ckpt: Path, config: dict[str, Any]) -> TrainConfig:
    """The LoRA settings (base, rank, alpha, targets) of the checkpoint ``ckpt``, its config.yaml read as ``config``."""
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    try:
        return TrainConfig(init_from=train.get("init_from"), lora_rank=train.get("lora_rank"),
                           lora_alpha=train.get("lora_alpha"), lora_targets=train.get("lora_targets"))
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"checkpoint {str(ckpt)!r} has adapters but no usable LoRA settings: {exc}") from None


def hf_base(init_from: str, model_cfg: dict[str, Any], device: str | torch.device) -> GPT:
    """The Hugging Face base a LoRA checkpoint names (``hf:PATH_OR_HUB_ID``), on ``device``; a local base
    folder is read only inside the current folder. (A fastgpt base: ``fastgpt.checkpoint.lora_base``.)"""
    name = init_from.removeprefix("hf:")
    path = Path(name).expanduser()
    if path.exists() and not path.resolve().is_relative_to(Path.cwd().resolve()):
        raise ValueError(f"the LoRA base train.init_from={init_from!r} lies outside the current folder "
                         f"{str(Path.cwd())!r}; fastgpt reads no file a checkpoint names outside it: run from a "
                         "folder holding the base")
    backends = {k: model_cfg[k] for k in ("attn_backend", "norm_backend") if isinstance(model_cfg.get(k), str)}
    return GPT.from_hf(name, **backends).to(device)


def merge_into(base: GPT, ckpt: Path, saved: tuple[dict[str, torch.Tensor], str], lora: TrainConfig,
               tokenizer: Tokenizer) -> GPT:
    """``base`` plus the adapters ``saved`` (read from ``ckpt``, of settings ``lora``), merged into plain
    Linears, in eval mode: the model of the LoRA checkpoint. Refused if ``base`` is not the one they were
    trained on."""
    if tokenizer.vocab_size > base.config.vocab_size:
        raise ValueError(f"checkpoint {str(ckpt)!r}: its tokenizer has {tokenizer.vocab_size} tokens but its base "
                         f"model only {base.config.vocab_size}")
    add_lora(base, lora.lora_rank, lora.lora_alpha, 0.0, lora.lora_targets)
    load_adapters(base, ckpt, saved, lora.init_from)
    return merge_lora(base).eval()
