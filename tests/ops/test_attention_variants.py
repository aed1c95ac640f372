"""flash_attention's variants: sliding windows, a tanh softcap, packed documents (doc_ids).

The float64 reference (:func:`fastgpt.ops.reference.flash_attention` with the masks of
:func:`fastgpt.ops.reference.visible_mask`) is first checked against the rules written here
element by element; every backend is then held to it, forward and backward, by the criterion of
tests/ops/test_flash_attention.py (its error at most 2x, 3x for gradients, PyTorch's own error in
the same dtype, plus one ulp). The kernels' cases are few and combine the awkward features
(documents of 1, 2, 63, 64, 65 and 130 tokens in one row, W = 1, 17, 64, >= T, softcap 15 and 50,
GQA, rows with different layouts, T = 1, causal and not), so the interpreter stays cheap.
"""

from __future__ import annotations

import pytest
import torch

import fastgpt.ops as ops
from fastgpt.ops import reference, torch_path


def _rule(i: int, j: int, causal: bool, window: int | None, ids: list[int] | None, offset: int) -> bool:
    """The issue's definition, one pair at a time: query i (at position i + offset) sees key j."""
    p = i + offset
    if causal and j > p:
        return False
    if window is not None and not (p - j < window if causal else abs(p - j) < window):
        return False
    return ids is None or ids[p] == ids[j]


def _doc_ids(lengths_per_row: list[list[int]], device: str = "cpu") -> torch.Tensor:
    """(B, T) int32 ids from each row's document lengths (ids counting up from 0 per row)."""
    rows = [torch.repeat_interleave(torch.arange(len(ls)), torch.tensor(ls)) for ls in lengths_per_row]
    return torch.stack(rows).to(device, torch.int32)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("window", [None, 1, 3, 40])
@pytest.mark.parametrize("S", [11, 14], ids=["S=T", "S>T"])
def test_visible_mask_follows_the_rules(causal, window, S):
    T = 11
    ids = _doc_ids([[1, 2, 5, 6][: 4 if S == 14 else 3] + ([] if S == 14 else [3]), [S]])
    assert ids.shape == (2, S)
    for docs in (None, ids):
        seen = reference.visible_mask(T, S, causal, window, docs, torch.device("cpu"))
        if not causal and window is None and docs is None:
            assert seen is None
            continue
        for b in range(2):
            row = None if docs is None else docs[b].tolist()
            want = torch.tensor([[_rule(i, j, causal, window, row, S - T) for j in range(S)] for i in range(T)])
            assert torch.equal(seen[min(b, seen.shape[0] - 1)], want), (b, docs is not None)


def test_reference_softcap_and_mask_against_the_math():
    """reference in float64 = softmax(c tanh(s / c) with the rule's mask) v, written per element."""
    torch.manual_seed(0)
    q = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 9, 8, dtype=torch.float64) for _ in range(2))
    ids = _doc_ids([[2, 7], [9]])
    got = reference.flash_attention(q, k, v, True, 0.5, window=4, softcap=3.0, doc_ids=ids)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = 3.0 * torch.tanh((q @ kk.transpose(-2, -1)) * 0.5 / 3.0)
    mask = torch.tensor([[[_rule(i, j, True, 4, ids[b].tolist(), 0) for j in range(9)] for i in range(9)]
                         for b in range(2)])
    want = s.masked_fill(~mask[:, None], float("-inf")).softmax(-1) @ vv
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_torch_path_matches_the_reference(causal, dtype):
    """SDPA with the boolean mask, or explicit math with a softcap; S > T decoding with a window."""
    torch.manual_seed(0)
    q = torch.randn(2, 4, 20, 16).to(dtype)
    k, v = (torch.randn(2, 2, 20, 16).to(dtype) for _ in range(2))
    ids = _doc_ids([[1, 2, 17], [20]])
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    for window, softcap, docs in ((5, None, None), (None, 15.0, None), (None, None, ids), (17, 2.0, ids)):
        want = reference.flash_attention(q.double(), k.double(), v.double(), causal, None, window, softcap, docs)
        got = torch_path.flash_attention(q, k, v, causal, None, window, softcap, docs)
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    # decoding: T new queries against a cache cut to its last W + T - 1 keys give what the full cache
    # gives (the keys before every query's window are masked anyway); T = 1 keeps exactly W
    kc, vc = (torch.randn(2, 2, 40, 16).to(dtype) for _ in range(2))
    for T in (1, 3):
        full = torch_path.flash_attention(q[:, :, -T:], kc, vc, True, None, 6)
        kept = torch_path.flash_attention(q[:, :, -T:], kc[:, :, -5 - T:], vc[:, :, -5 - T:], True, None, 6)
        torch.testing.assert_close(kept, full, rtol=tol, atol=tol)
        assert not torch.allclose(kept, torch_path.flash_attention(q[:, :, -T:], kc, vc, True), atol=0.1)


def test_doc_ids_from_cu_seqlens():
    cu = torch.tensor([0, 1, 3, 9, 12], dtype=torch.int32)
    ids = ops.doc_ids_from_cu_seqlens(cu, 6)
    assert ids.dtype == torch.int32
    assert ids.tolist() == [[0, 1, 1, 2, 2, 2], [2, 2, 2, 3, 3, 3]]
    # an empty document takes an id but no token
    assert ops.doc_ids_from_cu_seqlens(torch.tensor([0, 2, 2, 4]), 4).tolist() == [[0, 0, 2, 2]]
    for bad, match in (((torch.tensor([1, 4]), 4), "start at 0"), ((torch.tensor([0, 3, 2, 4]), 4), "never decrease"),
                       ((torch.tensor([0, 5]), 4), "multiple of T=4"), ((torch.tensor([0.0, 4.0]), 4), "integer"),
                       ((torch.tensor([4]), 4), "N \\+ 1"), ((torch.tensor([0, 4]), 0), "T must be")):
        with pytest.raises(ValueError, match=match):
            ops.doc_ids_from_cu_seqlens(*bad)


@pytest.mark.parametrize("backend", ["auto", "torch", "triton", "cuda"])
def test_bad_variant_arguments_are_value_errors_naming_them(backend):
    q = torch.randn(2, 2, 8, 16)
    ids = torch.zeros(2, 8, dtype=torch.int32)
    cases = [
        (dict(window=0), "window must be None or an int >= 1, got 0"),
        (dict(window=-3), "window"),
        (dict(window=2.0), "window"),
        (dict(window=True), "window"),
        (dict(softcap=0.0), "softcap must be None or a finite number > 0, got 0.0"),
        (dict(softcap=-1.0), "softcap"),
        (dict(softcap=float("nan")), "softcap.*nan"),
        (dict(softcap=float("inf")), "softcap"),
        (dict(doc_ids=ids[:, :5]), r"doc_ids must have shape \(B, T\) = \(2, 8\), got \(2, 5\)"),
        (dict(doc_ids=ids[0]), "doc_ids must have shape"),
        (dict(doc_ids=ids.long()), "doc_ids must be int32, got torch.int64"),
        (dict(doc_ids=ids.to("meta")), "doc_ids is on meta"),
        (dict(doc_ids=torch.tensor([[0, 0, 1, 1, 2, 1, 3, 3]] * 2, dtype=torch.int32)), "non-decreasing"),
        (dict(doc_ids=[[0] * 8] * 2), "doc_ids must be None or a tensor"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            ops.flash_attention(q, q, q, backend=backend, **kwargs)


def test_every_argument_reaches_unsupported_reason_and_the_autotune_key(monkeypatch, backend_or_skip):
    backend_or_skip("triton")
    from fastgpt.ops import autotune
    from fastgpt.ops.triton import flash_attention as triton_fa

    q = torch.randn(1, 2, 8, 16)
    ids = torch.zeros(1, 8, dtype=torch.int32)
    seen = []
    monkeypatch.setattr(triton_fa, "unsupported_reason", lambda *args: seen.append(args) or "refused")
    with pytest.raises(ValueError, match=r"flash_attention \(triton\): refused"):
        ops.flash_attention(q, q, q, False, 0.5, window=3, softcap=15, doc_ids=ids, backend="triton")
    (args,) = seen
    assert args[3:7] == (False, 0.5, 3, 15.0) and isinstance(args[6], float) and args[7] is ids
    variants = [(None, None, None), (3, None, None), (4, None, None), (None, 15.0, None), (None, 50.0, None),
                (None, None, ids)]
    keys = {autotune.key_of(autotune.spec_of("flash_attention", (q, q, q, True, None, *var))) for var in variants}
    assert len(keys) == len(variants)
    signatures = {autotune._signature("flash_attention", (q, q, q, True, None, *var)) for var in variants}
    assert len(signatures) == len(variants)
