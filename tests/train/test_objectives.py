"""train.objective: masked next-token prediction for bidirectional models learns, masks hide exactly
the tokens scored and are the same on any number of ranks, and a leaking set-up is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_run import SMALL, tiny, word_corpus

from fastgpt.config import TrainConfig, load_config
from fastgpt.data import TokenLoader
from fastgpt.model import GPT
from fastgpt.tokenizers import ByteTokenizer
from fastgpt.train import cli as train_mod
from fastgpt.train.objectives import Objective, mask_next_tokens

TINY = tiny(*SMALL, "train.batch_size=8", "train.eval_iters=4", "train.log_interval=1", "optim.warmup_iters=2",
            "optim.lr=0.01", drop=("train.device", "train.max_iters"))


def test_masked_tokens_are_the_targets_and_hidden_from_the_input() -> None:
    x = torch.tensor([[10, 11, 12, 13, 14]])
    y = torch.tensor([[11, 12, 13, 14, 15]])
    chosen = torch.tensor([[False, True, False, False, True]])
    inputs, targets = mask_next_tokens(x, y, chosen, mask_id=99)
    assert inputs.tolist() == [[10, 11, 99, 13, 14]] and x.tolist() == [[10, 11, 12, 13, 14]]
    assert targets.tolist() == [[-1, 12, -1, -1, 15]]  # 15 lies past the window: nothing to hide


def test_masks_depend_on_the_row_not_the_ranks() -> None:
    tokens = np.arange(2000) % 256
    obj = Objective(TrainConfig(objective="next_token_mlm", mlm_fraction=0.3), ByteTokenizer())
    one = TokenLoader(tokens, 16, 4, seed=3)
    ranks = [TokenLoader(tokens, 16, 2, rank=r, world_size=2, seed=3) for r in (0, 1)]
    whole = [obj.batch(one) for _ in range(2)]
    for x, y, _ in whole:  # 1 rank x 4 rows, then 2 ranks x 2 rows: the same rows, the same masks
        parts = [obj.batch(loader) for loader in ranks]
        assert torch.equal(x, torch.cat([p[0] for p in parts])) and torch.equal(y, torch.cat([p[1] for p in parts]))
    assert obj.mask_id == 258  # one id past the byte vocabulary
    masked = whole[0][0] == obj.mask_id
    assert 0.15 < masked.float().mean() < 0.45 and not torch.equal(whole[0][0], whole[1][0])


def test_mlm_loss_of_a_bidirectional_model_falls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []  # (training?, fraction of inputs masked, fraction of targets scored) of every forward
    forward = GPT.forward

    def spy(self: GPT, idx: torch.Tensor, targets: torch.Tensor | None = None, *args, **kwargs):
        mask_id = self.config.vocab_size - 1
        seen.append((self.training, (idx == mask_id).float().mean().item(), (targets >= 0).float().mean().item()))
        return forward(self, idx, targets, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", spy)
    corpus = word_corpus(tmp_path, 600)
    train_mod.main([*TINY, f"data.dataset={corpus}", f"data.cache_dir={tmp_path / 'cache'}",
                    f"train.out_dir={tmp_path / 'out'}", "model.causal=false", "train.objective=next_token_mlm",
                    "train.max_iters=40", "train.eval_interval=20"])
    events = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if "val_loss" in e]
    assert [e["iter"] for e in evals] == [0, 20, 40] and not any("val_bpb" in e for e in evals)
    # from ln(25) = 3.2 to below 2.75 nats, the entropy of the corpus's characters: the masked ones are
    # predicted from their context, not from character frequencies alone
    assert evals[0]["val_loss"] == pytest.approx(np.log(25), abs=0.1)
    assert evals[-1]["val_loss"] < 2.6, evals
    # training and eval batches alike: ~15% of the inputs are the mask id, and only those are scored
    assert {training for training, _, _ in seen} == {True, False}
    assert all(0.07 < masked < 0.25 and abs(scored - masked) < 0.05 for _, masked, scored in seen)


def test_next_token_on_a_bidirectional_model_is_refused_in_one_line(cli_error) -> None:
    line = cli_error(train_mod.main, ["model.causal=false", "train.out_dir=/nonexistent/out"])
    assert "model.causal=false with train.objective=next_token leaks the targets" in line


@pytest.mark.parametrize("override,message", [
    ("train.objective=mlm", "train.objective='mlm' is not one of next_token, next_token_mlm"),
    ("train.mlm_fraction=1.5", "train.mlm_fraction must be in (0, 1), got 1.5"),
])
def test_objective_settings_are_validated(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])
