"""The tokens ``val_loss`` scores for a checkpoint: its run's own validation split.

The checkpoint's config.yaml names the data (``data.*``) and its state.pt the hash of the prepared
folder it trained on (the manifest's ``hash``). ``run_val_tokens`` reads, in this order:

1. the prepared folder of that hash in the run's ``data.cache_dir`` (what the run trained on, even if
   its source changed or is gone since); else the folder of the hash its settings give now;
2. else it re-prepares the split from the named source, with the same tokenizer and split settings,
   into a cache eval may write (``--cache_dir``, else the run's own if inside the current folder, else
   ``data_cache`` here), and warns when the source changed since the run trained.

Threat model (a checkpoint may come from anyone): the files its config names are read, wherever they
lie, but only ever as data (text, JSON, safetensors, NumPy without pickles); what comes out is a loss,
which reveals nothing of them. Nothing of a checkpoint is executed or unpickled (state.pt's hash is
found by reading its pickle's opcodes, ``pickletools``, never by loading it), and nothing is written
outside the cache named above.
"""

from __future__ import annotations

import pickletools
import re
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from fastgpt.config import DataConfig
from fastgpt.data.prepare import PreparedData, data_digest, find_prepared, prepare_data
from fastgpt.data.sources import SHAKESPEARE, looks_like_path
from fastgpt.messages import cut
from fastgpt.tokenizers import Tokenizer, path_exists, same_tokenizer

_HASH = re.compile(r"[0-9a-f]{16}")
_MAX_PICKLE = 64 << 20  # state.pt's data.pkl holds counters and tensor references: far below this
_STRINGS = ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE")
_MEMO = ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE")
ELSEWHERE = "pass --data val_loss=FILE to score a file whole"


def run_val_tokens(checkpoint: str | Path, tokenizer: Tokenizer, cache_dir: str | None) -> np.ndarray:
    """The validation split of the run of ``checkpoint`` (a run folder or a ckpt-* folder), shape (N,);
    ``tokenizer`` is the checkpoint's. ValueError (FileNotFoundError for a gone source) when there is
    none to score."""
    from fastgpt.checkpoint import read_config, resolve_checkpoint

    ckpt = resolve_checkpoint(checkpoint, "best")
    data_cfg = read_config(ckpt).get("data")
    if not isinstance(data_cfg, dict):
        raise ValueError(f"checkpoint {str(checkpoint)!r} has no data section; {ELSEWHERE}")
    try:
        cfg = DataConfig(**data_cfg)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {str(checkpoint)!r} has an unusable data section ({exc})") from None
    saved = saved_data_hash(ckpt)
    writable = _writable_cache(cfg, cache_dir)
    data = _cached(cfg, saved) or _cached(replace(cfg, cache_dir=writable), saved)
    if data is None:
        data = _reprepare(replace(cfg, cache_dir=writable), checkpoint, saved, cfg.cache_dir)
    _check_tokenizer(data, tokenizer)
    if data.val_count < 2:
        raise ValueError(f"the checkpoint's dataset has no validation tokens (data.val_fraction="
                         f"{cfg.val_fraction}); {ELSEWHERE}")
    return data.val_tokens()


def saved_data_hash(ckpt: Path) -> str | None:
    """The prepared data's hash that ``ckpt/state.pt`` recorded (``data_hash``), or None.

    Read from the opcodes of its pickle (``pickletools.genops``), which builds no object and runs
    nothing: the string pushed right after the key ``"data_hash"``, if it looks like a hash.
    """
    try:
        with zipfile.ZipFile(ckpt / "state.pt") as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None or archive.getinfo(name).file_size > _MAX_PICKLE:
                return None
            data = archive.read(name)
        after_key = False
        for op, arg, _ in pickletools.genops(data):
            if op.name in _MEMO:
                continue
            if after_key:
                return arg if op.name in _STRINGS and isinstance(arg, str) and _HASH.fullmatch(arg) else None
            after_key = op.name in _STRINGS and arg == "data_hash"
    except Exception:  # no state.pt, not a zip, a malformed pickle: no hash to go by
        return None
    return None


def _cached(cfg: DataConfig, saved: str | None) -> PreparedData | None:
    """The run's prepared folder in its own cache_dir (read only): the saved hash's, else today's."""
    digests = [d for d in (saved, _digest_now(cfg)) if d is not None]
    for digest in dict.fromkeys(digests):
        try:
            data = find_prepared(cfg, digest)
        except (OSError, KeyError, TypeError, ValueError):  # an unreadable or damaged folder: not reused
            data = None
        if data is not None:
            return data
    return None


def _digest_now(cfg: DataConfig) -> str | None:
    try:
        return data_digest(cfg)
    except (OSError, ValueError):  # a source that cannot be listed
        return None


def _writable_cache(cfg: DataConfig, cache_dir: str | None) -> str:
    """Where eval may prepare: ``cache_dir`` (--cache_dir), else the run's own cache if it lies inside the
    current folder, else ``data_cache`` here."""
    if cache_dir is not None:
        return cache_dir
    inside = Path(cfg.cache_dir).expanduser().resolve().is_relative_to(Path.cwd().resolve())
    return cfg.cache_dir if inside else DataConfig().cache_dir


def _reprepare(cfg: DataConfig, checkpoint: str | Path, saved: str | None, run_cache: str) -> PreparedData:
    """``cfg``'s split prepared again from its sources into ``cfg.cache_dir`` (the run's was ``run_cache``)."""
    for source in cfg.sources:
        if source != SHAKESPEARE and looks_like_path(source) and not path_exists(source):
            raise FileNotFoundError(
                f"val_loss: the run's dataset data.dataset={cut(source)} is gone (no such file or folder), and its "
                f"prepared files are no longer in data.cache_dir={cut(run_cache)}; put the dataset back there, "
                f"or {ELSEWHERE}")
    print(f"val_loss: the run's prepared files are not in data.cache_dir={cut(run_cache)}; preparing its "
          f"validation split again from data.dataset={cut(cfg.dataset)} into {cut(cfg.cache_dir)}", file=sys.stderr)
    data = prepare_data(cfg, progress=True)
    if saved is not None and data.manifest.get("hash") != saved:
        print(f"warning: checkpoint {str(checkpoint)!r} trained on data {saved}, but its dataset's files changed "
              f"since (now {data.manifest.get('hash')}): this is their validation split now, not the one the run "
              "had", file=sys.stderr)
    return data


def _check_tokenizer(data: PreparedData, tokenizer: Tokenizer) -> None:

    if not same_tokenizer(data.tokenizer, tokenizer):
        raise ValueError(f"the run's prepared dataset {str(data.dir)!r} has a tokenizer ({data.tokenizer.name}, vocab "
                         f"{data.tokenizer.vocab_size}) other than the checkpoint's ({tokenizer.name}, vocab "
                         f"{tokenizer.vocab_size}); {ELSEWHERE}")
