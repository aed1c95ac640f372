"""fastgpt.nn.dropout: torch's dropout semantics with the CPU's faster mask, and attention-probability
dropout as SDPA's math computes it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastgpt.nn.dropout import Dropout, attention_with_dropout, dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_each_element_is_kept_with_probability_one_minus_p_and_scaled(p: float, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = torch.rand(400, 501, dtype=dtype) + 1  # no zeros: a zero out marks a dropped element
    y = dropout(x, p)
    assert y.dtype == dtype and y.shape == x.shape
    kept = y != 0
    n = x.numel()
    share, sd = kept.float().mean().item(), math.sqrt(p * (1 - p) / n)
    assert abs(share - (1 - p)) < 5 * sd, (share, 1 - p)
    # the kept elements scaled by 1 / (1 - p), within the rounding of one multiplication in the dtype
    rtol = {torch.bfloat16: 8e-3, torch.float32: 2e-7, torch.float64: 4e-16}[dtype]
    torch.testing.assert_close(y[kept].double(), x.double()[kept] / (1 - p), rtol=rtol, atol=0)


def test_the_gradient_passes_the_kept_elements_scaled_and_nothing_else() -> None:
    torch.manual_seed(1)
    x = torch.randn(37, 53, requires_grad=True)
    g = torch.randn(37, 53)
    y = dropout(x, 0.3)
    (grad,) = torch.autograd.grad(y, x, g)
    kept = y.detach() != 0
    torch.testing.assert_close(grad, torch.where(kept, g / 0.7, 0))


def test_eval_mode_zero_and_one() -> None:
    x = torch.randn(5, 7)
    module = Dropout(0.4)
    assert torch.equal(module.eval()(x), x) and torch.equal(dropout(x, 0.0), x)
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    assert torch.equal(dropout(x, 0.4, training=False), x)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        Dropout(1.5)


def test_the_same_seed_gives_the_same_mask() -> None:
    x = torch.randn(64, 64)
    torch.manual_seed(3)
    a = dropout(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.5))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T", [1, 13])
def test_attention_with_dropout_zero_is_sdpa_and_its_mean_is_unbiased(causal: bool, T: int) -> None:
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 3, T, 8, generator=g, dtype=torch.float64) for _ in range(3))
    want = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(attention_with_dropout(q, k, v, 0.0, causal), want)
    # averaged over many masks, dropout on the probabilities leaves the output's expectation unchanged
    torch.manual_seed(5)
    mean = torch.stack([attention_with_dropout(q, k, v, 0.25, causal) for _ in range(3000)]).mean(0)
    torch.testing.assert_close(mean, want, rtol=0, atol=0.08)
    # with p > 0 some probability really is dropped: a row's weights no longer sum to 1
    ones = torch.ones_like(v)
    sums = attention_with_dropout(q, k, ones, 0.25, causal)[..., 0]
    assert not torch.allclose(sums, torch.ones_like(sums))


def test_attention_with_dropout_is_causal_whatever_is_dropped() -> None:
    torch.manual_seed(6)
    q, k, v = (torch.randn(1, 2, 9, 4, requires_grad=True) for _ in range(3))
    y = attention_with_dropout(q, k, v, 0.3, True)
    (grad_v,) = torch.autograd.grad(y[:, :, 4].sum(), v)
    assert torch.count_nonzero(grad_v[:, :, 5:]) == 0  # position 4 sees no later value


def test_off_the_cpu_torchs_own_dropout_and_sdpa_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The non-CPU branches (meta tensors: no data, any device but the CPU) call torch's fused ops."""
    calls = []
    real_dropout, real_sdpa = F.dropout, F.scaled_dot_product_attention
    monkeypatch.setattr(F, "dropout", lambda *a, **k: calls.append("dropout") or real_dropout(*a, **k))
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append("sdpa") or real_sdpa(*a, **k))
    x = torch.empty(4, 8, device="meta")
    assert dropout(x, 0.3).shape == (4, 8)
    q = torch.empty(1, 2, 5, 4, device="meta")
    assert attention_with_dropout(q, q, q, 0.3, True).shape == (1, 2, 5, 4)
    assert calls == ["dropout", "sdpa"]
