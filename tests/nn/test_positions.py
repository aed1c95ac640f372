"""Position encodings: one table behind GPTConfig.pos_encoding, the embed/rotate interface, state-dict keys, RoPE."""

from __future__ import annotations

import pytest
import torch
from tiny_run import TINY_MODEL as TINY
from torch import Tensor

from fastgpt import GPT, GPTConfig
from fastgpt.config import POS_ENCODINGS
from fastgpt.nn import positions
from fastgpt.nn.positions import POSITION_ENCODINGS, NoPositions, RotaryPositions


def test_every_configurable_encoding_is_in_the_table() -> None:
    assert set(POSITION_ENCODINGS) == set(POS_ENCODINGS)
    for name, cls in POSITION_ENCODINGS.items():
        assert isinstance(GPT(GPTConfig(**TINY, pos_encoding=name)).wpe, cls)


@pytest.mark.parametrize(("name", "keys"), [("learned", ["wpe.weight"]), ("sincos", []), ("rope", []), ("none", [])])
def test_state_dict_keys_of_positions(name: str, keys: list[str]) -> None:
    """Only learned positions are saved, as GPT-2's wpe.weight; tables and rotations are rebuilt."""
    state = GPT(GPTConfig(**TINY, pos_encoding=name)).state_dict()
    assert [k for k in state if "wpe" in k or "cos" in k or "sin" in k or "table" in k] == keys


def test_a_new_encoding_is_one_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """A class in the table gets embed once per forward and rotate once per layer, with the cached position."""
    calls: list[tuple[str, int]] = []

    class Recording(NoPositions):
        def embed(self, x: Tensor, start: int) -> Tensor:
            calls.append(("embed", start))
            return x

        def rotate(self, q: Tensor, k: Tensor, start: int) -> tuple[Tensor, Tensor]:
            calls.append(("rotate", start))
            return q, k

    monkeypatch.setitem(positions.POSITION_ENCODINGS, "none", Recording)
    model = GPT(GPTConfig(**TINY, pos_encoding="none", tie_attn_proj_across_layers=True)).eval()
    cache = model.new_cache(batch=1)
    model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    assert calls == [("embed", 0), ("rotate", 0), ("rotate", 0), ("embed", 5), ("rotate", 5), ("rotate", 5)]


def test_rope_scores_depend_only_on_relative_position() -> None:
    torch.manual_seed(0)
    rope = RotaryPositions(GPTConfig(**TINY, pos_encoding="rope"))
    q, k = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    scores = []
    for start in (0, 3, 9):
        rq, rk = rope.rotate(q, k, start)
        scores.append(rq @ rk.transpose(-1, -2))
    torch.testing.assert_close(scores[1], scores[0])
    torch.testing.assert_close(scores[2], scores[0])
    rq, rk = rope.rotate(q, k, 0)
    assert not torch.allclose(rq, q) and torch.equal(rq[:, :, 0], q[:, :, 0])  # position 0 is not rotated
