"""Every numeric config field has its range in one table, ``fastgpt.config.RANGES``, and the CLI enforces
exactly it: a value just outside each bound is one ``error:`` line (exit 2) naming the key, the value and
the range; a value on (or just inside) each bound is accepted. Walked through ``python -m fastgpt.train
section.key=value --print-config`` in-process (``fastgpt.__main__.run``, the path ``python -m`` takes), a few
through a real process.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import typing

import pytest
import yaml

from fastgpt.config import RANGES, SECTIONS, GPTConfig, OptimConfig, Range, config_reference, numeric_type
from fastgpt.messages import cut
from fastgpt.train import cli as train_mod

NUMERIC = [(section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
           if numeric_type(typing.get_type_hints(cls)[f.name])[0] is not None]
# other settings a value on a bound needs to pass the checks that relate several fields
COMPANIONS = {
    ("model", "n_head", "limit"): ["model.n_embd=4096"],
    ("model", "n_kv_head", "limit"): ["model.n_head=4096", "model.n_embd=4096"],
    ("model", "n_embd", "low"): ["model.n_head=1"],
    ("model", "n_embd", "limit"): ["model.n_head=16"],
    ("train", "lora_rank", "limit"): ["train.init_from=hf:base"],
}


def _step(value: float, integer: bool, up: bool) -> float:
    """The next value past ``value``: an int's neighbour, or the next float."""
    if integer:
        return value + 1 if up else value - 1
    return math.nextafter(value, math.inf if up else -math.inf)


def _cases() -> list[tuple[str, str, str, float, float]]:
    """(section, key, which bound, a value just outside it, a value on it or just inside)."""
    cases = []
    for section, fields in RANGES.items():
        hints = typing.get_type_hints(SECTIONS[section])
        for name, allowed in fields.items():
            integer = numeric_type(hints[name])[0] is int
            low, high = allowed.low, allowed.high
            if allowed.low_open:
                cases.append((section, name, "low", low, _step(low, integer, up=True)))
            else:
                cases.append((section, name, "low", _step(low, integer, up=False), low))
            if high is not None and allowed.high_open:
                cases.append((section, name, "high", high, _step(high, integer, up=False)))
            elif high is not None:
                cases.append((section, name, "high", _step(high, integer, up=True), high))
            if allowed.limit is not None:
                cases.append((section, name, "limit", _step(allowed.limit, integer, up=True), allowed.limit))
    return cases


CASES = _cases()
IDS = [f"{section}.{name}-{which}" for section, name, which, _, _ in CASES]


def _typed(section: str, name: str, value: float) -> int | float:
    """``value`` as the CLI reads it into the field: an int or a float."""
    return int(value) if numeric_type(typing.get_type_hints(SECTIONS[section])[name])[0] is int else float(value)


def _override(section: str, name: str, value: float) -> str:
    """``section.name=value`` (``=[value]`` for a list field)."""
    text = repr(_typed(section, name, value))
    listed = numeric_type(typing.get_type_hints(SECTIONS[section])[name])[1]
    return f"{section}.{name}=[{text}]" if listed else f"{section}.{name}={text}"


def test_every_numeric_field_has_a_range() -> None:
    assert len(NUMERIC) >= 48  # the walk finds them (int, float, their lists, with or without None)
    ranged = [(section, name) for section, fields in RANGES.items() for name in fields]
    assert sorted(set(NUMERIC) - set(ranged)) == []  # a numeric field without a range
    assert sorted(set(ranged) - set(NUMERIC)) == []  # a range of no numeric field
    for section, cls in SECTIONS.items():  # every default is inside its range
        defaults = dataclasses.asdict(cls()) if section != "model" else dataclasses.asdict(GPTConfig())
        for name, allowed in RANGES.get(section, {}).items():
            value = defaults[name]
            for item in value if isinstance(value, list) else [] if value is None else [value]:
                assert allowed.error(f"{section}.{name}", item, isinstance(item, int)) is None, (section, name)


@pytest.mark.parametrize("section, name, which, outside, inside", CASES, ids=IDS)
def test_a_value_just_outside_a_bound_is_one_error_line(cli_error, section: str, name: str, which: str,
                                                        outside: float, inside: float) -> None:
    extra = COMPANIONS.get((section, name, which), [])
    override = _override(section, name, outside)
    line = cli_error(train_mod.main, [*extra, override, "--print-config"])
    allowed: Range = RANGES[section][name]
    key, value = f"{section}.{name}" + ("[0]" if override.endswith("]") else ""), _typed(section, name, outside)
    assert key in line and cut(value) in line, line
    if which == "limit":
        assert f"is beyond the limit of {allowed.limit:,}" in line, line
    else:
        one_sided = f"must be {'>' if allowed.low_open else '>='} {allowed.low}"
        assert f"must be in {allowed}" in line if allowed.high is not None else \
            one_sided in line or "must be a positive integer" in line and allowed.low == 1, line
    assert line == f"error: {allowed.error(key, value, isinstance(value, int))}"


@pytest.mark.parametrize("section, name, which, outside, inside", CASES, ids=IDS)
def test_a_value_on_or_just_inside_a_bound_is_accepted(capsys, section: str, name: str, which: str,
                                                       outside: float, inside: float) -> None:
    extra = COMPANIONS.get((section, name, which), [])
    assert train_mod.main([*extra, _override(section, name, inside), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)[section][name]
    assert printed == ([inside] if numeric_type(typing.get_type_hints(SECTIONS[section])[name])[1] else inside)


@pytest.mark.parametrize("override, message", [
    ("optim.weight_decay=-0.1", "optim.weight_decay must be >= 0, got -0.1"),
    ("model.rope_theta=-5", "model.rope_theta must be > 1, got -5.0"),
    ("optim.beta2=1", "optim.beta2 must be in [0, 1), got 1.0"),
])  # fmt: skip
def test_values_that_trained_before_are_refused_by_the_real_cli(override: str, message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "fastgpt.train", override, "--print-config"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"error: {message}"]


@pytest.mark.parametrize("make, message", [
    (lambda: GPTConfig(rope_theta=math.inf), "model.rope_theta must be a finite number, got inf"),
    (lambda: GPTConfig(n_layer="2"), "model.n_layer must be an integer, got '2'"),
    (lambda: GPTConfig(n_layer=True), "model.n_layer must be an integer, got True"),
    (lambda: GPTConfig(dropout=None), "model.dropout must be a number, got None"),
    (lambda: OptimConfig(eps=math.nan), "optim.eps must be a finite number, got nan"),
    (lambda: OptimConfig(lr_decay_iters=None), None),
])  # fmt: skip
def test_dataclasses_built_directly_are_checked(make, message: str | None) -> None:
    """A checkpoint's config.yaml builds the dataclasses without the CLI's type coercion: the same table."""
    if message is None:
        make()
        return
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value) == message


def test_help_lists_each_range_beside_its_key() -> None:
    lines = {line.split("=")[0].strip(): line for line in config_reference().splitlines() if "=" in line}
    assert "in [0, 1); residual dropout" in lines["model.dropout"]
    assert lines["optim.weight_decay"].split(None, 1)[1].startswith(">= 0; on matrices")
    assert "in [1, 2^20]; sequences per micro-batch" in lines["train.batch_size"]
    assert "each > 0; token share" in lines["data.weights"]
    assert all(RANGES[s][n].text() in lines[f"{s}.{n}"] for s, n in NUMERIC)
