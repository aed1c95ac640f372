"""Nothing read from a file runs code or leads outside the folders the user named.

Each test builds a malicious file for real: a pickle whose ``__reduce__`` creates a marker file
(as state.pt, as DCP's ``sharded/.metadata``, as an HF ``pytorch_model.bin``), pointers naming
``../elsewhere``, an absolute path or a symlink out, an HF folder whose config asks for its own code,
a checkpoint config sending eval's data preparation elsewhere. Every loader goes through its public
entry point (``fastgpt.load``, the CLIs via ``fastgpt.__main__.run``); the marker must stay absent and
the failure be one ``error:`` line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from malicious import Payload
from malicious import plant_pickle as _plant
from tiny_run import tiny_args as _args

import fastgpt
from fastgpt import generate as generate_mod
from fastgpt.eval import evaluate as eval_mod
from fastgpt.hf import export as export_mod
from fastgpt.train import cli as train_mod
from fastgpt.train.convert import main as convert_main


def test_pickled_state_is_refused_not_run(run_copy, corpus: Path, tmp_path: Path, cli_error) -> None:
    out, ckpt = run_copy
    marker = tmp_path / "ran"
    _plant(ckpt / "state.pt", marker)
    line = cli_error(train_mod.main, ["--resume", *_args(corpus, out, "train.max_iters=4")])
    assert "has an unreadable state.pt" in line and not marker.exists()
    torch.save({"x": Payload(marker)}, ckpt / "state.pt")  # the same object inside a torch.save zip
    assert "has an unreadable state.pt" in cli_error(train_mod.main, ["--resume", *_args(corpus, out)])
    assert not marker.exists()


def test_dcp_metadata_beside_safetensors_is_never_read(run_copy, corpus: Path, tmp_path: Path, capsys) -> None:
    out, ckpt = run_copy
    marker = tmp_path / "ran"
    _plant(ckpt / "sharded" / ".metadata", marker)
    fastgpt.load(str(out))
    fastgpt.load(str(out), allow_pickle=True)  # the option only matters when there are shards alone
    assert generate_mod.main(["--checkpoint", str(out), "--max_new_tokens", "3", "--device", "cpu"]) == 0
    assert eval_mod.main(["--checkpoint", str(out), "--data", f"val_loss={corpus}", "--device", "cpu"]) == 0
    assert export_mod.main(["--checkpoint", str(out), "--out", str(tmp_path / "hf")]) == 0
    assert convert_main(["--checkpoint", str(out), "--out", str(tmp_path / "single")]) == 0
    train_mod.main(["--resume", *_args(corpus, out, "train.max_iters=4")])
    assert not marker.exists()


def test_shards_alone_are_refused_without_the_option(run_copy, tmp_path: Path, cli_error) -> None:
    out, ckpt = run_copy
    marker = tmp_path / "ran"
    (ckpt / "model.safetensors").unlink()
    _plant(ckpt / "sharded" / ".metadata", marker)
    with pytest.raises(ValueError, match="holds DCP shards only, whose .metadata is a pickle") as exc:
        fastgpt.load(str(out))
    assert "\n" not in str(exc.value)
    export = (export_mod.main, ["--out", str(tmp_path / "x")])
    for main, extra in ((generate_mod.main, []), (eval_mod.main, []), export):
        line = cli_error(main, ["--checkpoint", str(out), *extra])
        assert "--allow_pickle" in line and "python -m fastgpt convert" in line
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../elsewhere", "ABSOLUTE", "ckpt-000009", "ckpt-000002/../../elsewhere"])
def test_pointers_stay_inside_the_run_folder(run_copy, corpus: Path, tmp_path: Path, cli_error, name: str) -> None:
    out, ckpt = run_copy
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(ckpt, elsewhere)  # a loadable checkpoint outside the run folder
    (out / "ckpt-000009").symlink_to(elsewhere)  # a symlink inside, leading out
    text = str(elsewhere) if name == "ABSOLUTE" else name
    for pointer in ("latest", "best"):
        (out / pointer).write_text(text + "\n")
    (elsewhere / "model.safetensors").write_bytes(b"not read")  # reading it would fail differently
    for main in (generate_mod.main, eval_mod.main):
        assert "not a ckpt-NNNNNN folder inside" in cli_error(main, ["--checkpoint", str(out)])
    assert "not a ckpt-NNNNNN folder inside" in cli_error(train_mod.main, ["--resume", *_args(corpus, out)])
    line = cli_error(train_mod.main, ["--resume=ckpt-000009", *_args(corpus, out)])
    assert "has no complete checkpoint 'ckpt-000009'" in line


def test_hf_folder_asking_for_its_own_code(tmp_path: Path, corpus: Path) -> None:
    """transformers would import configuration_evil.py given trust_remote_code; asked on a terminal,
    one "y" would. Run with stdin as a pipe holding "y": the folder is refused, and nothing ran."""
    marker = tmp_path / "ran"
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "configuration_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import PretrainedConfig\nclass EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {
        "AutoConfig": "configuration_evil.EvilConfig"}}))
    proc = subprocess.run([sys.executable, "-m", "fastgpt.train", *_args(corpus, tmp_path / "out"),
                           f"train.init_from=hf:{folder}"], input="y\ny\n", capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith("error: ") and "without running the folder's code" in lines[-1]
    assert not marker.exists()


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.safetensors"])
def test_hf_folder_with_pickled_or_corrupt_weights(tmp_path: Path, corpus: Path, cli_error, weights: str) -> None:
    from transformers import GPT2Config

    marker = tmp_path / "ran"
    folder = tmp_path / "hf"
    GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=40).save_pretrained(folder)
    if weights == "pytorch_model.bin":
        _plant(folder / weights, marker)
    else:
        (folder / weights).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    line = cli_error(train_mod.main, [*_args(corpus, tmp_path / "out"), f"train.init_from=hf:{folder}"])
    assert "has unreadable weights" in line
    assert not marker.exists()


def test_eval_keeps_to_the_folders_named(run_copy, corpus: Path, tmp_path: Path, cli_error, monkeypatch) -> None:
    """A checkpoint's config names a dataset and a cache elsewhere: eval reads the dataset (a loss reveals
    nothing of it) but writes nothing there, only into its own cache here."""
    out, ckpt = run_copy
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    secret = tmp_path / "secret.txt"
    secret.write_text(corpus.read_text())  # the same letters: the char tokenizer the checkpoint has
    config = yaml.safe_load((ckpt / "config.yaml").read_text())
    config["data"].update(dataset=str(secret), cache_dir=str(tmp_path / "far" / "cache"))
    (ckpt / "config.yaml").write_text(yaml.safe_dump(config))
    assert eval_mod.main(["--checkpoint", str(out), "--device", "cpu"]) == 0  # read, prepared here
    assert not (tmp_path / "far").exists() and (here / "data_cache").is_dir()
    config["data"].update(dataset=str(tmp_path / "gone.txt"))
    (ckpt / "config.yaml").write_text(yaml.safe_dump(config))
    line = cli_error(eval_mod.main, ["--checkpoint", str(out), "--device", "cpu"])
    assert f"data.dataset={str(tmp_path / 'gone.txt')!r} is gone" in line and not (tmp_path / "far").exists()


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/hostname", "sub/model.safetensors", "missing"])
def test_a_weight_index_names_only_files_beside_it(tmp_path: Path, corpus: Path, cli_error, shard: str) -> None:
    """A sharded HF folder's index.json names its shard files; a name leading out of the folder is refused."""
    from safetensors.torch import save_file
    from transformers import GPT2Config

    folder = tmp_path / "hf"
    GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=40).save_pretrained(folder)
    (folder / "sub").mkdir()
    for outside in (tmp_path / "outside.safetensors", folder / "sub" / "model.safetensors"):
        save_file({"wte.weight": torch.zeros(40, 16)}, str(outside))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": shard}}))
    line = cli_error(train_mod.main, [*_args(corpus, tmp_path / "out"), f"train.init_from=hf:{folder}"])
    assert "has unreadable weights" in line and f"names {shard!r}, which is not a file in" in line


def test_a_sharded_hf_folder_is_read(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from fastgpt.hf.convert import read_hf

    folder = tmp_path / "hf"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=16, vocab_size=40))
    model.save_pretrained(folder, max_shard_size="10KB")
    assert (folder / "model.safetensors.index.json").is_file() and len(list(folder.glob("*.safetensors"))) > 1
    (_, read), (_, expected) = read_hf(str(folder)), read_hf(model)
    assert read.keys() == expected.keys() and all(torch.equal(read[k], expected[k]) for k in expected)
