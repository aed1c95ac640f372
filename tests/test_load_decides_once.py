"""``fastgpt.load`` decides once whether a checkpoint is sharded and reads what it decided.

It used to ask ``is_sharded`` twice, once to refuse shards without ``allow_pickle`` and once to pick the
reader, so a ``model.safetensors`` renamed away between the two made it unpickle ``sharded/.metadata``.
Here a pickle that touches a marker lies in ``sharded/`` beside ``model.safetensors`` (never to be read):

* deterministically, the probe answers the truth once and "sharded" every time after, as the renamed file
  would make it: the load reads model.safetensors, asks once, and runs nothing;
* for real, a second process renames model.safetensors away and back while the test loads the checkpoint
  again and again: every load gives the model or a CheckpointError, and the marker never appears.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from malicious import plant_pickle
from safetensors.torch import load_file

from fastgpt import checkpoint
from fastgpt.checkpoint import CheckpointError


@pytest.fixture
def planted(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the trained run's latest checkpoint with a code-running ``sharded/.metadata``; the marker."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    ckpt = run / (run / "latest").read_text().strip()
    marker = tmp_path / "ran"
    plant_pickle(ckpt / "sharded" / ".metadata", marker)
    return ckpt, marker


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_the_sharded_probe_is_asked_once(planted, monkeypatch: pytest.MonkeyPatch, allow_pickle: bool) -> None:
    ckpt, marker = planted
    real, answers = checkpoint.is_sharded, []

    def flips(folder: Path) -> bool:
        """The truth the first time (not sharded: model.safetensors is there), then what a file renamed away
        right after that would make it say."""
        answers.append(real(folder) if not answers else True)
        return answers[-1]

    monkeypatch.setattr(checkpoint, "is_sharded", flips)
    model, _ = checkpoint.load(ckpt, allow_pickle=allow_pickle)
    assert answers == [False], f"is_sharded asked {len(answers)} times: {answers}"
    saved = load_file(str(ckpt / "model.safetensors"))
    assert all(torch.equal(p, saved[name]) for name, p in model.state_dict().items() if name in saved)
    assert not marker.exists()


RENAMER = textwrap.dedent("""
    import os, sys, time
    file, away, seconds = sys.argv[1], sys.argv[1] + ".away", float(sys.argv[2])
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        os.rename(file, away)
        os.rename(away, file)
""")


def test_a_file_renamed_during_loads_never_unpickles(planted) -> None:
    ckpt, marker = planted
    renamer = subprocess.Popen([sys.executable, "-c", RENAMER, str(ckpt / "model.safetensors"), "30"])
    outcomes = {"model": 0, "refused": 0}
    try:
        for _ in range(200):
            try:
                checkpoint.load(ckpt)
                outcomes["model"] += 1
            except CheckpointError:  # the file was away when looked for, or while read
                outcomes["refused"] += 1
            assert not marker.exists(), f"the planted pickle ran after {outcomes}"
    finally:
        renamer.kill()
        renamer.wait()
    away = ckpt / "model.safetensors.away"
    if away.exists():
        away.rename(ckpt / "model.safetensors")
    assert outcomes["model"] + outcomes["refused"] == 200
