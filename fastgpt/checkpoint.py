"""Reading checkpoints: ``fastgpt.load``, which checkpoint a run folder means, its config, weights and
shards, checked before anything is built. What a run saves and resumes is ``fastgpt.train.checkpoint``.

Layout of a run's ``out_dir``::

    ckpt-000500/            one complete checkpoint
        model.safetensors   weights (tied tensors stored once); a LoRA run (train.lora_rank) has
                            adapters.safetensors instead: its adapters only (fastgpt.adapters)
        config.yaml         the run's full resolved config
        tokenizer files     whatever the tokenizer's ``save`` writes
        state.pt            optimizer, scheduler, GradScaler, RNG and data-cursor state, counters
    ckpt-000600/            a sharded checkpoint (train.parallel=fsdp): the same, except that
        sharded/            torch.distributed.checkpoint (DCP) files, written by every rank,
                            hold the weights and optimizer state (no model.safetensors)
    latest                  text file naming the newest complete checkpoint
    best                    text file naming the one with the lowest validation loss

Nothing read here runs code: weights are safetensors, configs YAML read as data, and DCP shards
(whose ``.metadata`` is a pickle) only with ``allow_pickle``, for runs of one's own.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from fastgpt import adapters, run_dir
from fastgpt.config import GPTConfig, yaml_text
from fastgpt.messages import cut
from fastgpt.model import GPT
from fastgpt.preflight import check_weights_fit
from fastgpt.run_dir import POINTERS
from fastgpt.tokenizers import Tokenizer, load_tokenizer

SHARDS = "sharded"  # the DCP folder of a sharded checkpoint


RACE_RETRIES = 20  # resolve a run's pointer again when the checkpoint it named was pruned during the read



class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model or config asked of it."""



def is_sharded(ckpt: Path) -> bool:
    """True for a checkpoint folder whose weights are DCP shards only. Beside a model.safetensors a
    ``sharded/`` folder is never read: its ``.metadata`` is a pickle, and unpickling can run code."""
    return (ckpt / SHARDS / ".metadata").is_file() and not (ckpt / "model.safetensors").exists()



LOAD_HINT = ("if it is your own run, convert it with python -m fastgpt convert --allow_pickle, or load it with "
             "allow_pickle=True (--allow_pickle)")


RESUME_HINT = "if it is your own run, resume it with --resume --allow_pickle"



def check_shards(ckpt: Path, allow_pickle: bool, hint: str = LOAD_HINT) -> Path:
    """``ckpt/sharded``, for DCP to read: CheckpointError unless ``allow_pickle`` (its ``.metadata`` is a pickle,
    and unpickling can run code), unless there is no model.safetensors beside it, and unless it is a plain
    folder of plain files inside ``ckpt`` (no symlink leading elsewhere). Every reader of shards calls it
    right before reading, whatever it decided earlier."""
    where = f"checkpoint {str(ckpt)!r}"
    if not allow_pickle:
        raise CheckpointError(f"{where} holds DCP shards only, whose .metadata is a pickle that can run code; {hint}")
    if (ckpt / "model.safetensors").exists():
        raise CheckpointError(f"{where} has a model.safetensors, so its {SHARDS}/ folder is not read")
    shards = ckpt / SHARDS
    try:
        linked = shards.is_symlink() or shards.resolve().parent != ckpt.resolve() or \
            any(e.is_symlink() for e in shards.iterdir())
    except OSError as exc:
        raise CheckpointError(f"{where} has an unreadable {SHARDS}/ folder ({exc.strerror or exc})") from None
    if linked:
        raise CheckpointError(f"{where}: its {SHARDS}/ folder is, or holds, a symlink; refusing to follow it")
    return shards



def resolve_checkpoint(path: str | Path, which: str = "latest") -> Path:
    """The checkpoint folder for ``path``: itself, or what its ``which`` pointer names.

    A pointer may only name a ``ckpt-NNNNNN`` folder inside ``path`` (``fastgpt.run_dir``). When it
    is missing or names no complete checkpoint (a run killed between renaming ``ckpt-N`` into place
    and writing the pointer), ``best`` falls back to ``latest``, and ``latest`` to the newest complete
    checkpoint; a pointer naming anything else (``../x``, ``/abs``, a symlink out) is refused.
    ``which`` may also name a checkpoint of the run (``ckpt-000500``).
    """
    path = Path(path)
    if is_complete(path):
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if which not in POINTERS:
        named = run_dir.inside(path, which)
        if named is None or not is_complete(named):
            have = ", ".join(c.name for c in run_dir.checkpoints(path) if is_complete(c)) or "none"
            raise CheckpointError(f"{str(path)!r} has no complete checkpoint {cut(which)} (it has: {have}); "
                                  f"name one of them, or {' or '.join(POINTERS)}")
        return named
    for pointer in (which, "latest") if which == "best" else (which,):
        try:
            target = run_dir.pointed(path, pointer)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
        if target is not None and is_complete(target):
            return target
    complete = [c for c in run_dir.checkpoints(path) if is_complete(c)]
    if complete:
        return complete[-1]
    raise CheckpointError(f"{str(path)!r} holds no checkpoint (no model.safetensors, and no complete "
                          f"ckpt-NNNNNN folder for its {cut(which)} pointer or beside it)")



def read_config(ckpt: Path) -> dict[str, Any]:
    try:
        config = yaml_text.parse(yaml_text.read_text(ckpt / "config.yaml", "config"))
    except (ValueError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has no readable config.yaml: {reason}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has a config.yaml without a model section")
    return config



def load_weights(model: torch.nn.Module, ckpt: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
    """Load ``model.safetensors`` (or ``weights`` read from it) into ``model``; a shape or key mismatch
    raises CheckpointError. Tied tensors are stored once; the names they share are not missing.
    A LoRA checkpoint's adapters go into ``model``'s adapters, if its base hashes as saved."""
    if weights is None and adapters.is_adapter_checkpoint(ckpt):
        train = read_config(ckpt).get("train")
        base = train.get("init_from") if isinstance(train, dict) else None
        try:
            return adapters.load_adapters(model, ckpt, base=base if isinstance(base, str) else None)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
    if weights is None:
        weights = read_weights(ckpt)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(f"checkpoint {str(ckpt)!r} does not fit this model: {first}") from None
    tensors = model.state_dict()
    present = {t.data_ptr() for k, t in tensors.items() if k in weights}
    missing = [k for k in missing if tensors[k].data_ptr() not in present]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {str(ckpt)!r} does not fit this model: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )



def read_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``ckpt/model.safetensors``, read into memory."""
    try:
        return load_file(str(ckpt / "model.safetensors"))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has unreadable weights: {exc}") from None



def load(path: str | Path, device: str | torch.device = "cpu", which: str = "best",
         allow_pickle: bool = False) -> tuple[GPT, Tokenizer]:
    """``(model, tokenizer)`` from a checkpoint folder or a run's out_dir (its ``which`` pointer).

    The model is in eval mode on ``device``. A checkpoint holding only DCP shards (``train.parallel=
    fsdp``) is refused unless ``allow_pickle``: DCP's ``.metadata`` is a pickle, which can run code,
    so only a run of your own should be read that way (or converted: ``python -m fastgpt convert``).
    A checkpoint pruned by a run training into ``path`` while it is read is resolved again.
    """
    ckpt = resolve_checkpoint(path, which)
    for _ in range(RACE_RETRIES):
        try:
            return _load(ckpt, device, allow_pickle)
        except (CheckpointError, OSError):
            now = resolve_checkpoint(path, which)
            if now == ckpt:  # still the checkpoint the run names: a real failure, not a pruned one
                raise
            ckpt = now
    return _load(ckpt, device, allow_pickle)



def _load(ckpt: Path, device: str | torch.device, allow_pickle: bool) -> tuple[GPT, Tokenizer]:
    sharded = is_sharded(ckpt)  # decided once: a file renamed later cannot switch the reader to DCP's pickle
    if sharded:
        check_shards(ckpt, allow_pickle)  # refused before the slow reads; the reader checks again
    # every file is read before the (slow) model is built: a run pruning this checkpoint can only
    # interrupt these reads, and ``load`` then follows the run's pointer to the newer one
    config = read_config(ckpt)
    try:
        tokenizer = load_tokenizer(ckpt)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has no usable tokenizer: {exc}") from None
    if adapters.is_adapter_checkpoint(ckpt):
        try:
            saved = adapters.read_adapters(ckpt)  # every file of the checkpoint is read before the base is built
            lora = adapters.lora_settings(ckpt, config)
            merged = adapters.merge_into(lora_base(lora.init_from, config["model"], device), ckpt, saved, lora,
                                         tokenizer)
        except (ValueError, FileNotFoundError) as exc:
            raise CheckpointError(str(exc)) from None
        check_finite(merged.named_parameters(), ckpt, f"{adapters.ADAPTERS} (merged into its base model)")
        return merged, tokenizer
    weights = None if sharded else read_weights(ckpt)
    if weights is not None:
        check_finite(weights.items(), ckpt, "model.safetensors")  # before the slow model build
    try:
        model_config = GPTConfig(**config["model"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has an invalid model config: {exc}") from None
    if tokenizer.vocab_size > model_config.vocab_size:
        raise CheckpointError(f"checkpoint {str(ckpt)!r}: its tokenizer ({tokenizer.name}) has {tokenizer.vocab_size} "
                              f"tokens but the model only {model_config.vocab_size}; they do not belong together")
    check_weights_fit(model_config, torch.device(device), f"checkpoint {str(ckpt)!r}")
    try:
        with torch.device(device):
            model = GPT(model_config)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:  # a field of a type validate() does not check
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has a model config that builds no model: "
                              f"{type(exc).__name__}: {first_line(exc)}") from None
    if weights is None:
        _load_sharded_weights(model, ckpt, allow_pickle)
        check_finite(model.named_parameters(), ckpt, f"{SHARDS}/")
    else:
        load_weights(model, ckpt, weights)
    model.eval()
    return model, tokenizer



def lora_base(init_from: str, model_cfg: dict[str, Any], device: str | torch.device) -> GPT:
    """The base a LoRA checkpoint names, on ``device``, with the backends of ``model_cfg`` (its own):
    ``hf:PATH_OR_HUB_ID`` (``adapters.hf_base``), or the fastgpt checkpoint folder a LoRA run on a run
    recorded, read wherever it lies (its config.yaml and model.safetensors, never shards)."""
    if init_from == "scratch":
        raise ValueError(f"a LoRA checkpoint's base must be train.init_from=hf:PATH_OR_HUB_ID or a fastgpt "
                         f"checkpoint folder, got {cut(init_from)}")
    if init_from.startswith("hf:"):
        return adapters.hf_base(init_from, model_cfg, device)
    path = Path(init_from).expanduser()
    if not is_complete(path):
        raise FileNotFoundError(base_gone(init_from))
    backends = {k: v if isinstance(v := model_cfg.get(k), str) else "auto" for k in ("attn_backend", "norm_backend")}
    config, weights = run_weights(path, f"the LoRA base train.init_from={cut(init_from)}", **backends)
    check_weights_fit(config, torch.device(device), f"the LoRA base {str(path)!r}")
    with torch.device(device):
        model = GPT(config)
    load_weights(model, path, weights)
    return model



def run_weights(path: Path, what: str, attn_backend: str, norm_backend: str) -> tuple[GPTConfig, dict]:
    """The model config (with these backends) and weights of the checkpoint folder ``path`` of a fastgpt
    run, named ``what`` in errors. Only its config.yaml and model.safetensors are read: DCP shards (a
    pickle) and a LoRA run's adapters (which need a base of their own) are refused."""
    if is_sharded(path):
        raise ValueError(f"{what}: {path} holds DCP shards only (train.parallel=fsdp), which are not read here; "
                         "convert it first with python -m fastgpt convert")
    if adapters.is_adapter_checkpoint(path):
        raise ValueError(f"{what}: {path} is a LoRA run, whose adapters need a base of their own; merge them first "
                         "with python -m fastgpt convert --checkpoint RUN --out MERGED, then use MERGED")
    try:
        config = replace(GPTConfig(**read_config(path)["model"]), attn_backend=attn_backend,
                         norm_backend=norm_backend)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{what}: {path} has an invalid model config: {exc}") from None
    return config, read_weights(path)



def base_gone(base: str) -> str:
    """The error line for a LoRA run whose base checkpoint is no longer where the run recorded it."""
    return (f"the LoRA base train.init_from={cut(base)} is gone (moved or deleted): the adapters need the checkpoint "
            "they were trained on, at that path; put it back there")



def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], ckpt: Path, file: str) -> None:
    """CheckpointError naming ``file`` of ``ckpt`` and the first of ``tensors`` (name, tensor) that holds a
    NaN or an inf: such weights give NaN logits, which sampling cannot draw from and scores cannot use."""
    for name, tensor in tensors:
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = tensor.numel() - int(finite.sum())
            raise CheckpointError(f"checkpoint {str(ckpt)!r}: its {file} holds non-finite weights, first in {name} "
                                  f"({bad:,} of {tensor.numel():,} values are NaN or inf); the run diverged before "
                                  "this save: use one of its earlier checkpoints")



def _load_sharded_weights(model: GPT, ckpt: Path, allow_pickle: bool) -> None:
    """The weights of a sharded checkpoint, gathered into ``model`` in this process alone."""
    import torch.distributed.checkpoint as dcp

    weights = model.state_dict()  # DCP loads into these tensors, which are the parameters
    shards = check_shards(ckpt, allow_pickle)
    try:
        with quiet_dcp():
            dcp.load({"model": weights}, checkpoint_id=shards, no_dist=True)
    except (Exception, dcp.CheckpointException) as exc:
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has unreadable shards or does not fit this model: "
                              f"{first_line(dcp_failure(exc))}") from None



@contextlib.contextmanager
def quiet_dcp() -> Iterator[None]:
    """Silence DCP's warning that it runs in one process (meant here), and the tracebacks it logs on
    the root logger before it raises an error we report ourselves."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is .*unavailable or uninitialized")
            yield
    finally:
        root.setLevel(level)



def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a checkpoint's weights (single-file, adapters or shards)."""
    return (folder / "model.safetensors").is_file() or (folder / adapters.ADAPTERS).is_file() or is_sharded(folder)



def dcp_failure(exc: BaseException) -> BaseException:
    """The first failed rank's error inside DCP's CheckpointException (else ``exc`` itself)."""
    failures = getattr(exc, "failures", None)
    return next(iter(failures.values()))[0] if failures else exc



def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
