"""Saving checkpoints: atomic writes of a run's ``ckpt-NNNNNN`` folders (single-file or sharded), the
pointers moved after, old ones pruned; and the state a resume reads back. Reading checkpoints is
``fastgpt.checkpoint`` (the folder layout is described there).

A checkpoint is written to a temporary folder, flushed, renamed into place, and only then named
by the pointer files (replaced atomically), so a crash or ``kill -9`` at any moment leaves the
previous checkpoint loadable. Checkpoints other than the best and the ``train.keep_checkpoints``
newest are deleted once the pointers moved on.

DCP reshards on load, so a sharded checkpoint resumes on any number of ranks (one process too),
``fastgpt.load`` reads it like any other, and ``fastgpt.train.convert`` (``python -m fastgpt convert``)
turns it into the single-file form.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_model

from fastgpt import adapters, run_dir
from fastgpt.checkpoint import RESUME_HINT, SHARDS, CheckpointError, check_shards, dcp_failure, first_line, quiet_dcp
from fastgpt.tokenizers import Tokenizer


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: torch.nn.Module | None,
    tokenizer: Tokenizer,
    config: dict[str, Any],
    state: dict[str, Any],
    best: bool = False,
    staged: Path | None = None,
    keep: int = 1,
) -> Path:
    """Write ``ckpt-{step}`` atomically, point ``latest`` (and ``best`` if asked) at it, prune all but
    the ``keep`` newest checkpoints and the best one.

    ``staged`` is a ``staging_dir`` the ranks already wrote their shards into (``model`` is then None).
    Raises OSError (disk full, ...: whatever the writer's own error type) with the old checkpoint
    untouched. A step is saved once: saving
    it again would replace a folder a pointer may name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{step:06d}"
    tmp = staged or Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out))
    try:
        write_files(tmp, model, tokenizer, config, state)
        final = out / name
        if final.exists():  # left by a save that died before moving the pointers
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:  # safetensors' SafetensorError, torch.save's RuntimeError: not OSErrors
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failure(exc, out) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    run_dir.write_pointer(out, "latest", name)
    if best or not (out / "best").exists():
        run_dir.write_pointer(out, "best", name)
    run_dir.prune(out, keep)
    return final



def staging_dir(out_dir: str | Path, step: int) -> Path:
    """The temporary folder every rank writes ``ckpt-{step}``'s shards into (the same name on all)."""
    return Path(out_dir) / f".ckpt-{step:06d}-staged"



def write_files(
    folder: Path, model: torch.nn.Module | None, tokenizer: Tokenizer, config: dict[str, Any],
    state: dict[str, Any] | None,
) -> None:
    """Weights (unless ``model`` is None; adapters only for a LoRA model), config, tokenizer and state (unless
    None), flushed to disk."""
    if model is not None and adapters.has_adapters(model):  # a LoRA run: its adapters only
        adapters.save_adapters(model, folder)
    elif model is not None:
        save_model(model, str(folder / "model.safetensors"))
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    tokenizer.save(folder)
    if state is not None:
        torch.save(state, folder / "state.pt")
    _fsync_tree(folder)



def save_shards(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, no_dist: bool) -> None:
    """Every rank writes its shards of the weights and optimizer state to ``folder/sharded`` (DCP).

    A failed write on any rank raises OSError on every rank (the first failing rank's, if an OSError).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(model, optimizer)
    try:
        with quiet_dcp():
            dcp.save({"model": weights, "optimizer": optim}, checkpoint_id=folder / SHARDS, no_dist=no_dist)
    except dcp.CheckpointException as exc:  # a BaseException holding every failed rank's error
        failure = dcp_failure(exc)
        raise failure if isinstance(failure, OSError) else OSError(first_line(failure)) from None



def load_shards(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, no_dist: bool,
                allow_pickle: bool) -> None:
    """Load a sharded checkpoint's weights and optimizer state into ``model`` (sharded or not); refused as
    ``check_shards`` says."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    weights, optim = get_state_dict(model, optimizer)
    shards = check_shards(ckpt, allow_pickle, RESUME_HINT)
    try:
        with quiet_dcp():
            dcp.load({"model": weights, "optimizer": optim}, checkpoint_id=shards, no_dist=no_dist)
    except (Exception, dcp.CheckpointException) as exc:
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has unreadable shards: "
                              f"{first_line(dcp_failure(exc))}") from None
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim)



def load_state(ckpt: Path) -> dict[str, Any]:
    if not (ckpt / "state.pt").exists():
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has no state.pt: it holds weights only "
                              "(for fastgpt.load) and cannot be resumed")
    try:  # weights_only: tensors, numbers, strings and containers only; a pickled object is refused, not run
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has an unreadable state.pt: {first_line(exc)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has a state.pt holding a {type(state).__name__}, not a dict")
    return state



def _write_failure(exc: Exception, folder: Path) -> OSError:
    """``exc`` (a writer's own error type) as an OSError: ENOSPC when the disk under ``folder`` is full."""
    try:
        full = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize < 1 << 20
    except OSError:
        full = False
    if full or "No space left" in str(exc) or "code: 28" in str(exc):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    return OSError(f"{type(exc).__name__}: {first_line(exc)}")



def _fsync_tree(path: Path) -> None:
    """Flush every file under ``path`` and the folders themselves to disk."""
    for entry in [*path.rglob("*"), path]:
        fd = os.open(entry, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
