"""Instruction fine-tuning data (``data.mode=sft``): JSONL rows -> conversations -> tokens and a loss mask.

Every non-blank line of a ``.jsonl`` file in ``data.dataset`` is one example, in one of three shapes
(other fields are ignored):

* ``{"prompt": ..., "response": ...}``
* Alpaca: ``{"instruction": ..., "input": ..., "output": ...}`` (``input`` may be missing or empty;
  otherwise it follows the instruction after a blank line)
* chat: ``{"messages": [{"role": "system" | "user" | "assistant", "content": ...}, ...]}`` with at
  least one assistant message

The first two become a user message and an assistant message, so all three shapes give the same
tokens for the same content. Each conversation goes through the chat template
(``fastgpt.data.chat_template``); the loss mask is 1 on assistant tokens only. The validation split
is ``data.val_fraction`` of each file's rows, chosen by ``data.seed``. A bad row raises one
ValueError naming the file, the line and what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fastgpt.config import DataConfig
from fastgpt.data.chat_template import ROLES, ChatTemplate, marker, render_text, resolve_template
from fastgpt.tokenizers import Tokenizer, build_tokenizer, path_exists

SHAPES = "{prompt, response}, {instruction, input, output} or {messages: [{role, content}, ...]}"
MASK_SUFFIX = "_mask.bin"  # <split>_mask.bin: uint8, 1 where the token is trained on


def conversation(row: object) -> list[dict[str, str]]:
    """The messages of one JSONL row in any of the three shapes; ValueError says what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a JSON object, got {type(row).__name__}")
    shapes = [keys for keys in (("prompt", "response"), ("instruction", "output"), ("messages",))
              if any(k in row for k in keys)]
    if len(shapes) != 1:
        found = "fields of several shapes" if shapes else f"fields {sorted(row)[:6]}"
        raise ValueError(f"a row must be one of {SHAPES}; it has {found}")
    keys = shapes[0]
    if keys == ("messages",):
        return _messages(row["messages"])
    fields = (*keys, "input") if keys[0] == "instruction" else keys
    for key in fields:
        if key in keys and key not in row:
            raise ValueError(f"field {key!r} is missing")
        if key in row and not isinstance(row[key], str):
            raise ValueError(f"field {key!r} must be a string, got {type(row[key]).__name__}")
    user = row[keys[0]] + (f"\n\n{row['input']}" if row.get("input") else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row[keys[1]]}]


def _messages(messages: object) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("field 'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be an object with role one of {', '.join(ROLES)} and a "
                             f"string content, got {json.dumps(m)[:80]}")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError("'messages' has no assistant message: there is nothing to train on")
    return out


def read_conversations(path: str) -> list[tuple[int, list[dict[str, str]]]]:
    """(line number, messages) of every non-blank line of the JSONL file ``path``."""
    file = Path(path).expanduser()
    if file.suffix.lower() != ".jsonl":
        raise ValueError(f"data.mode=sft reads .jsonl files of {SHAPES}; data.dataset entry {path!r} is not one")
    if not path_exists(path) or not file.is_file():
        raise FileNotFoundError(f"data.dataset file {path!r} does not exist")
    rows = []
    for number, raw in enumerate(file.read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            rows.append((number, conversation(json.loads(raw.decode("utf-8")))))
        except UnicodeDecodeError:
            raise ValueError(f"{path}:{number}: not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:  # json's decoder on deeply nested arrays or objects
            raise ValueError(f"{path}:{number}: nested too deeply to read") from None
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
    if not rows:
        raise ValueError(f"data.dataset file {path!r} has no rows")
    return rows


def split_rows(n: int, val_fraction: float, seed: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val) of a file of ``n`` rows: ``val_fraction`` of them (at least one row when
    the fraction is positive, and never all) are validation rows, chosen by ``seed``."""
    k = min(max(round(n * val_fraction), 1 if val_fraction > 0 else 0), n - 1)
    val = np.sort(np.random.default_rng(seed).permutation(n)[:k])
    return np.setdiff1d(np.arange(n), val), val


def cache_settings(cfg: DataConfig) -> dict:
    """What besides the sources and tokenizer decides sft's prepared files (part of the cache key)."""
    settings: dict = {"mode": "sft", "chat_template": cfg.chat_template}
    if cfg.chat_template not in ("auto", "default") and path_exists(cfg.chat_template):
        stat = Path(cfg.chat_template).expanduser().stat()
        settings.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    return settings


def write_sft(cfg: DataConfig, directory: Path) -> tuple[Tokenizer, np.dtype, dict[str, int]]:
    """Tokenize ``cfg``'s JSONL files into ``directory``: ``<split>.bin``, ``<split>_docs.npy`` (one
    document per example) and ``<split>_mask.bin``; returns the tokenizer (with its chat template),
    the token dtype and the counts for the manifest."""
    if cfg.weights is not None:
        raise ValueError("data.weights does not apply to data.mode=sft (every row of every file is used)")
    files = [read_conversations(source) for source in cfg.sources]
    jinja = resolve_template(cfg.chat_template, cfg.tokenizer)
    rows = []
    for i, file in enumerate(files):
        if cfg.sample_ratio < 1.0:
            k = max(1, round(len(file) * cfg.sample_ratio))
            file = [file[j] for j in np.sort(np.random.default_rng([cfg.seed, i]).permutation(len(file))[:k])]
        rows.append(file)
    texts = [render_text(messages, jinja) for file in rows for _, messages in file]
    tokenizer = build_tokenizer(cfg.tokenizer, [*texts, *map(marker, ROLES)], cfg.vocab_size, cfg.simplify)
    tokenizer.chat_template = jinja
    template = ChatTemplate(tokenizer)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    splits: dict[str, list[tuple[list[int], list[int]]]] = {"train": [], "val": []}
    for i, (source, file) in enumerate(zip(cfg.sources, rows, strict=True)):
        train, val = split_rows(len(file), cfg.val_fraction, [cfg.seed, i])
        for split, indices in (("train", train), ("val", val)):
            for j in indices:
                number, messages = file[j]
                try:
                    splits[split].append(template.encode(messages))
                except ValueError as exc:
                    raise ValueError(f"{source}:{number}: {exc}") from None
    counts = {}
    for split, examples in splits.items():
        ids = [t for example_ids, _ in examples for t in example_ids]
        np.array(ids, dtype=dtype).tofile(directory / f"{split}.bin")
        np.array([m for _, mask in examples for m in mask], dtype=np.uint8).tofile(directory / f"{split}{MASK_SUFFIX}")
        offsets = np.concatenate([[0], np.cumsum([len(example_ids) for example_ids, _ in examples])])
        np.save(directory / f"{split}_docs.npy", offsets.astype(np.int64))
        counts.update({f"{split}_tokens": len(ids), f"{split}_rows": len(examples)})
    return tokenizer, dtype, counts


def loss_mask(directory: Path, split: str, tokens: int) -> np.ndarray:
    """``split``'s loss mask, uint8, shape (tokens,)."""
    if tokens == 0:
        return np.zeros(0, dtype=np.uint8)
    return np.memmap(directory / f"{split}{MASK_SUFFIX}", dtype=np.uint8, mode="r")


def cut_note(offsets: np.ndarray, block_size: int) -> str | None:
    """A line saying how many examples (document ``offsets``, shape (D + 1,)) a row of ``block_size + 1``
    tokens cuts, losing the end of their responses; None when none is."""
    lengths = np.diff(offsets)
    cut = int((lengths > block_size + 1).sum())
    if not cut:
        return None
    return (f"{cut} of {len(lengths)} training examples are longer than model.block_size + 1 = {block_size + 1} "
            f"tokens (the longest has {int(lengths.max())}): their ends are cut and not trained on")
