"""LoRA on a fastgpt run: ``train.lora_rank=4 train.init_from=RUN``. The adapter run records the base
checkpoint's absolute path (its train.init_from) and its weights' hash (adapters.safetensors), holds no
copy of the base, and loads (fastgpt.load, generate, eval, export, --resume) as base + adapters; a base
moved, re-trained or changed after is refused in one error line naming the path it recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from tiny_run import tiny_args, train_interrupted

from fastgpt import generate as generate_mod
from fastgpt.adapters import ADAPTERS
from fastgpt.checkpoint import load, read_config, resolve_checkpoint
from fastgpt.config import load_config
from fastgpt.data.prepare import PreparedData
from fastgpt.eval import evaluate as eval_mod
from fastgpt.eval.evaluate import evaluate_loss
from fastgpt.hf import export as export_mod
from fastgpt.model import GPT, GPTConfig
from fastgpt.nn.lora import LoRALinear, add_lora, merge_lora
from fastgpt.train import cli as train_mod

TARGETS = "train.lora_targets=[attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj]"


def _lora_args(corpus: Path, out: Path, base: str, *extra: str) -> list[str]:
    return tiny_args(corpus, out, f"train.init_from={base}", "train.lora_rank=4", TARGETS, "optim.lr=0.05",
                     "train.max_iters=4", *extra)


def _base_plus_adapters(base_ckpt: Path, run: Path) -> GPT:
    """The reference: the base checkpoint's weights, the run's adapters added by hand, merged."""
    config = read_config(base_ckpt)["model"]
    model = GPT(GPTConfig(**config))
    model.load_state_dict(load_file(str(base_ckpt / "model.safetensors")), strict=False)
    lora = read_config(resolve_checkpoint(run))["train"]
    add_lora(model, lora["lora_rank"], lora["lora_alpha"], 0.0, lora["lora_targets"])
    adapters = load_file(str(resolve_checkpoint(run) / ADAPTERS))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in adapters:
                p.copy_(adapters[name])
    return merge_lora(model).eval()


def _logits(model: GPT, vocab: int) -> torch.Tensor:
    idx = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(idx)[0]


@pytest.fixture(scope="module")
def lora(trained: Path, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of the tiny trained run as the base, and a 4-step LoRA run on it (from the base's parent
    folder, init_from given relative); the trainer is kept."""
    tmp = tmp_path_factory.mktemp("lora_on_run")
    shutil.copytree(trained, tmp / "base")
    kept = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        run = train_mod.Trainer.run
        mp.setattr(train_mod.Trainer, "run", lambda self: (kept.update(trainer=self), run(self))[1])
        train_mod.main(_lora_args(corpus, tmp / "adapted", "base"))
    return {"tmp": tmp, "run": tmp / "adapted", "base": resolve_checkpoint(tmp / "base", "best").resolve(),
            "trainer": kept["trainer"]}


def test_the_run_records_its_base_and_holds_adapters_only(lora: dict) -> None:
    run, base = lora["run"], lora["base"]
    ckpt = resolve_checkpoint(run)
    assert read_config(ckpt)["train"]["init_from"] == str(base)  # absolute: loads from any folder
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["init_from"] == str(base)
    assert [f.name for f in run.rglob("*.safetensors")] == [ADAPTERS]  # no copy of the base
    assert (ckpt / ADAPTERS).stat().st_size < (base / "model.safetensors").stat().st_size
    model = lora["trainer"].model
    trained = model.state_dict()
    for name, tensor in load_file(str(base / "model.safetensors")).items():  # the base, bit for bit
        assert torch.equal(trained[name], tensor), name
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, _ in model.named_parameters() if n.endswith((".lora_a", ".lora_b"))}  # and frozen


def test_load_generate_and_eval_give_base_plus_adapters(lora: dict, corpus: Path, tmp_path: Path,
                                                       monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # neither the run nor its base lies here
    model, tok = load(lora["run"])
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    want = _logits(_base_plus_adapters(lora["base"], lora["run"]), tok.vocab_size)
    torch.testing.assert_close(_logits(model, tok.vocab_size), want, rtol=1e-5, atol=1e-5)
    lora["trainer"].model.eval()
    torch.testing.assert_close(_logits(lora["trainer"].model, tok.vocab_size), want, rtol=1e-5, atol=1e-5)
    base, _ = load(lora["base"])
    assert (_logits(base, tok.vocab_size) - want).abs().max() > 1e-3  # the adapters moved it off its base

    Path("prompts.txt").write_text("the king\nupon the\n")
    assert generate_mod.main(["--checkpoint", str(lora["run"]), "--prompt_file", "prompts.txt", "--output",
                              "replies.jsonl", "--max_new_tokens", "12", "--greedy", "--device", "cpu"]) == 0
    replies = [json.loads(line) for line in Path("replies.jsonl").read_text().splitlines()]
    for reply in replies:
        ids = list(generate_mod.generate(model, tok.encode(reply["prompt"]), 12, greedy=True, eot_id=tok.eot_id))
        assert reply["response"] == tok.decode([i for i in ids if i != tok.eot_id])
    assert [r["prompt"] for r in replies] == ["the king", "upon the"]

    assert eval_mod.main(["--checkpoint", str(lora["run"]), "--device", "cpu", "--output", "r.json"]) == 0
    (prepared,) = (corpus.parent / "cache").glob("*/manifest.json")  # the run's data, prepared by the base run
    ref = evaluate_loss(model, PreparedData.open(prepared.parent).val_tokens(), batch_size=16)
    assert json.loads(Path("r.json").read_text())["val_loss"]["loss"] == pytest.approx(ref["loss"], rel=1e-6)


def test_merged_export_equals_base_plus_adapters(lora: dict, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert export_mod.main(["--checkpoint", str(lora["run"]), "--out", str(tmp_path / "hf")]) == 0
    exported = GPT.from_hf(str(tmp_path / "hf"))
    want = _base_plus_adapters(lora["base"], lora["run"])
    torch.testing.assert_close(_logits(exported, want.config.vocab_size), _logits(want, want.config.vocab_size),
                               rtol=1e-5, atol=1e-5)


def test_resume_of_a_lora_run_on_a_run_is_exact(lora: dict, corpus: Path, monkeypatch) -> None:
    tmp = lora["tmp"]
    monkeypatch.chdir(tmp)
    keys = ("iter", "train_loss", "val_loss", "lr")

    def events(out: str) -> list[dict]:
        lines = (tmp / out / "metrics.jsonl").read_text().splitlines()
        return [{k: e[k] for k in keys if k in e} for e in map(json.loads, lines)]

    extra = ("train.eval_interval=2", "train.lora_dropout=0.1")
    train_mod.main(_lora_args(corpus, tmp / "straight", "base", *extra))
    train_interrupted(monkeypatch, _lora_args(corpus, tmp / "resumed", "base", *extra), 3)
    assert resolve_checkpoint(tmp / "resumed").name == "ckpt-000003"
    train_mod.main(["--resume", *_lora_args(corpus, tmp / "resumed", "base", *extra)])  # the same command again
    assert events("resumed") == events("straight")  # bit-identical losses


@pytest.fixture
def own_base(trained: Path, corpus: Path, tmp_path: Path) -> dict:
    """A base this test may move and change, and a LoRA run on it."""
    shutil.copytree(trained, tmp_path / "base")
    train_mod.main(_lora_args(corpus, tmp_path / "adapted", str(tmp_path / "base"), "train.max_iters=2"))
    return {"base": tmp_path / "base", "ckpt": resolve_checkpoint(tmp_path / "base", "best").resolve(),
            "run": tmp_path / "adapted"}


def test_a_moved_base_is_one_error_line(own_base: dict, cli_error) -> None:
    run, ckpt = own_base["run"], own_base["ckpt"]
    own_base["base"].rename(own_base["base"].with_name("moved"))
    for main, args in ((generate_mod.main, ["--max_new_tokens", "2", "--device", "cpu"]),
                       (eval_mod.main, ["--device", "cpu"]), (export_mod.main, ["--out", str(run.parent / "hf")])):
        line = cli_error(main, ["--checkpoint", str(run), *args])
        assert f"the LoRA base train.init_from={str(ckpt)!r} is gone (moved or deleted)" in line, line
    line = cli_error(train_mod.main, ["--resume", f"train.out_dir={run}", "train.max_iters=4"])
    assert f"the LoRA base train.init_from={str(ckpt)!r} is gone (moved or deleted)" in line, line
    assert not (run.parent / "hf").exists()
    own_base["base"].with_name("moved").rename(own_base["base"])
    assert load(run)[0] is not None


def test_a_changed_or_retrained_base_is_one_error_line(own_base: dict, corpus: Path, cli_error) -> None:
    run, ckpt = own_base["run"], own_base["ckpt"]
    weights = load_file(str(ckpt / "model.safetensors"))
    changed = {k: v.clone() for k, v in weights.items()}
    next(iter(changed.values())).view(-1)[0] += 1e-3
    save_file(changed, str(ckpt / "model.safetensors"))
    line = cli_error(generate_mod.main, ["--checkpoint", str(run), "--max_new_tokens", "2", "--device", "cpu"])
    assert f"the base (train.init_from={str(ckpt)!r}) changed since" in line, line
    line = cli_error(train_mod.main, ["--resume", f"train.out_dir={run}", "train.max_iters=4"])
    assert f"the base (train.init_from={str(ckpt)!r}) changed since" in line, line
    save_file(weights, str(ckpt / "model.safetensors"))  # the weights it was trained on: loads again
    assert load(run)[0] is not None
    train_mod.main(["--resume", f"train.out_dir={run}", "train.max_iters=4"])  # from a folder the base is not in
    assert resolve_checkpoint(run).name == "ckpt-000004"
    # the base run trained again into its folder (another seed): the checkpoint the run recorded is replaced
    train_mod.main(tiny_args(corpus, own_base["base"], "train.overwrite=true", "train.seed=7"))
    assert resolve_checkpoint(own_base["base"]).resolve() == ckpt
    line = cli_error(eval_mod.main, ["--checkpoint", str(run), "--device", "cpu"])
    assert f"the base (train.init_from={str(ckpt)!r}) changed since" in line, line


def test_a_lora_run_is_no_base_and_a_scratch_one_is_refused(lora: dict, corpus: Path, tmp_path: Path,
                                                            cli_error) -> None:
    line = cli_error(train_mod.main, _lora_args(corpus, tmp_path / "again", str(lora["run"])))
    assert "is a LoRA run, whose adapters need a base of their own" in line and "python -m fastgpt convert" in line
    assert load_config(None, ["train.lora_rank=4", "train.init_from=out/run"]).train.init_from == "out/run"
    with pytest.raises(ValueError, match="train.lora_rank=4 adapts a base model: set train.init_from to a fastgpt"):
        load_config(None, ["train.lora_rank=4"])
