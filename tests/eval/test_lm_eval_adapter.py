"""The lm-evaluation-harness model ``fastgpt``: its three request types against plain computations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

from fastgpt.eval.lm_eval_adapter import FastGPTLM  # noqa: E402
from fastgpt.generate import generate  # noqa: E402
from fastgpt.model import GPT, GPTConfig  # noqa: E402
from fastgpt.tokenizers import ByteTokenizer  # noqa: E402
from fastgpt.train.checkpoint import save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random byte-level model with a context of 8 tokens, saved as a checkpoint."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=258, block_size=8, n_layer=2, n_head=2, n_embd=32, init_gain=20.0)
    out = tmp_path_factory.mktemp("lm_eval") / "out"
    save_checkpoint(out, 0, GPT(config), ByteTokenizer(), {"model": vars(config)}, {})
    return out


def _requests(kind: str, *args: tuple) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def _logprob(model: GPT, tokens: list[int], scored: int) -> float:
    """Sum of log p of the last ``scored`` tokens, one forward over all of them."""
    with torch.no_grad():
        logp = model(torch.tensor([tokens[:-1]]))[0][0].log_softmax(-1)
    return sum(logp[t - 1, tokens[t]].item() for t in range(len(tokens) - scored, len(tokens)))


def test_registered_and_built_from_model_args(checkpoint: Path) -> None:
    lm = get_model("fastgpt").create_from_arg_string(f"checkpoint={checkpoint},batch_size=3",
                                                     {"batch_size": 1, "device": None, "max_batch_size": None})
    assert isinstance(lm, FastGPTLM) and lm.batch_size == 3 and lm.device.type in ("cpu", "cuda")


def test_loglikelihood(checkpoint: Path) -> None:
    lm = FastGPTLM(checkpoint=str(checkpoint), device="cpu", batch_size=2)
    out = lm.loglikelihood(_requests("loglikelihood", ("ab", "cd"), ("abc ", "d"), ("", "xy"), ("0123456789", "z")))
    model = lm.model
    want = [_logprob(model, [97, 98, 99, 100], 2), _logprob(model, [97, 98, 99, 32, 100], 2),
            _logprob(model, [256, 120, 121], 2), _logprob(model, [*b"23456789z"], 1)]  # cropped to 9 tokens
    assert [lp for lp, _ in out] == pytest.approx(want, abs=1e-5)
    assert all(isinstance(greedy, bool) for _, greedy in out)


def test_loglikelihood_rolling_predicts_each_token_once(checkpoint: Path) -> None:
    lm = FastGPTLM(checkpoint=str(checkpoint), device="cpu", batch_size=3)
    text = "abcdefghijklmnopqrst"  # 20 tokens after eot: windows predict 0-7, 8-15, then 16-19 with full context
    (got,) = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", (text,)))
    tokens = [256, *text.encode()]
    want = (_logprob(lm.model, tokens[0:9], 8) + _logprob(lm.model, tokens[8:17], 8)
            + _logprob(lm.model, tokens[12:21], 4))
    assert got == pytest.approx(want, abs=1e-4)
    (short,) = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", ("abc",)))
    assert short == pytest.approx(_logprob(lm.model, [256, 97, 98, 99], 3), abs=1e-5)


def test_generate_until_stops_at_the_first_stop_string(checkpoint: Path) -> None:
    lm = FastGPTLM(checkpoint=str(checkpoint), device="cpu")
    ids = list(generate(lm.model, list(b"hello"), 12, greedy=True, eot_id=256))
    assert 256 not in ids and ids[3] == 60  # this seed's model: no eot, and "<" is the 1st and 4th byte
    full = ByteTokenizer().decode(ids)
    requests = _requests("generate_until", ("hello", {"until": [full[3:5]], "max_gen_toks": 12}),
                         ("hello", {"until": ["never"], "max_gen_toks": 5}))
    assert lm.generate_until(requests) == [full[:3], ByteTokenizer().decode(ids[:5])]


def _shards_only(checkpoint: Path, folder: Path) -> Path:
    """A copy of ``checkpoint`` whose weights are DCP shards alone (as an FSDP run saves them)."""
    import shutil

    import torch.distributed.checkpoint as dcp

    from fastgpt import load

    shutil.copytree(checkpoint, folder)
    ckpt = folder / (folder / "latest").read_text().strip()
    model, _ = load(checkpoint)
    dcp.save({"model": model.state_dict()}, checkpoint_id=ckpt / "sharded", no_dist=True)
    (ckpt / "model.safetensors").unlink()
    return ckpt


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_dcp_shards_are_read_only_on_an_explicit_true(checkpoint: Path, tmp_path: Path) -> None:
    """DCP's .metadata is a pickle: the adapter reads it only for allow_pickle=true (a bool or lm_eval's string)."""
    _shards_only(checkpoint, tmp_path / "run")
    for value in (False, "false", "False", "1", "yes", ""):
        with pytest.raises(ValueError, match="holds DCP shards only, whose .metadata is a pickle"):
            FastGPTLM(checkpoint=str(tmp_path / "run"), device="cpu", allow_pickle=value)
    want = FastGPTLM(checkpoint=str(checkpoint), device="cpu").model
    x = torch.tensor([[256, 97, 98]])
    for value in (True, "true", "True"):
        lm = FastGPTLM(checkpoint=str(tmp_path / "run"), device="cpu", allow_pickle=value)
        with torch.no_grad():
            torch.testing.assert_close(lm.model(x)[0], want(x)[0], rtol=0, atol=0)
    lm = get_model("fastgpt").create_from_arg_string(f"checkpoint={tmp_path / 'run'},allow_pickle=true",
                                                     {"batch_size": 1, "device": "cpu", "max_batch_size": None})
    assert isinstance(lm, FastGPTLM)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_planted_pickle_is_not_run_without_the_option(checkpoint: Path, tmp_path: Path) -> None:
    from malicious import plant_pickle

    ckpt = _shards_only(checkpoint, tmp_path / "run")
    marker = tmp_path / "ran"
    plant_pickle(ckpt / "sharded" / ".metadata", marker)
    for value in (False, "false", "0"):
        with pytest.raises(ValueError, match="allow_pickle=True"):
            FastGPTLM(checkpoint=str(tmp_path / "run"), device="cpu", allow_pickle=value)
    assert not marker.exists()
