"""train.freeze: frozen parameters stay bit-identical and get no optimizer state, the rest trains;
a pattern matching nothing is one error line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_run import SMALL, tiny, word_corpus

from fastgpt.model import GPT, GPTConfig
from fastgpt.train import cli as train_mod
from fastgpt.train.freeze import freeze

TINY = tiny(*SMALL, "train.batch_size=4", "train.eval_interval=100", "optim.lr=0.01", "train.max_iters=6",
            drop=("train.device",))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return word_corpus(tmp_path)


def test_frozen_tensors_stay_bit_identical_and_the_rest_trains(tmp_path: Path, corpus: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    kept = {}
    run = train_mod.Trainer.run

    def keep(self: train_mod.Trainer) -> None:
        kept["before"] = {k: v.clone() for k, v in self.model.state_dict().items()}
        kept["trainer"] = self
        run(self)

    monkeypatch.setattr(train_mod.Trainer, "run", keep)
    train_mod.main([*TINY, f"data.dataset={corpus}", f"data.cache_dir={tmp_path / 'cache'}",
                    f"train.out_dir={tmp_path / 'out'}", "train.freeze=[blocks.0.*, lm_head.weight]"])
    trainer, before = kept["trainer"], kept["before"]
    after = trainer.model.state_dict()
    frozen = {k for k in after if k.startswith("blocks.0.") or k in ("wte.weight", "lm_head.weight")}  # tied
    assert len(frozen) > 4 and all(torch.equal(after[k], before[k]) for k in frozen)
    moved = [k for k in after if k not in frozen and not torch.equal(after[k], before[k])]
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in moved if k.startswith("blocks.")} == {"blocks.1"}
    assert "wpe.weight" in moved
    params = dict(trainer.model.named_parameters())
    state = {id(p) for p in trainer.optimizer.state}
    assert state == {id(p) for k, p in params.items() if k not in frozen}  # no optimizer state when frozen


def test_a_pattern_matching_nothing_is_one_error_line(tmp_path: Path, corpus: Path, cli_error) -> None:
    line = cli_error(train_mod.main, [*TINY, f"data.dataset={corpus}", f"data.cache_dir={tmp_path / 'cache'}",
                                      f"train.out_dir={tmp_path / 'out'}", "train.freeze=[blocks.0.*, block.9.*]"])
    assert "train.freeze pattern 'block.9.*' matches no parameter name" in line


def test_freezing_everything_is_refused() -> None:
    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match="freezes every parameter: nothing would train"):
        freeze(model, ["*"])
    assert freeze(GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8)),
                  ["*.bias"])[0] == "blocks.0.ln_1.norm.bias"
