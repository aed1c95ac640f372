"""Fuzzing the input paths: whatever the config or the data, a failure is a clean user error.

Random YAML documents and ``section.key=value`` overrides (sensible, wrong and garbage) go through
``load_config``; random, malformed and binary files go through ``prepare_data``. Each either works
or raises ValueError / FileNotFoundError with a one-line message (what the CLIs print) — never
another exception type. Run with ``--hypothesis-show-statistics`` to see how many cases ran.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgpt.config import SECTIONS, Config, load_config
from fastgpt.data import DataConfig, prepare_data

USER_ERRORS = (ValueError, FileNotFoundError)
KEYS = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in SECTIONS.items()}

# --- the config parser --------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["3e-4", "1e400", "nan", "-inf", "gelu", "rope", "fsdp", "cuda:0", "auto"]),
)  # fmt: skip
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                            max_size=3), max_leaves=6)
section_names = st.sampled_from(list(SECTIONS)) | st.text(max_size=8)


@st.composite
def sections(draw: st.DrawFn) -> dict:
    """A config-shaped mapping: known sections with known (or near) keys and any values."""
    doc = {}
    for section in draw(st.lists(section_names, max_size=3)):
        keys = st.sampled_from(KEYS.get(section, ["x"])) | st.text(max_size=8)
        doc[section] = draw(st.dictionaries(keys, values, max_size=4) | values)
    return doc


documents = st.one_of(
    sections().map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    values.map(yaml.safe_dump),
    st.text(max_size=60),  # garbage, mostly not YAML
    st.sampled_from(["", "---\n...\n", "model: [1, 2\n", "a: b: c\n", "!!python/object:os.system {}\n", "\t- x"]),
)


@st.composite
def overrides(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(max_size=30))  # anything at all
    section = draw(section_names)
    key = draw(st.sampled_from(KEYS.get(section, ["x"])) | st.text(max_size=8))
    value = draw(st.text(max_size=12) | scalars.map(lambda v: yaml.safe_dump(v).removesuffix("\n...\n").strip()))
    return f"{section}.{key}={value}"


def _assert_clean(exc: BaseException) -> None:
    assert isinstance(exc, USER_ERRORS), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert message.strip() and "\n" not in message.strip(), f"not one line: {message!r}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents, items=st.lists(overrides(), max_size=3))
def test_config_parser_fails_cleanly(document: str, items: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.yaml"
        path.write_text(document)
        try:
            cfg = load_config(path, items)
        except Exception as exc:  # noqa: BLE001 - the point is to see every type
            _assert_clean(exc)
        else:
            assert isinstance(cfg, Config)


# --- data preparation ---------------------------------------------------------------------

text = st.text(max_size=80)
records = st.dictionaries(st.sampled_from(["text", "tweet", "id", ""]), scalars | values, max_size=3)
jsonl = st.lists(records.map(json.dumps) | text, max_size=6).map("\n".join)  # broken lines among records
csv_text = st.lists(st.lists(text.filter(lambda t: "\r" not in t), max_size=3).map(",".join), max_size=5)
contents = st.one_of(
    st.tuples(st.just(".txt"), text.map(str.encode)),
    st.tuples(st.just(".jsonl"), jsonl.map(str.encode)),
    st.tuples(st.just(".json"), st.one_of(st.lists(records).map(json.dumps), text).map(str.encode)),
    st.tuples(st.just(".csv"), csv_text.map(lambda rows: ("text\n" if rows and rows[0] else "") + "\n".join(rows))
              .map(str.encode)),
    st.tuples(st.sampled_from([".txt", ".jsonl", ".json", ".csv"]), st.binary(max_size=60)),  # junk
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=contents, tokenizer=st.sampled_from(["char", "byte"]), column=st.sampled_from(["text", "tweet"]))
def test_data_preparation_fails_cleanly(content: tuple[str, bytes], tokenizer: str, column: str) -> None:
    suffix, data = content
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(data)
        cfg = DataConfig(dataset=str(path), tokenizer=tokenizer, text_column=column, cache_dir=f"{tmp}/cache",
                         num_workers=1)  # fmt: skip
        try:
            prepared = prepare_data(cfg, progress=False)
        except Exception as exc:  # noqa: BLE001 - the point is to see every type
            _assert_clean(exc)
            assert path.name in str(exc), f"the message does not name the file: {exc}"
        else:
            assert prepared.train_count + prepared.val_count > 0
