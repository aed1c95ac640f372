"""A checkpoint whose weights hold a NaN or an inf is refused when loaded: generate, eval and export (real
processes) print one ``error:`` line naming the file and the first such tensor, and ``fastgpt.load`` raises.

The checkpoint is the tiny run's, its model.safetensors rewritten with one value spoiled.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file
from test_cli_faults import _error

import fastgpt
from fastgpt.checkpoint import CheckpointError

SPOILED = "blocks.0.mlp.c_fc.weight"  # the tensor given a non-finite value; those before it stay finite


def _spoil(trained: Path, tmp_path: Path, value: float) -> tuple[Path, Path]:
    """A copy of the trained run whose latest checkpoint has ``value`` at one place of ``SPOILED``."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    ckpt = out / (out / "latest").read_text().strip()
    file = ckpt / "model.safetensors"
    with safe_open(str(file), "pt") as f:
        metadata, tensors = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    tensors[SPOILED][1, 2] = value
    save_file(tensors, str(file), metadata=metadata)
    for pointer in ("best", "latest"):  # every way to the run names the spoiled checkpoint
        (out / pointer).write_text(ckpt.name)
    return out, ckpt


COMMANDS = {
    "generate": lambda run, tmp: ["generate", "--checkpoint", str(run), "--prompt", "the", "--max_new_tokens", "4",
                                  "--device", "cpu"],
    "eval": lambda run, tmp: ["eval", "--checkpoint", str(run), "--data", f"val_loss={tmp / 'text.txt'}",
                              "--device", "cpu"],
    "export": lambda run, tmp: ["export", "--checkpoint", str(run), "--out", str(tmp / "hf")],
}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_checkpoint_with_non_finite_weights_is_refused(trained: Path, tmp_path: Path, command: str,
                                                         value: float) -> None:
    run, ckpt = _spoil(trained, tmp_path, value)
    (tmp_path / "text.txt").write_text("the king and the queen\n")
    line = _error(*COMMANDS[command](run, tmp_path), cwd=tmp_path)
    assert line == (f"error: checkpoint {str(ckpt)!r}: its model.safetensors holds non-finite weights, first in "
                    f"{SPOILED} (1 of 1,024 values are NaN or inf); the run diverged before this save: use one of "
                    "its earlier checkpoints")
    assert not (tmp_path / "hf").exists()  # export wrote nothing


def test_fastgpt_load_refuses_non_finite_weights(trained: Path, tmp_path: Path) -> None:
    run, ckpt = _spoil(trained, tmp_path, math.nan)
    with pytest.raises(CheckpointError, match=rf"its model.safetensors holds non-finite weights, first in {SPOILED} "):
        fastgpt.load(str(run))
    model, _ = fastgpt.load(str(trained))  # the unspoiled run loads
    assert model is not None


def test_sharded_weights_with_a_nan_are_refused(trained: Path, tmp_path: Path) -> None:
    import torch
    import torch.distributed.checkpoint as dcp

    run, ckpt = _spoil(trained, tmp_path, 0.0)
    model, _ = fastgpt.load(str(run))
    with torch.no_grad():
        model.get_parameter(SPOILED)[1, 2] = math.nan
    dcp.save({"model": model.state_dict()}, checkpoint_id=ckpt / "sharded", no_dist=True)
    (ckpt / "model.safetensors").unlink()  # shards only, as train.parallel=fsdp saves them
    line = _error(*COMMANDS["generate"](run, tmp_path), "--allow_pickle", cwd=tmp_path)
    assert line.startswith(f"error: checkpoint {str(ckpt)!r}: its sharded/ holds non-finite weights, first in "
                           f"{SPOILED} (1 of 1,024 values"), line


def test_resume_refuses_non_finite_weights(trained: Path, tmp_path: Path) -> None:
    run, ckpt = _spoil(trained, tmp_path, math.inf)
    line = _error("train", "--resume", f"train.out_dir={run}", "train.max_iters=9", cwd=tmp_path)
    assert line == (f"error: cannot resume {str(ckpt)!r}: its weights are not finite (or past ~1e19); the run "
                    "diverged before this save: resume one of its earlier checkpoints with --resume=ckpt-NNNNNN")
