"""Checkpoints: atomic save, load, and ``fastgpt.load``.

Layout of a run's ``out_dir``::

    ckpt-000500/            one complete checkpoint
        model.safetensors   weights (tied tensors stored once)
        config.yaml         the run's full resolved config
        tokenizer files     whatever the tokenizer's ``save`` writes
        state.pt            optimizer, scheduler, GradScaler, RNG and data-cursor state, counters
    latest                  text file naming the newest complete checkpoint
    best                    text file naming the one with the lowest validation loss

A checkpoint is written to a temporary folder, flushed, renamed into place, and only then named
by the pointer files (replaced atomically), so a crash or ``kill -9`` at any moment leaves the
previous checkpoint loadable. Older checkpoints are deleted once the pointers moved on.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_model, save_model

from fastgpt.model import GPT, GPTConfig
from fastgpt.tokenizers import Tokenizer, load_tokenizer

POINTERS = ("latest", "best")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model or config asked of it."""


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    config: dict[str, Any],
    state: dict[str, Any],
    best: bool = False,
    model_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``ckpt-{step}`` atomically, point ``latest`` (and ``best`` if asked) at it, prune.

    ``model_state`` may replace the model's own weights (e.g. gathered from FSDP shards).
    Raises OSError (disk full, ...) with the old checkpoint untouched.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out))
    try:
        if model_state is None:
            save_model(model, str(tmp / "model.safetensors"))
        else:
            from safetensors.torch import save_file

            save_file(model_state, str(tmp / "model.safetensors"))
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        tokenizer.save(tmp)
        torch.save(state, tmp / "state.pt")
        _fsync_dir(tmp)
        final = out / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_pointer(out, "latest", name)
    if best or not (out / "best").exists():
        _write_pointer(out, "best", name)
    _prune(out)
    return final


def resolve_checkpoint(path: str | Path, which: str = "latest") -> Path:
    """The checkpoint folder for ``path``: itself, or what its ``which`` pointer names."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    pointer = path / which
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if not pointer.is_file():
        raise CheckpointError(f"{str(path)!r} holds no checkpoint (no model.safetensors and no {which!r} pointer)")
    target = path / pointer.read_text().strip()
    if not (target / "model.safetensors").is_file():
        raise CheckpointError(f"checkpoint {str(target)!r} named by {str(pointer)!r} is missing or incomplete")
    return target


def read_config(ckpt: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load((ckpt / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has no readable config.yaml: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has a config.yaml without a model section")
    return config


def load_weights(model: torch.nn.Module, ckpt: Path) -> None:
    """Load ``model.safetensors`` into ``model``; shape or key mismatches raise CheckpointError."""
    try:
        missing, unexpected = load_model(model, str(ckpt / "model.safetensors"), strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(f"checkpoint {str(ckpt)!r} does not fit this model: {first}") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has unreadable weights: {exc}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {str(ckpt)!r} does not fit this model: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )


def load_state(ckpt: Path) -> dict[str, Any]:
    try:
        return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has an unreadable state.pt: {exc}") from None


def load(path: str | Path, device: str | torch.device = "cpu", which: str = "best") -> tuple[GPT, Tokenizer]:
    """``(model, tokenizer)`` from a checkpoint folder or a run's out_dir (its ``which`` pointer).

    The model is in eval mode on ``device``.
    """
    ckpt = resolve_checkpoint(path, which)
    config = read_config(ckpt)
    try:
        model_config = GPTConfig(**config["model"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has an invalid model config: {exc}") from None
    with torch.device(device):
        model = GPT(model_config)
    load_weights(model, ckpt)
    model.eval()
    try:
        tokenizer = load_tokenizer(ckpt)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has no usable tokenizer: {exc}") from None
    return model, tokenizer


def _write_pointer(out: Path, which: str, name: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{which}-", dir=out)
    with os.fdopen(fd, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / which)


def _prune(out: Path) -> None:
    """Delete checkpoints no pointer names, and temporary folders of interrupted saves."""
    keep = {(out / p).read_text().strip() for p in POINTERS if (out / p).is_file()}
    for entry in out.iterdir():
        stale_ckpt = entry.name.startswith("ckpt-") and entry.name not in keep
        interrupted = entry.name.startswith(".ckpt-")
        if entry.is_dir() and (stale_ckpt or interrupted):
            shutil.rmtree(entry, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
