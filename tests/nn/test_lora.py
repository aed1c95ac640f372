"""LoRALinear and add_lora/merge_lora: the merged model computes what the adapted one does, tied
layers share one adapter, and the base Parameters keep their names."""

from __future__ import annotations

import pytest
import torch

from fastgpt.model import GPT, GPTConfig
from fastgpt.nn.lora import LoRALinear, adapter_state, add_lora, merge_lora


@pytest.mark.parametrize("tied", [False, True])
def test_merged_model_matches_the_adapted_one(tied: bool) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=3, n_head=2, n_embd=16, ffn_type="swiglu",
                          tie_attn_proj_across_layers=tied, tie_ffn_across_layers=tied)).eval()
    names_before = set(model.state_dict())
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base_logits = model(idx)[0]
    adapted = add_lora(model, rank=3, alpha=6.0, dropout=0.0, targets=["attn.c_attn", "mlp.up", "mlp.down"])
    assert len(adapted) == 9 and names_before <= set(model.state_dict())  # base names unchanged
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], base_logits)  # B = 0: the base at first
        for p in adapter_state(model).values():
            p.normal_()
        want = model(idx)[0]
    shared = {id(m) for m in model.modules() if isinstance(m, LoRALinear)}
    assert len(shared) == (3 if tied else 9) and len(adapter_state(model)) == 2 * len(shared)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == list(adapter_state(model))
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules()) and set(model.state_dict()) == names_before
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], want, rtol=1e-4, atol=1e-4)
        assert (model(idx)[0] - base_logits).abs().max() > 0.1
