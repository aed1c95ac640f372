"""fastgpt.ops.linear_cross_entropy (torch chunked backend) against the float64 reference.

Error bound as for the other ops: err(ours, ref64) <= factor * err(unfused torch in the same dtype,
ref64) + atol, factor 2 for the loss and 3 for gradients. The reference itself is checked against
``F.cross_entropy`` on float64 logits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastgpt.ops import linear_cross_entropy, reference
from fastgpt.ops.linear_cross_entropy import LinearCrossEntropy, chunk_rows

ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _inputs(N, d, V, dtype, bias=False, ignored=0.0, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(N, d, generator=g) * scale).to(dtype)
    w = (torch.randn(V, d, generator=g) / d**0.5).to(dtype)
    b = (torch.randn(V, generator=g) * 0.1).to(dtype) if bias else None
    t = torch.randint(0, V, (N,), generator=g)
    t[torch.rand(N, generator=g) < ignored] = -100
    return h, w, b, t


def _unfused(h, w, t, b, softcap, z_loss, reduction):
    """The unfused torch computation in h's dtype: logits materialized, autograd's own backward."""
    z = h @ w.T
    if b is not None:
        z = z + b
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    counted = t != -100
    loss = F.cross_entropy(z.float(), t, reduction="none")
    if z_loss:
        loss = loss + z_loss * torch.logsumexp(z.float(), -1) ** 2 * counted
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / counted.sum().clamp(min=1)


def _grads(fn, tensors, reduction, seed=1):
    leaves = [x.detach().clone().requires_grad_() for x in tensors]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    grads = torch.autograd.grad(out, leaves, g)
    return out.detach(), grads


def _err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def _compare(N, d, V, dtype, bias=False, ignored=0.0, softcap=None, z_loss=0.0, reduction="mean", h_view=None):
    h, w, b, t = _inputs(N, d, V, dtype, bias, ignored)
    if h_view is not None:
        h = h_view(h)
    tensors = [h, w] + ([b] if bias else [])

    def ours(h, w, b=None):
        return linear_cross_entropy(h, w, t, b, softcap=softcap, z_loss=z_loss, reduction=reduction)

    def ref(h, w, b=None):
        return reference.linear_cross_entropy(h, w, t, b, softcap=softcap, z_loss=z_loss, reduction=reduction)

    def unf(h, w, b=None):
        return _unfused(h, w, t, b, softcap, z_loss, reduction)

    out, grads = _grads(ours, tensors, reduction)
    ref_out, ref_grads = _grads(ref, [x.double() for x in tensors], reduction)
    unf_out, unf_grads = _grads(unf, tensors, reduction)
    assert out.dtype == torch.float32
    atol = ATOL[dtype]
    e, eu = _err(out, ref_out), _err(unf_out, ref_out)
    assert e <= 2 * eu + atol, f"loss err {e:.3g} vs unfused {eu:.3g}"
    for name, a, r, u in zip(("h", "weight", "bias"), grads, ref_grads, unf_grads):
        assert a.dtype == dtype and a.shape == r.shape
        e, eu = _err(a, r), _err(u, r)
        mean = (a.double() - r).abs().mean()
        assert e <= 3 * eu + atol, f"grad {name}: max err {e:.3g} (mean {mean:.3g}) vs unfused {eu:.3g}"
    return out, ref_out


def test_reference_is_f_cross_entropy():
    h, w, b, t = _inputs(37, 8, 23, torch.float64, bias=True, ignored=0.3)
    z = h @ w.T + b
    for reduction in ("mean", "sum", "none"):
        expect = F.cross_entropy(z, t, ignore_index=-100, reduction=reduction)
        got = reference.linear_cross_entropy(h, w, t, b, reduction=reduction)
        torch.testing.assert_close(got, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_dtypes_and_reductions(dtype, reduction):
    _compare(300, 24, 97, dtype, ignored=0.2, reduction=reduction)


@pytest.mark.parametrize("N", [1, 129, 300])
def test_n_not_a_multiple_of_the_chunk(N):
    assert chunk_rows(N, 97, 24) == min(N, 128)
    _compare(N, 24, 97, torch.float32)


def test_small_chunks_equal_one_chunk():
    h, w, b, t = _inputs(50, 8, 31, torch.float32, bias=True, ignored=0.2)
    outs = []
    for rows in (7, 50):
        leaves = [x.clone().requires_grad_() for x in (h, w, b)]
        loss = LinearCrossEntropy.apply(leaves[0], leaves[1], leaves[2], t, -100, 3.0, 1e-3, "mean", rows)
        outs.append((loss, *torch.autograd.grad(loss, leaves)))
    for a, b_ in zip(*outs):
        torch.testing.assert_close(a, b_, rtol=1e-5, atol=1e-6)


def test_gpt2_vocab_odd():
    _compare(6, 8, 50257, torch.float32, ignored=0.3)


def test_all_targets_ignored():
    out, ref = _compare(20, 8, 31, torch.float32, ignored=1.1)
    assert out.item() == 0.0 and ref.item() == 0.0
    h, w, b, t = _inputs(20, 8, 31, torch.float32, ignored=1.1)
    h.requires_grad_()
    linear_cross_entropy(h, w, t).backward()
    assert torch.equal(h.grad, torch.zeros_like(h))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_softcap_z_loss_bias(reduction):
    _compare(200, 16, 61, torch.float32, bias=True, ignored=0.1, softcap=2.0, z_loss=1e-2, reduction=reduction)


def test_softcap_matters():
    h, w, _, t = _inputs(40, 16, 61, torch.float32, scale=4.0)
    a = linear_cross_entropy(h, w, t, softcap=1.5)
    assert (a - linear_cross_entropy(h, w, t)).abs() > 0.1
    torch.testing.assert_close(a.double(), reference.linear_cross_entropy(h, w, t, softcap=1.5), rtol=1e-5, atol=1e-5)


def test_non_contiguous_h():
    _compare(64, 16, 41, torch.float32, bias=True, h_view=lambda h: h.repeat(1, 2)[:, ::2])


def test_no_grad_needed():
    h, w, _, t = _inputs(30, 8, 19, torch.float32)
    with torch.no_grad():
        got = linear_cross_entropy(h, w, t)
    torch.testing.assert_close(got.double(), reference.linear_cross_entropy(h, w, t), rtol=1e-6, atol=1e-6)


def test_deterministic():
    h, w, b, t = _inputs(300, 16, 41, torch.float32, bias=True, ignored=0.1)
    runs = []
    for _ in range(2):
        leaves = [x.clone().requires_grad_() for x in (h, w, b)]
        loss = linear_cross_entropy(h=leaves[0], weight=leaves[1], targets=t, bias=leaves[2])
        runs.append(torch.autograd.grad(loss, leaves))
    assert all(torch.equal(a, b_) for a, b_ in zip(*runs))


@pytest.mark.parametrize("change, arg", [
    (dict(h=torch.zeros(4, 8, 2)), "h"),
    (dict(weight=torch.zeros(11, 7)), "weight"),
    (dict(weight=torch.zeros(11, 8, dtype=torch.float64)), "weight dtype"),
    (dict(targets=torch.zeros(5, dtype=torch.long)), "targets"),
    (dict(targets=torch.tensor([0, 1, 11, 2])), "targets"),
    (dict(targets=torch.tensor([0, 1, -1, 2])), "targets"),
    (dict(targets=torch.zeros(4)), "targets"),
    (dict(bias=torch.zeros(10)), "bias"),
    (dict(reduction="avg"), "reduction"),
    (dict(softcap=0.0), "softcap"),
    (dict(z_loss=-1.0), "z_loss"),
    (dict(backend="triton"), "backend"),
    (dict(backend="bogus"), "backend"),
])
def test_bad_input(change, arg):
    kwargs = dict(h=torch.zeros(4, 8), weight=torch.zeros(11, 8), targets=torch.tensor([0, 1, -100, 10]))
    kwargs.update(change)
    with pytest.raises(ValueError, match=arg):
        linear_cross_entropy(**kwargs)
