"""LoRA runs: only the adapters train (every base tensor bit-identical), only they are saved (with the
base's hash: a changed base is refused), load/export give the merged model, resume is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tiny_run import train_interrupted

from fastgpt.adapters import ADAPTERS
from fastgpt.checkpoint import CheckpointError, load, resolve_checkpoint
from fastgpt.config import load_config
from fastgpt.model import GPT, GPTConfig
from fastgpt.nn.lora import LoRALinear
from fastgpt.tokenizers import CharTokenizer
from fastgpt.train import cli as train_mod

WORDS = "the king and queen of the castle walk by night to see a ghost upon the wall".split()
TARGETS = "[attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj]"


def _run_args(tmp: Path, out: str, *extra: str) -> list[str]:
    return ["model.block_size=32", "train.batch_size=4", "train.eval_iters=2", "train.log_interval=1",
            "train.sample_tokens=0", "optim.warmup_iters=2", "optim.lr=0.01", f"data.dataset={tmp / 'corpus.txt'}",
            f"data.cache_dir={tmp / 'cache'}", f"train.out_dir={tmp / out}", "train.init_from=hf:base",
            "train.lora_rank=4", f"train.lora_targets={TARGETS}", *extra]


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A GPT-2-layout base (as a HF folder) and a LoRA run of 30 steps on it; the trainer is kept."""
    tmp = tmp_path_factory.mktemp("lora")
    text = "\n".join(" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(9)) for i in range(600))
    (tmp / "corpus.txt").write_text(text)
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=CharTokenizer.train([text]).vocab_size, block_size=32, n_layer=2, n_head=2,
                         n_embd=64))
    base.to_hf(tmp / "base")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # a checkpoint's base is read only inside the current folder
        kept = {}
        run = train_mod.Trainer.run
        mp.setattr(train_mod.Trainer, "run", lambda self: (kept.update(trainer=self), run(self))[1])
        train_mod.main(_run_args(tmp, "out", "train.max_iters=30", "train.eval_interval=15"))
    return {"tmp": tmp, "trainer": kept["trainer"]}


def test_only_the_adapters_train(lora_run: dict) -> None:
    trainer = lora_run["trainer"]
    base = GPT.from_hf(str(lora_run["tmp"] / "base")).state_dict()
    trained = dict(trainer.model.named_parameters())
    adapters = {k for k in trained if k.endswith((".lora_a", ".lora_b"))}
    assert len(adapters) == 2 * 4 * 2  # 4 projections x 2 layers
    assert set(trained) - adapters <= set(base)
    for name in set(trained) - adapters:  # every base tensor, bit for bit
        assert torch.equal(trained[name], base[name]) and not trained[name].requires_grad, name
    assert all(trained[k].requires_grad for k in adapters)
    assert all(trained[k].abs().max() > 0 for k in adapters if k.endswith(".lora_b"))  # B starts at zero
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(trained[k]) for k in adapters} and len(trainer.optimizer.state) == len(adapters)
    events = [json.loads(line) for line in (lora_run["tmp"] / "out" / "metrics.jsonl").read_text().splitlines()]
    vals = [e["val_loss"] for e in events if "val_loss" in e]
    assert vals[-1] < vals[0] - 0.25, vals  # a random base, adapted by rank-4 updates alone


def test_the_run_saves_adapters_only_far_smaller_than_the_base(lora_run: dict) -> None:
    tmp = lora_run["tmp"]
    ckpt = resolve_checkpoint(tmp / "out")
    assert (ckpt / ADAPTERS).is_file() and not (ckpt / "model.safetensors").exists()
    base_bytes, ckpt_bytes, run_bytes = _size(tmp / "base"), _size(ckpt), _size(tmp / "out")
    weights, adapters = (tmp / "base" / "model.safetensors").stat().st_size, (ckpt / ADAPTERS).stat().st_size
    print(f"\nbase folder {base_bytes:,} bytes (weights {weights:,}); LoRA checkpoint {ckpt_bytes:,} bytes (adapters "
          f"{adapters:,}, state.pt {(ckpt / 'state.pt').stat().st_size:,}); run folder {run_bytes:,} bytes")
    # rank 4 on all 4 projections of a d=64 model is 8% of its weights; on GPT-2 (124M) it is 0.6%
    assert adapters * 10 < weights and ckpt_bytes * 3 < base_bytes


def test_load_and_export_give_the_merged_model(lora_run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    transformers = pytest.importorskip("transformers")
    tmp, trainer = lora_run["tmp"], lora_run["trainer"]
    monkeypatch.chdir(tmp)
    model, tok = load(tmp / "out", which="latest")
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    idx = torch.randint(0, tok.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    trainer.model.eval()
    with torch.no_grad():
        want = trainer.model(idx)[0]
        torch.testing.assert_close(model(idx)[0], want, rtol=1e-5, atol=1e-5)
        base = GPT.from_hf(str(tmp / "base"))
        assert (base(idx)[0] - want).abs().max() > 1e-2  # the adapters moved the model away from its base
    from fastgpt.hf import export as export_mod

    assert export_mod.main(["--checkpoint", str(tmp / "out"), "--out", str(tmp / "exported")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp / "exported").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, want, rtol=1e-5, atol=1e-5)


def test_a_changed_or_outside_base_is_refused(lora_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = lora_run["tmp"]
    ckpt = resolve_checkpoint(tmp / "out")

    def copy(name: str, init_from: str) -> Path:
        run = tmp_path / name
        run.mkdir()
        for f in ckpt.iterdir():
            (run / f.name).write_bytes(f.read_bytes())
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["train"]["init_from"] = init_from
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        return run

    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="lies outside the current folder"):
        load(copy("outside", f"hf:{tmp / 'base'}"))
    changed = GPT.from_hf(str(tmp / "base"))
    with torch.no_grad():
        changed.blocks[0].mlp.c_fc.weight[0, 0] += 1e-3
    changed.to_hf(tmp_path / "base")
    with pytest.raises(CheckpointError, match="the base .* changed since"):
        load(copy("changed", "hf:base"))
    GPT.from_hf(str(tmp / "base")).to_hf(tmp_path / "base")  # the base it was trained on: loads
    assert not any(isinstance(m, LoRALinear) for m in load(tmp_path / "changed")[0].modules())


def test_resume_of_a_lora_run_is_exact(lora_run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = lora_run["tmp"]
    monkeypatch.chdir(tmp)
    args = _run_args(tmp, "straight", "train.max_iters=8", "train.eval_interval=4", "train.lora_dropout=0.1")
    train_mod.main(args)
    keys = ("iter", "train_loss", "val_loss", "lr")

    def events(out: str) -> list[dict]:
        lines = (tmp / out / "metrics.jsonl").read_text().splitlines()
        return [{k: e[k] for k in keys if k in e} for e in map(json.loads, lines)]

    args = [a.replace("train.out_dir=" + str(tmp / "straight"), "train.out_dir=" + str(tmp / "resumed")) for a in args]
    train_interrupted(monkeypatch, args, 3)
    assert resolve_checkpoint(tmp / "resumed").name == "ckpt-000003"
    train_mod.main(["--resume", *args])
    assert events("resumed") == events("straight")  # bit-identical losses


@pytest.mark.parametrize("overrides,message", [
    (["train.lora_rank=4"], "train.lora_rank=4 adapts a base model: set train.init_from to a fastgpt run or "
                            "checkpoint folder, or to hf:PATH_OR_HUB_ID, not 'scratch'"),
    (["train.lora_rank=4", "train.init_from=hf:x", "train.lora_targets=[attn.qkv]"],
     "train.lora_targets item='attn.qkv' is not one of attn.c_attn, attn.c_proj, mlp.c_fc"),
    (["train.lora_rank=4", "train.init_from=hf:x", "train.freeze=[wte.*]"], "LoRA already freezes every base weight"),
    (["train.lora_rank=-1"], "train.lora_rank must be >= 0"),
    (["train.lora_rank=2", "train.init_from=hf:x", "train.parallel=fsdp"], "use train.parallel=ddp"),
])
def test_lora_settings_are_validated(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_config(None, overrides)


def test_a_target_the_model_lacks_is_named() -> None:
    from fastgpt.nn.lora import add_lora

    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match="mlp.gate matches no Linear of this model .*mlp.c_fc"):
        add_lora(model, 2, 4.0, 0.0, ["attn.c_attn", "mlp.gate"])
