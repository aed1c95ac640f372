"""Device names (fastgpt.device): what this machine lacks is refused saying why, auto says what it took,
and the trainer prints its device and dtype before it trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastgpt import device as dev
from fastgpt.ops import available_backends
from fastgpt.train import cli as train_mod
from tests.tiny_run import tiny_args

MISSING = [kind for kind in dev.ACCELERATORS if dev.unavailable_reason(kind) is not None]


@pytest.mark.parametrize("kind", MISSING)
def test_a_missing_accelerator_is_refused_with_the_reason(kind: str) -> None:
    for name in (kind, f"{kind}:0"):
        with pytest.raises(ValueError) as err:
            dev.resolve_device(name, "--device")
        assert str(err.value) == (f"--device={name!r}: {kind} is not available on this machine "
                                  f"({dev.unavailable_reason(kind)}); use cpu or auto")


@pytest.mark.parametrize("name", ["gpu", "", "cuda:-1", "cuda:x", 3, None])
def test_what_is_no_device_name_is_refused(name: object) -> None:
    with pytest.raises(ValueError, match=r"is not a device \(auto, cpu, cuda, cuda:N, mps, xpu, xpu:N\)"):
        dev.resolve_device(name, "train.device")


def test_types_fastgpt_does_not_run_on_are_refused() -> None:
    with pytest.raises(ValueError, match=r"train.device='meta': meta is not available .*fastgpt runs on cpu, cuda"):
        dev.resolve_device("meta", "train.device")
    with pytest.raises(ValueError, match=r"names cpu device 1 but 1 are visible"):
        dev.resolve_device("cpu:1", "train.device")


@pytest.mark.skipif(len(MISSING) < len(dev.ACCELERATORS), reason="this machine has an accelerator")
def test_auto_on_a_machine_without_accelerators_is_the_cpu_and_says_why() -> None:
    assert dev.resolve_device("auto", "train.device") == torch.device("cpu")
    line = dev.choice_line("auto", torch.device("cpu"))
    assert line.startswith("train.device=auto: cpu (no accelerator here; cuda: ")
    for kind in dev.ACCELERATORS:
        assert f"{kind}: {dev.unavailable_reason(kind)}" in line


@pytest.mark.parametrize("kind", ["mps", "xpu"])
def test_only_the_torch_path_runs_on_other_accelerators(kind: str) -> None:
    reasons = available_backends(torch.device(kind))
    assert reasons["torch"] is None
    assert f"(tensors are on {kind})" in reasons["cuda"] and f"(tensors are on {kind})" in reasons["triton"]


def test_training_prints_its_device_and_dtype_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the king and queen walk by night to see a ghost upon the wall\n" * 40)
    train_mod.main(tiny_args(corpus, tmp_path / "out", "train.dtype=float32", "train.max_iters=1"))
    lines = capsys.readouterr().err.splitlines()
    device, dtype = lines.index("train.device=cpu: cpu"), lines.index("train.dtype=float32")
    assert device + 1 == dtype and dtype < next(i for i, line in enumerate(lines) if line.startswith("iter 0"))
