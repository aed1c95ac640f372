"""``python -m fastgpt.train``'s command line: --resume with the run's own config, overrides around the
flags, --print-config, --help."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_run import tiny

from fastgpt.config import load_config
from fastgpt.train import cli as train_mod
from fastgpt.train.recipes import default_recipe
from fastgpt.train.schedule import lr_factor

# far from the defaults in every section: a resume that fell back on any default would not fit
TINY = tiny("optim.lr=0.01", "train.log_interval=1", "train.eval_interval=2", "train.max_iters=4")


def _args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.dataset={corpus}", f"data.cache_dir={corpus.parent / 'cache'}", f"train.out_dir={out}",
            *extra]  # fmt: skip


@pytest.fixture(scope="module")
def finished(corpus: Path) -> Path:
    """A run of 4 steps, checkpoints at 2 and 4."""
    out = corpus.parent / "finished"
    train_mod.main(_args(corpus, out))
    return out


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run, to resume."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_continues_the_runs_own_config(run: Path, capsys: pytest.CaptureFixture) -> None:
    train_mod.main(["--resume", f"train.out_dir={run}", "train.max_iters=6", "optim.lr=0.005"])
    err = capsys.readouterr().err
    assert "resume: train.max_iters 4 -> 6" in err and "resume: optim.lr 0.01 -> 0.005" in err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["n_embd"] == 16 and saved["train"]["max_iters"] == 6 and saved["optim"]["lr"] == 0.005
    cfg = load_config(run / "config.yaml")
    lrs = {e["iter"]: e["lr"] for e in _events(run) if "lr" in e}
    assert set(lrs) == {1, 2, 3, 4, 5, 6}
    for it in (5, 6):  # the new peak rate and the new length set the schedule from the first resumed step
        assert lrs[it] == pytest.approx(0.005 * lr_factor(it, cfg.optim, 6), rel=1e-6)


def test_resume_refuses_what_cannot_change_mid_run(run: Path, corpus: Path, cli_error) -> None:
    line = cli_error(train_mod.main, ["--resume", f"train.out_dir={run}", "model.n_embd=32"])
    assert "model.n_embd cannot change when resuming (the run has 16, given 32)" in line
    assert "train.max_iters" in line  # and says what may change
    line = cli_error(train_mod.main, ["--resume", f"train.out_dir={run}", "train.seed=3"])
    assert line.startswith("error: train.seed cannot change")
    assert "data.dataset cannot change" in cli_error(train_mod.main, ["--resume", f"train.out_dir={run}",
                                                                       "data.dataset=other.txt"])
    # the same value as the run's is no change: the original command line plus --resume works
    train_mod.main(["--resume", *_args(corpus, run, "train.max_iters=5")])
    assert _events(run)[-1]["iter"] == 5


@pytest.mark.parametrize("made", [False, True], ids=["missing", "empty"])
def test_resume_of_a_missing_or_empty_folder_fails_before_the_data(corpus: Path, tmp_path: Path, cli_error,
                                                                     made: bool) -> None:
    out = tmp_path / "nothing"
    if made:
        out.mkdir()
    cache = tmp_path / "cache"
    line = cli_error(train_mod.main, ["--resume", *_args(corpus, out, f"data.cache_dir={cache}")])
    assert f"train.out_dir={str(out)!r}" in line and "no run to --resume" in line
    assert ("holds no checkpoint (it is empty)" if made else "does not exist") in line
    assert not cache.exists()  # nothing was tokenized


def test_overrides_before_and_after_the_flags(run: Path, corpus: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("train: {max_iters: 3, eval_iters: 7}\n")
    capsys.readouterr()
    train_mod.main(["train.batch_size=5", "--config", str(config), "train.eval_iters=9", "--print-config"])
    printed = yaml.safe_load(capsys.readouterr().out)["train"]
    assert (printed["batch_size"], printed["max_iters"], printed["eval_iters"]) == (5, 3, 9)
    train_mod.main(["train.max_iters=9", "--resume", f"train.out_dir={run}", "train.eval_interval=3",
                    "--print-config"])
    printed = yaml.safe_load(capsys.readouterr().out)["train"]
    assert (printed["max_iters"], printed["eval_interval"], printed["batch_size"]) == (9, 3, 2)
    train_mod.main(["train.max_iters=9", "--resume=best", f"train.out_dir={run}", "--print-config"])
    assert yaml.safe_load(capsys.readouterr().out)["train"]["max_iters"] == 9


def test_print_config_prints_the_resolved_config_and_touches_nothing(corpus: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    args = _args(corpus, tmp_path / "out", f"data.cache_dir={tmp_path / 'cache'}", "model.preset=gpt2")
    assert train_mod.main([*args, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == load_config(None, args, base=default_recipe()).to_dict()  # the recipe, then the overrides
    assert printed["model"]["n_embd"] == 16 and printed["model"]["vocab_size"] == 50257  # gpt2's, and ours
    assert list(tmp_path.iterdir()) == []  # no out_dir, no cache, no lock


def _unsized(corpus: Path, out: Path) -> list[str]:
    """The tiny run's arguments less its model keys."""
    return [a for a in _args(corpus, out) if not a.startswith("model.")]


def _trained_model(out: Path) -> dict:
    """The model section a finished run saved, checked against its weights' shapes."""
    from safetensors import safe_open

    ckpt = max(out.glob("ckpt-*"))
    model = yaml.safe_load((ckpt / "config.yaml").read_text())["model"]
    with safe_open(str(ckpt / "model.safetensors"), "pt") as weights:
        blocks = {m.group(1) for name in weights.keys() if (m := re.match(r"(?:.*\.)?blocks\.(\d+)\.", name))}
        widths = {weights.get_slice(name).get_shape()[-1] for name in ("ln_f.norm.weight", "lm_head.weight")}
    assert len(blocks) == model["n_layer"] and widths == {model["n_embd"]}
    return model


def test_a_preset_on_the_command_line_replaces_the_recipes_model(corpus: Path, tmp_path: Path) -> None:
    # the CPU recipe sets n_layer 4, n_embd 128, dropout 0 and bias false; the preset's own values win,
    # and a model key given beside the preset (before or after it) applies on top
    args = [*_unsized(corpus, tmp_path / "out"), "train.max_iters=1", "model.n_embd=48",
            "model.preset=shakespeare-char", "model.block_size=16"]
    train_mod.main(["--recipe", "cpu", *args])
    model = _trained_model(tmp_path / "out")
    assert (model["n_layer"], model["n_head"], model["n_embd"], model["block_size"]) == (6, 6, 48, 16)
    assert (model["dropout"], model["bias"]) == (0.2, False)


def test_a_preset_on_the_command_line_replaces_a_config_files_model(corpus: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: {preset: gpt2, n_layer: 3, n_head: 4, n_embd: 32}\ntrain: {max_iters: 1}\n")
    args = [*_unsized(corpus, tmp_path / "out"), "model.preset=babyjoey", "model.n_embd=24", "model.block_size=16"]
    train_mod.main(["--config", str(config), *args])
    model = _trained_model(tmp_path / "out")
    # babyjoey is 4 x 4 x 256 with dropout 0.1: the file's n_layer 3 and n_head 4 are gone with its preset
    assert (model["n_layer"], model["n_head"], model["n_embd"], model["dropout"]) == (4, 4, 24, 0.1)


def test_a_preset_in_a_config_file_takes_the_files_model_keys_on_top(corpus: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: {preset: babyjoey, n_layer: 2, n_embd: 24, block_size: 16}\ntrain: {max_iters: 1}\n")
    train_mod.main(["--config", str(config), *_unsized(corpus, tmp_path / "out")])
    model = _trained_model(tmp_path / "out")
    assert (model["n_layer"], model["n_head"], model["n_embd"], model["dropout"]) == (2, 4, 24, 0.1)


def test_help_lists_every_key_with_its_default(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        train_mod.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "train.max_iters=2000" in out and "optim.lr=0.001" in out and "data.dataset=shakespeare" in out
    assert "model.n_kv_head=null" in out and "--print-config" in out and "--resume may change" in out
    line = next(line for line in out.splitlines() if "train.log_interval=" in line)
    assert "log the training loss every N steps" in line  # the field's comment beside it
    assert "``" not in out


def _run(*argv: str, cwd: Path | None = None) -> tuple[int, str]:
    """Exit code and stderr (a pipe) of ``python -m fastgpt ...``; bytes decoded as they are, since text
    mode would turn every carriage return into a newline."""
    proc = subprocess.run([sys.executable, "-m", "fastgpt", *argv], capture_output=True, timeout=300, cwd=cwd)
    return proc.returncode, proc.stderr.decode()


def test_off_a_terminal_a_plain_line_per_log_interval_and_no_carriage_returns(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = _args(corpus, out, f"data.cache_dir={tmp_path / 'cache'}", "train.max_iters=6", "train.log_interval=2",
                 "train.eval_interval=6")
    code, err = _run("train", *args)  # stderr a pipe, as under | tee, nohup or CI
    assert code == 0, err[-2000:]
    assert "\r" not in err  # no bar: neither the tokenizing one nor the training one
    steps = re.findall(r"^iter (\d+): loss [\d.]+, lr [\d.e-]+, ([\d,]+) tokens/s$", err, re.M)
    assert [int(it) for it, _ in steps] == [2, 4, 6], err
    assert all(re.fullmatch(r"\d{1,3}(,\d{3})*", tps) for _, tps in steps)  # 131,072, never 1.31e+05
    code, err = _run("eval", "--checkpoint", str(out), "--device", "cpu", cwd=corpus.parent)
    assert code == 0 and "\r" not in err, err[-2000:]


def test_keep_checkpoints_in_a_real_run(run: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "kept"
    train_mod.main(_args(corpus, out, "train.max_iters=10", "train.keep_checkpoints=3"))  # saves at 2, 4, ..., 10
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-000006", "ckpt-000008", "ckpt-000010"]
    # resumed from 6 (keep_checkpoints may change; going back needs train.overwrite=true): 8 and 10 belong
    # to the branch given up, pruned at the first save
    train_mod.main(["--resume=ckpt-000006", f"train.out_dir={out}", "train.max_iters=8", "train.keep_checkpoints=2",
                    "train.overwrite=true"])  # fmt: skip
    assert "resume: train.keep_checkpoints 3 -> 2" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-000006", "ckpt-000008"]
    assert (out / "latest").read_text().strip() == "ckpt-000008"


def test_dtype_auto_in_a_real_run_is_measured_logged_and_saved(corpus: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "auto"  # no train.dtype: the default, auto; a model big enough to be measured
    train_mod.main(_args(corpus, out, "model.n_embd=64", "model.block_size=32", "train.batch_size=16",
                         "train.max_iters=2"))
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train.dtype=auto: ")]
    chosen = line.split()[1]
    assert chosen in ("float32", "bfloat16") and "(training steps, tokens/s: fp32 " in line and "bf16 " in line
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["dtype"] == chosen
    assert yaml.safe_load((out / "ckpt-000002" / "config.yaml").read_text())["train"]["dtype"] == chosen
    # a resumed run trains in the dtype chosen; train.dtype=auto stands for that choice, no change
    train_mod.main(["--resume", f"train.out_dir={out}", "train.dtype=auto", "train.max_iters=3"])
    err = capsys.readouterr().err
    assert "train.dtype=auto:" not in err and "resume: train.dtype" not in err and "resume: train.max_iters" in err
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["dtype"] == chosen


def test_resume_after_the_dataset_changed_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the king and queen walk by night to see a ghost upon the wall\n" * 40)
    out = tmp_path / "out"
    train_mod.main(_args(corpus, out))
    train_mod.main(["--resume", f"train.out_dir={out}", "train.max_iters=5"])
    assert "warning" not in capsys.readouterr().err  # the same data: exact, nothing to say
    with corpus.open("a") as f:
        f.write("a ghost upon the wall walks by night\n" * 10)
    train_mod.main(["--resume", f"train.out_dir={out}", "train.max_iters=6"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "the dataset's files changed since ckpt-000005" in warnings[0]
    assert "no longer exactly" in warnings[0] and _events(out)[-1]["iter"] == 6
