"""Fuzzing what a user or a file hands the package beyond the config parser (``test_fuzz.py``):
config values pushed through the pre-flight checks, generate's command-line arguments, and the
contents of a checkpoint's config.yaml, tokenizer_meta.json and state.pt. Each case either works
or fails with one line of ValueError / FileNotFoundError (SystemExit 2 from a CLI): never another
exception, and never a hang (small examples, each bounded in time).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastgpt
from fastgpt.__main__ import run
from fastgpt.config import load_config
from fastgpt.generate import main as generate_main
from fastgpt.preflight import check_backends, check_memory
from fastgpt.train import cli as train_mod

USER_ERRORS = (ValueError, FileNotFoundError)
CPU = torch.device("cpu")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

numbers = st.one_of(
    st.integers(-3, 3), st.sampled_from([0, 1, 7, 2**16, 2**31, 2**63, 10**30, -(2**31)]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["", "x", "1e-45", "nan", "[1]", "{a: 1}"]),
)  # fmt: skip
SIZE_KEYS = ["model.n_layer", "model.n_embd", "model.n_head", "model.block_size", "model.vocab_size",
             "model.ffn_dim", "model.init_gain", "model.dropout", "model.preset", "model.attn_backend",
             "train.batch_size", "train.grad_accum_steps", "train.eval_iters", "train.max_iters", "train.device",
             "train.sample_tokens", "optim.step_size", "optim.gamma", "optim.lr", "data.vocab_size",
             "data.special_token_weight", "data.num_workers"]  # fmt: skip


def _one_line(exc: BaseException) -> None:
    assert isinstance(exc, USER_ERRORS), f"{type(exc).__name__}: {exc}"
    assert str(exc).strip() and "\n" not in str(exc).strip(), repr(str(exc))


@FAST
@given(items=st.lists(st.tuples(st.sampled_from(SIZE_KEYS), numbers), min_size=1, max_size=4))
def test_config_values_fail_before_anything_is_allocated(items: list[tuple[str, object]]) -> None:
    overrides = [f"{key}={yaml.safe_dump(value).removesuffix(chr(10) + '...' + chr(10)).strip()}"
                 for key, value in items]  # fmt: skip
    try:
        cfg = load_config(None, overrides)
        check_backends(cfg.model, CPU)
        check_memory(cfg, CPU)
    except Exception as exc:  # noqa: BLE001 - the point is to see every type
        _one_line(exc)


def _exit_code(main, argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            run(main, argv)
        except SystemExit as stop:
            return int(stop.code or 0), err.getvalue()
    return 0, err.getvalue()


flag_values = st.one_of(numbers.map(str), st.text(max_size=6))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flags=st.lists(st.tuples(st.sampled_from(["--temperature", "--top_k", "--top_p", "--max_new_tokens",
                                                 "--num_samples", "--seed", "--device", "--prompt"]), flag_values),
                      max_size=4))  # fmt: skip
def test_generate_arguments(trained: Path, flags: list[tuple[str, str]]) -> None:
    argv = ["--checkpoint", str(trained), "--device", "cpu", "--max_new_tokens", "3"]
    for flag, value in flags:
        if flag in ("--max_new_tokens", "--num_samples") and value.lstrip("-").isdigit() and int(value) > 5:
            value = "5"  # a valid, small amount: the point is the parsing, not generating for hours
        argv += [f"{flag}={value}"]
    code, err = _exit_code(generate_main, argv)
    assert "Traceback" not in err and code in (0, 2), err[-1500:]
    if code == 2:  # ours, or argparse's "prog: error: ..." after its usage
        assert len([line for line in err.splitlines() if line.startswith("error:") or ": error: " in line]) == 1, err


json_values = st.recursive(st.none() | st.booleans() | numbers.filter(lambda v: v == v) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=5)
MODEL_KEYS = ["vocab_size", "block_size", "n_layer", "n_head", "n_embd", "norm", "activation", "dropout",
              "pos_encoding", "tie_weights", "init_gain", "n_kv_head", "x"]  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.dictionaries(st.sampled_from(MODEL_KEYS), json_values, max_size=3),
       meta=st.one_of(st.none(), st.dictionaries(st.sampled_from(["kind", "chars", "name", "eot", "x"]), json_values,
                                                  max_size=3)),
       state=st.one_of(st.none(), st.dictionaries(st.sampled_from(["iter", "best_val", "nonfinite", "rng", "loader",
                                                                    "optimizer", "scheduler"]), json_values,
                                                   max_size=3)))  # fmt: skip
def test_checkpoint_contents(trained: Path, model: dict, meta: dict | None, state: dict | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        shutil.copytree(trained, out)
        ckpt = out / (out / "latest").read_text().strip()
        config = yaml.safe_load((ckpt / "config.yaml").read_text())
        config["model"].update(model)
        (ckpt / "config.yaml").write_text(yaml.safe_dump(config))
        if meta is not None:
            saved = json.loads((ckpt / "tokenizer_meta.json").read_text())
            (ckpt / "tokenizer_meta.json").write_text(json.dumps({**saved, **meta}))
        try:
            fastgpt.load(str(out))
        except Exception as exc:  # noqa: BLE001 - the point is to see every type
            _one_line(exc)
        if state is not None:
            torch.save({**torch.load(ckpt / "state.pt", weights_only=True), **state}, ckpt / "state.pt")
            code, err = _exit_code(train_mod.main, ["--resume", f"train.out_dir={out}", "train.max_iters=3",
                                                    *_run_args(config)])
            assert "Traceback" not in err and code in (0, 2), err[-1500:]


def _run_args(config: dict) -> list[str]:
    """The saved run's data and size settings as overrides, so that --resume finds the same run."""
    d, t = config["data"], config["train"]
    return [f"data.dataset={d['dataset']}", f"data.cache_dir={d['cache_dir']}", "train.device=cpu",
            f"train.batch_size={t['batch_size']}", "train.eval_iters=1", "train.sample_tokens=0",
            *(f"model.{k}={json.dumps(v)}" for k, v in config["model"].items() if v is not None)]
