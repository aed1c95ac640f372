"""Crafted files that used to hang a CLI or end it in a traceback: one ``error:`` line now, exit 2.

* a chat template whose rendering never ends or grows without bound (nested ``range(100000)`` loops,
  loops over a long string, a gigabyte ``*``, a huge ``**``, an endless output), met by
  ``generate --chat`` (a checkpoint's chat_template.json) and by SFT data preparation
  (``data.chat_template=FILE``); these run as real processes under a timeout, so a hang fails the test;
* a tokenizer_meta.json naming special tokens outside the vocabulary, or fields of the wrong type;
* JSON nested 100000 deep in tokenizer_meta.json, chat_template.json, a Hugging Face config.json and the
  tokenizer_config.json that ``data.chat_template`` names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_run import tiny_args as _args

import fastgpt
from fastgpt import generate as generate_mod
from fastgpt.tokenizers import build_tokenizer, load_tokenizer
from fastgpt.train import cli as train_mod

DEEP = "[" * 100_000
TIMEOUT = 90  # seconds a CLI process may take (a bounded one takes a few)
COSTLY_TEMPLATES = {
    "nested ranges": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "three nested ranges": ("{% for i in range(9999) %}{% for j in range(9999) %}{% for k in range(9999) %}"
                            "{% endfor %}{% endfor %}{% endfor %}"),
    "loops over a string": ("{% set s = 'ab' * 50000 %}{% for i in s %}{% for j in s %}{% endfor %}{% endfor %}"
                            "{% for m in messages %}{{ m['content'] }}{% endfor %}"),
    "a gigabyte string": "{{ 'a' * 10 ** 9 }}",
    "a huge power": "{{ 10 ** (10 ** 10) }}",
    "endless output": "{% for i in range(10000) %}{{ 'x' * 10000 }}{% endfor %}",
}
REASONS = {"nested ranges": "range(100000) has more than 10000 items", "three nested ranges": "took more than 2 s",
           "loops over a string": "took more than 2 s", "a gigabyte string": "a * result would hold more than",
           "a huge power": "has more than 4096 digits", "endless output": "rendered more than"}  # fmt: skip


def _cli(*argv: str, cwd: Path) -> str:
    """Run ``python -m fastgpt ARGV`` (the fastgpt this test imports); check that it failed with one
    ``error:`` line (exit 2) and return it."""
    env = {**os.environ, "PYTHONPATH": str(Path(fastgpt.__file__).parents[1])}
    try:
        done = subprocess.run([sys.executable, "-m", "fastgpt", *argv], capture_output=True, text=True,
                              timeout=TIMEOUT, cwd=cwd, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"python -m fastgpt {argv[0]} ran past {TIMEOUT} s")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and sum(line.startswith("error:") for line in lines) == 1
    return lines[-1]


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the trained run (out_dir, its latest checkpoint) for one test to spoil."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out, out / (out / "latest").read_text().strip()


@pytest.mark.parametrize("case", list(COSTLY_TEMPLATES))
def test_a_costly_template_stops_sft_preparation(tmp_path: Path, case: str) -> None:
    rows = tmp_path / "chat.jsonl"
    rows.write_text(json.dumps({"prompt": "hi", "response": "ok"}) + "\n")
    template = tmp_path / "t.jinja"
    template.write_text(COSTLY_TEMPLATES[case])
    line = _cli("train", f"data.dataset={rows}", "data.mode=sft", f"data.chat_template={template}",
                f"data.cache_dir={tmp_path / 'cache'}", f"train.out_dir={tmp_path / 'out'}", "train.device=cpu",
                cwd=tmp_path)
    assert line.startswith("error: the chat template failed: ") and REASONS[case] in line


def test_a_costly_template_stops_generate_chat(run, tmp_path: Path) -> None:
    out, ckpt = run
    saved = {"template": COSTLY_TEMPLATES["nested ranges"], "bos_token": None, "eos_token": None}
    (ckpt / "chat_template.json").write_text(json.dumps(saved))
    line = _cli("generate", "--checkpoint", str(out), "--chat", "--prompt", "hi", "--max_new_tokens", "2",
                "--device", "cpu", cwd=tmp_path)
    assert line == "error: --prompt: the chat template failed: range(100000) has more than 10000 items"


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved bpe tokenizer (tokenizer_meta.json kind hf, and its tokenizer.json)."""
    folder = tmp_path_factory.mktemp("bpe")
    build_tokenizer("bpe", ["the king and queen walk by night"] * 20, vocab_size=300).save(folder)
    return folder


@pytest.mark.parametrize("field", ["eot", "pad", "bos"])
@pytest.mark.parametrize("value", ["<|not-a-token|>", 5, -1, 1.5, [0], True, {"id": 0}])
def test_special_tokens_outside_the_vocabulary_are_refused(bpe_folder: Path, tmp_path: Path, field, value) -> None:
    folder = tmp_path / "tok"
    shutil.copytree(bpe_folder, folder)
    meta = json.loads((folder / "tokenizer_meta.json").read_text())
    (folder / "tokenizer_meta.json").write_text(json.dumps({**meta, field: value}))
    with pytest.raises(ValueError) as exc:
        load_tokenizer(folder)
    assert str(exc.value) == (f"{folder / 'tokenizer_meta.json'}: field {field!r} must be a token of "
                              f"{folder / 'tokenizer.json'}, got {value!r}")


@pytest.mark.parametrize("meta,field", [
    ({"kind": "char", "name": "char", "chars": 5}, "chars"),
    ({"kind": "char", "name": "char", "chars": "aab"}, "chars"),
    ({"kind": "char", "name": "char", "chars": ["a", "b"]}, "chars"),
    ({"kind": "char", "name": None, "chars": "ab"}, "name"),
    ({"kind": "char", "name": "char"}, "chars"),
    ({"kind": ["char"], "name": "char", "chars": "ab"}, "kind"),
    ({"kind": "tiktoken", "name": "../gpt2"}, "name"),
])  # fmt: skip
def test_a_bad_tokenizer_meta_field_is_one_error_line(run, cli_error, meta: dict, field: str) -> None:
    out, ckpt = run
    (ckpt / "tokenizer_meta.json").write_text(json.dumps(meta))
    line = cli_error(generate_mod.main, ["--checkpoint", str(out), "--max_new_tokens", "2", "--device", "cpu"])
    assert f"{ckpt / 'tokenizer_meta.json'}: field {field!r} must be" in line


@pytest.mark.parametrize("name", ["tokenizer_meta.json", "chat_template.json"])
def test_deep_json_in_a_tokenizer_folder_is_one_error_line(run, cli_error, name: str) -> None:
    out, ckpt = run
    (ckpt / name).write_text(DEEP)
    line = cli_error(generate_mod.main, ["--checkpoint", str(out), "--max_new_tokens", "2", "--device", "cpu"])
    assert f"{ckpt / name} is not JSON fastgpt reads: it is nested too deeply" in line


def test_a_bad_chat_template_json_field_names_file_and_field(run, cli_error) -> None:
    out, ckpt = run
    (ckpt / "chat_template.json").write_text(json.dumps({"template": "{{ 1 }}", "eos_token": 7}))
    line = cli_error(generate_mod.main, ["--checkpoint", str(out), "--chat", "--prompt", "hi", "--device", "cpu"])
    assert f"{ckpt / 'chat_template.json'}: field 'eos_token' must be a string or null, got 7" in line


def test_deep_json_in_a_hugging_face_config_is_one_error_line(corpus: Path, tmp_path: Path, cli_error) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(DEEP)
    line = cli_error(train_mod.main, [*_args(corpus, tmp_path / "out"), f"train.init_from=hf:{folder}"])
    assert line == f"error: {str(folder)!r}: config.json is nested too deeply to read"


def test_deep_json_in_a_tokenizer_config_is_one_error_line(corpus: Path, tmp_path: Path, cli_error) -> None:
    rows = tmp_path / "chat.jsonl"
    rows.write_text(json.dumps({"prompt": "hi", "response": "ok"}) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(DEEP)
    line = cli_error(train_mod.main, [*_args(rows, tmp_path / "out"), "data.mode=sft",
                                      f"data.chat_template={tmp_path / 'tokenizer_config.json'}"])
    assert line == (f"error: data.chat_template: {tmp_path / 'tokenizer_config.json'} is not JSON fastgpt reads: "
                    "it is nested too deeply")
