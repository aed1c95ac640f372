"""``python -m fastgpt.eval --checkpoint RUN`` scores the run's own validation split wherever its dataset lies
(an absolute data.dataset, eval run from another folder): from the prepared files still in its cache, else
prepared again from the dataset; a dataset that is gone is one error line. Nothing of the checkpoint is
unpickled, nothing is written outside eval's own cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from malicious import Payload
from tiny_run import CORPUS, tiny_args

from fastgpt.checkpoint import load, resolve_checkpoint
from fastgpt.data.prepare import PreparedData
from fastgpt.eval import evaluate as eval_mod
from fastgpt.eval.evaluate import evaluate_loss
from fastgpt.train import cli as train_mod


def _prepared(cache: Path) -> PreparedData:
    (folder,) = [f for f in cache.iterdir() if (f / "manifest.json").is_file()]
    return PreparedData.open(folder)


def _direct_val_loss(run: Path, cache: Path) -> float:
    """The loss of the run's model over its prepared val.bin, scored directly."""
    model, tok = load(run)
    return evaluate_loss(model, _prepared(cache).val_tokens(), batch_size=16, tokenizer=tok)["loss"]


def _eval(run: Path, out: Path, *extra: str) -> dict:
    assert eval_mod.main(["--checkpoint", str(run), "--device", "cpu", "--output", str(out), *extra]) == 0
    return json.loads(out.read_text())["val_loss"]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current folder holding neither the run, its dataset nor its cache."""
    here = tmp_path / "elsewhere"
    here.mkdir()
    monkeypatch.chdir(here)
    return here


@pytest.fixture
def own_run(tmp_path: Path) -> dict:
    """A fresh tiny run (data.dataset an absolute path) this test may take its dataset and cache away from."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "corpus.txt").write_text(CORPUS)
    train_mod.main(tiny_args(data / "corpus.txt", tmp_path / "run"))
    return {"run": tmp_path / "run", "corpus": data / "corpus.txt", "cache": data / "cache",
            "loss": _direct_val_loss(tmp_path / "run", data / "cache")}


def test_a_run_with_an_absolute_dataset_is_scored_on_its_val_split(trained: Path, corpus: Path,
                                                                  elsewhere: Path) -> None:
    cache = corpus.parent / "cache"
    before = _files(cache)
    got = _eval(trained, elsewhere / "r.json")
    want = _prepared(cache)
    assert got["tokens"] == want.val_count - 1
    assert got["loss"] == pytest.approx(_direct_val_loss(trained, cache), rel=1e-6)
    assert _files(elsewhere) == {"r.json"} and _files(cache) == before  # read from the run's cache, nothing written


def test_after_the_cache_is_deleted_the_split_is_prepared_again(own_run: dict, elsewhere: Path, capsys) -> None:
    shutil.rmtree(own_run["cache"])
    capsys.readouterr()
    got = _eval(own_run["run"], elsewhere / "r.json")
    assert got["loss"] == pytest.approx(own_run["loss"], rel=1e-6)  # the same tokens: the same split
    assert "preparing its validation split again from data.dataset=" in capsys.readouterr().err
    assert not own_run["cache"].exists()  # prepared into data_cache here, not into the run's cache_dir
    assert (elsewhere / "data_cache").is_dir()
    assert _direct_val_loss(own_run["run"], elsewhere / "data_cache") == pytest.approx(own_run["loss"], rel=1e-6)


def test_a_gone_dataset_is_scored_from_the_cache_else_one_error_line(own_run: dict, elsewhere: Path,
                                                                    cli_error) -> None:
    own_run["corpus"].unlink()
    got = _eval(own_run["run"], elsewhere / "r.json")  # the prepared files the run trained on, by its saved hash
    assert got["loss"] == pytest.approx(own_run["loss"], rel=1e-6)
    shutil.rmtree(own_run["cache"])
    line = cli_error(eval_mod.main, ["--checkpoint", str(own_run["run"]), "--device", "cpu"])
    assert f"data.dataset={str(own_run['corpus'])!r} is gone" in line
    assert "--data val_loss=FILE" in line and not (elsewhere / "data_cache").exists()


def test_a_changed_dataset_keeps_the_runs_split_while_cached(own_run: dict, elsewhere: Path, capsys) -> None:
    own_run["corpus"].write_text(CORPUS.replace("ghost", "wall") * 2)  # other text, other mtime
    got = _eval(own_run["run"], elsewhere / "r.json")
    assert got["loss"] == pytest.approx(own_run["loss"], rel=1e-6)  # still the split the run trained with
    shutil.rmtree(own_run["cache"])
    capsys.readouterr()
    got = _eval(own_run["run"], elsewhere / "r.json")
    assert "its dataset's files changed since" in capsys.readouterr().err
    assert got["loss"] == pytest.approx(_direct_val_loss(own_run["run"], elsewhere / "data_cache"), rel=1e-6)


def test_the_saved_data_hash_is_read_without_unpickling(trained: Path, tmp_path: Path) -> None:
    from fastgpt.eval.run_data import saved_data_hash

    ckpt = resolve_checkpoint(trained)
    digest = torch.load(ckpt / "state.pt", weights_only=True)["data_hash"]  # a run of this test's own
    assert saved_data_hash(ckpt) == digest
    marker = tmp_path / "ran"
    (tmp_path / "ckpt").mkdir()
    torch.save({"payload": Payload(marker), "data_hash": digest, "after": Payload(marker)},
               tmp_path / "ckpt" / "state.pt")
    assert saved_data_hash(tmp_path / "ckpt") == digest and not marker.exists()
    torch.save({"data_hash": Payload(marker)}, tmp_path / "ckpt" / "state.pt")
    assert saved_data_hash(tmp_path / "ckpt") is None and not marker.exists()
    (tmp_path / "ckpt" / "state.pt").write_bytes(os.urandom(300))
    assert saved_data_hash(tmp_path / "ckpt") is None
