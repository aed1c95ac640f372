"""YAML configs and section.key=value overrides: types, unknown keys, presets, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fastgpt.config import load_config, parse_override
from fastgpt.presets import PRESETS

CONFIGS = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))


def test_defaults_and_overrides_are_typed() -> None:
    cfg = load_config(
        None,
        [
            "train.max_iters=7",
            "optim.lr=3e-4",
            "model.n_kv_head=2",
            "data.dataset=[a.txt, b.txt]",
            "train.epochs=1",
            "model.bias=false",
            "logging.run_name=null",
        ],
    )
    assert cfg.train.max_iters == 7 and cfg.optim.lr == 3e-4 and cfg.model.n_kv_head == 2
    assert cfg.data.dataset == ["a.txt", "b.txt"] and cfg.train.epochs == 1.0 and cfg.model.bias is False
    assert isinstance(cfg.train.epochs, float) and cfg.logging.run_name is None


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.max_iter=5", "unknown config key train.max_iter; did you mean train.max_iters"),
        ("trian.max_iters=5", "unknown config section 'trian'; did you mean train"),
        ("train.lr=0.1", "unknown config key train.lr; did you mean optim.lr?"),
        ("optim.warmup=5", "unknown config key optim.warmup; did you mean optim.warmup_iters"),
        ("model.max_iters=5", "unknown config key model.max_iters; did you mean train.max_iters?"),
        ("train.max_iters=five", "train.max_iters must be int, got 'five'"),
        ("train.max_iters=1.5", "train.max_iters must be int, got 1.5"),
        ("model.bias=3", "model.bias must be bool"),
        ("train.dtype=fp8", "train.dtype='fp8' is not one of float32, bfloat16, float16"),
        ("optim.scheduler=cyclic", "optim.scheduler='cyclic' is not one of"),
        ("model.n_head=5", "model.n_embd=768 must be divisible by model.n_head=5"),
        ("max_iters=5", "must look like section.key=value"),
        ("data.val_fraction=1.5", "data.val_fraction"),
    ],
)
def test_bad_overrides_name_the_problem(override: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        load_config(None, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_file_with_preset_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"preset": "gpt2", "n_layer": 2}, "train": {"batch_size": 3}}))
    cfg = load_config(path, ["train.batch_size=4"])
    assert cfg.model.n_layer == 2 and cfg.model.n_embd == 768 and cfg.train.batch_size == 4
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("model: [1, 2\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        load_config(path)
    path.write_text("train:\n  max_iters: 3\n  eval_iters: a: b\n")
    with pytest.raises(ValueError) as err:
        load_config(path)
    assert f"config file {str(path)!r} is not valid YAML at line 3, column 16: mapping values" in str(err.value)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must map section names"):
        load_config(path)
    path.write_text("model: {preset: gpt5}\n")
    with pytest.raises(ValueError, match="unknown preset 'gpt5'"):
        load_config(path)


def test_parse_override_values_are_yaml() -> None:
    assert parse_override("optim.lr=0.001") == ("optim", "lr", 1e-3)
    assert parse_override("data.dataset=x.txt") == ("data", "dataset", "x.txt")
    assert parse_override("train.compile=true") == ("train", "compile", True)


def test_saved_config_loads_back(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.n_layer=3", "data.dataset=[a, b]", "data.weights=[1, 2]"])
    cfg.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path: Path) -> None:
    load_config(path)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_one_override_away(name: str) -> None:
    from fastgpt import GPT

    assert load_config(None, [f"model.preset={name}"]).model == GPT.from_preset(name, device="meta").config


@pytest.mark.parametrize("key", ["\n", "a\nb", "", " x"])
def test_an_unknown_key_with_odd_characters_is_quoted_on_one_line(key: str) -> None:
    with pytest.raises(ValueError) as err:
        load_config(None, [], base={"model": {key: None}})
    assert str(err.value).startswith(f"unknown config key model.{key!r}; ") and "\n" not in str(err.value)
