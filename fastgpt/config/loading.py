"""Run configs: YAML files plus ``section.key=value`` overrides, built into a ``Config``; what
``--resume`` may change, and the key listing of ``--help``.

Every key is type-checked; an unknown one fails with a message naming it and the nearest valid keys
(in any section).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from fastgpt.config.schema import RANGES, SECTIONS, Config, numeric_type
from fastgpt.config.yaml_text import parse as parse_yaml
from fastgpt.config.yaml_text import read_text as read_yaml_text
from fastgpt.messages import cut, cut_path
from fastgpt.presets import preset_fields

# what ``--resume`` may change: settings that leave the saved state meaning what it meant (how long
# to train, how often to evaluate, log and save, the learning-rate schedule from here on, where it
# runs, the per-rank batch for another number of ranks: keep batch_size x grad_accum_steps x ranks
# to stay exact); every other key keeps the run's saved value ("*": the whole section)
RESUME_CHANGEABLE: dict[str, tuple[str, ...] | str] = {
    "model": ("attn_backend", "norm_backend"),
    "data": ("cache_dir", "num_workers"),
    "train": ("out_dir", "batch_size", "grad_accum_steps", "max_iters", "epochs", "eval_interval", "eval_iters",
              "log_interval", "ckpt_interval", "keep_checkpoints", "sample_tokens", "device", "compile", "grad_clip",
              "overwrite"),
    "optim": ("lr", "min_lr", "muon_lr", "scheduler", "warmup_iters", "lr_decay_iters", "step_size", "gamma"),
    "eval": "*",
    "logging": "*",
}



def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, dict[str, Any]] | None = None) -> Config:
    """Read a YAML config (else ``base``, else the defaults), apply ``section.key=value`` overrides, validate."""
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        raw = read_yaml(Path(path))
    elif base is not None:
        raw = {section: dict(values) for section, values in base.items()}
    return build_config(apply_overrides(raw, overrides or []))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``raw`` (nested dicts, changed in place and returned) with each ``section.key=value`` set.

    A ``model.preset=NAME`` among them replaces raw's model section (a recipe's or a config file's
    model keys); the other ``model.*`` overrides apply on top of the preset, in any order.
    """
    parsed = [parse_override(item) for item in overrides]
    if ("model", "preset") in {(section, key) for section, key, _ in parsed}:
        raw["model"] = {}
    for section, key, value in parsed:
        if raw.get(section) is None:
            raw[section] = {}
        if not isinstance(raw[section], dict):
            raise ValueError(f"config section {cut(section)} must be a mapping of keys to values, "
                             f"got {type(raw[section]).__name__}")
        raw[section][key] = value
    return raw


def resume_config(saved: dict[str, Any], given: dict[str, Any], source: str) -> tuple[Config, list[str]]:
    """The config a resumed run continues with: its ``saved`` one, changed by the ``given`` keys (a
    ``--config`` file and overrides, nested dicts) where ``RESUME_CHANGEABLE`` allows; and one line per
    setting changed (``train.max_iters 5000 -> 8000``).

    A given key equal to the saved value changes nothing; ``train.overwrite`` is false unless given
    (it lets this command go back to an earlier checkpoint, not later ones); ``model.vocab_size`` is
    the tokenizer's, as in a new run; ``train.dtype=auto`` stands for the dtype the run chose when it started; the
    run folder a LoRA run's base came from stands for the checkpoint it recorded. Any other change raises
    ValueError naming the key. ``source`` names the saved config in errors.
    """
    try:
        before = build_config(saved)
    except ValueError as exc:
        raise ValueError(f"{source} does not load: {exc}") from None
    merged = {name: dict(values) for name, values in before.to_dict().items()}
    merged["train"]["overwrite"] = before.train.overwrite = False  # a permission of one command, not kept
    for section, values in given.items():
        if section not in SECTIONS:
            raise ValueError(f"unknown config section {cut(section)}{_near(section, SECTIONS)}")
        values = _section_values(section, values)
        if section == "model":
            values.pop("vocab_size", None)
        if section == "train" and values.get("dtype") == "auto":
            values.pop("dtype")
        if section == "train" and _same_base(values.get("init_from"), before):
            values.pop("init_from")
        merged[section].update(values)
    after = build_config(merged)
    changes = []
    for section, values in after.to_dict().items():
        old = before.to_dict()[section]
        for key, value in values.items():
            if value == old[key]:
                continue
            allowed = RESUME_CHANGEABLE[section]
            if allowed != "*" and key not in allowed:
                raise ValueError(f"{section}.{key} cannot change when resuming (the run has {cut(old[key])}, "
                                 f"given {cut(value)}); --resume may change only {changeable_on_resume()}")
            changes.append(f"{section}.{key} {cut(old[key])} -> {cut(value)}")
    return after, changes


def _same_base(given: Any, saved: Config) -> bool:
    """True when ``given`` (the run folder or checkpoint typed again) names the base a LoRA run recorded:
    its checkpoint folder's absolute path (``fastgpt.train.init_from``)."""
    base = saved.train.init_from
    if not saved.train.lora_rank or not isinstance(given, str) or given.startswith("hf:") or \
            not Path(base).is_absolute():
        return False
    try:
        path = Path(given).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # a name too long, an unknown ~user, a NUL
        return False
    return path in (Path(base), Path(base).parent)


def changeable_on_resume() -> str:
    """The keys ``--resume`` may change, as one line."""
    return ", ".join(f"{s}.*" if keys == "*" else ", ".join(f"{s}.{k}" for k in keys)
                     for s, keys in RESUME_CHANGEABLE.items() if keys)


def config_reference() -> str:
    """Every config key, section by section, with its default, its range (``RANGES``) and the comment beside
    its field in fastgpt/config/schema.py (what ``python -m fastgpt.train --help`` lists)."""
    lines = []
    for name, cls in SECTIONS.items():
        notes, ranges, hints = _field_comments(cls), RANGES.get(name, {}), typing.get_type_hints(cls)
        lines.append(f"{name}:")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            text = f"  {name}.{f.name}={_plain(default)}"
            allowed = ranges.get(f.name)
            where = (("each " if numeric_type(hints[f.name])[1] else "") + allowed.text()) if allowed else None
            note = "; ".join(part for part in (where, notes.get(f.name)) if part)
            lines.append(f"{text:<33}  {note}" if note else text)
    return "\n".join(lines)


def _field_comments(cls: type) -> dict[str, str]:
    """``name -> comment`` for the fields of ``cls`` written ``name: type = default  # comment``."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source (a frozen install): the keys and defaults alone
        return {}
    names, notes = {f.name for f in dataclasses.fields(cls)}, {}
    for line in source.splitlines():
        match = re.match(r"\s+(\w+):[^#]*#\s*(.+)", line)
        if match and match.group(1) in names and match.group(1) not in notes:
            notes[match.group(1)] = match.group(2).replace("`", "")
    return notes


def _plain(value: Any) -> str:
    """A default as it is typed on the command line: null, true, 0.001, [], out."""
    return value if isinstance(value, str) else json.dumps(value)


def build_config(raw: dict[str, Any]) -> Config:
    """A Config from nested dicts; unknown sections or keys and wrong types raise ValueError."""
    for section in raw:
        if section not in SECTIONS:
            raise ValueError(f"unknown config section {cut(section)}{_near(section, SECTIONS)}")
    sections = {}
    for name, cls in SECTIONS.items():
        sections[name] = _make(cls, name, _section_values(name, raw.get(name) or {}))
    return Config(**sections)


def _section_values(section: str, values: Any) -> dict[str, Any]:
    """A copy of one section's ``key: value`` mapping, a model ``preset`` expanded into its fields."""
    if not isinstance(values, dict):
        raise ValueError(f"config section {cut(section)} must be a mapping of keys to values, "
                         f"got {type(values).__name__}")
    values = dict(values)
    if section == "model" and "preset" in values:
        values = {**preset_fields(str(values.pop("preset"))), **values}
    return values


def parse_override(item: str) -> tuple[str, str, Any]:
    """'train.lr=3e-4' -> ('train', 'lr', 0.0003); the value is parsed as YAML."""
    key, sep, value = item.partition("=")
    section, dot, name = key.partition(".")
    if not sep or not dot or not section or not name:
        raise ValueError(f"override {cut(item)} must look like section.key=value (e.g. train.max_iters=100)")
    if value == "":
        return section, name, ""
    try:
        return section, name, parse_yaml(value)
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())[:120]
        raise ValueError(f"override {cut(item)}: the value is not valid YAML ({reason})") from None


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML config file as nested dicts (not yet checked); errors name the file (and the line)."""
    if not path.exists():
        raise FileNotFoundError(f"config file {cut_path(path)} does not exist")
    text = read_yaml_text(path, "config file")
    try:
        data = parse_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark, context = exc.problem_mark, f" ({exc.context})" if exc.context else ""
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"config file {cut_path(path)} is not valid YAML{where}: {exc.problem}{context}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {cut_path(path)} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {cut_path(path)} must map section names to mappings, got {type(data).__name__}")
    return data


def _make(cls: type, section: str, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        if key not in names:
            plain = key.isprintable() and key.strip() == key != ""  # else quoted: a newline stays on one line
            raise ValueError(f"unknown config key {section}.{cut(key, quote=not plain)}{_near_key(section, key)}")
        values[key] = _coerce(f"{section}.{key}", value, hints[key])
    return cls(**values)


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the type hint ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except ValueError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"{name} must be a list, got {cut(value)}")
        return [_coerce(name, v, item) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping, got {cut(value)}")
        return {str(k): str(v) for k, v in value.items()}
    if tp is float and isinstance(value, int | float | str) and not isinstance(value, bool):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            number = float(value)
        except OverflowError:  # an int beyond float's range
            number = math.inf
        except ValueError:
            number = None  # not a number: the type error below
        if number is not None:
            if not math.isfinite(number):
                raise ValueError(f"{name} must be a finite number, got {cut(value)}")
            return number
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ValueError(f"{name} must be {tp.__name__}, got {cut(value)} ({type(value).__name__})")


def _near(name: str, valid: typing.Iterable[str]) -> str:
    near = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(near)}?" if near else f"; valid sections: {', '.join(valid)}"


def _near_key(section: str, key: str) -> str:
    """'; did you mean ...?' for the unknown ``section.key``: the same key in another section first
    (``train.lr``: ``optim.lr``), then close keys in its own section, then close ones elsewhere."""
    fields = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in SECTIONS.items()}
    same = [f"{other}.{key}" for other, names in fields.items() if other != section and key in names]
    own = [f"{section}.{n}" for n in difflib.get_close_matches(key, fields[section], n=3, cutoff=0.5)]
    elsewhere = [f"{other}.{n}" for other, names in fields.items() if other != section
                 for n in difflib.get_close_matches(key, names, n=2, cutoff=0.8) if n != key]
    near = list(dict.fromkeys(same + own + elsewhere))[:4]
    if near:
        return f"; did you mean {', '.join(near)}?"
    return f"; valid keys: {', '.join(f'{section}.{n}' for n in fields[section])}"


